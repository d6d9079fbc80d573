"""Row ↔ record codecs of the trace store: column lists, BLOB packing, JSON text, and the
mapping between SQLite rows and EpisodeRecord / TurnRecord / ActionRecord.

Separate from store.py so the encoding of one record (which column holds what, how token ids
and log-probs are packed) is pure functions without a connection, testable on their own; the
store keeps transactions, validation of the episode tree and the queries. The column lists fix
the order of the tuples built and read here; the DDL they match is in schema.py.
"""

from __future__ import annotations

import json
import math
import sys
import time
from array import array
from collections.abc import Sequence
from typing import Any

from collm_serve.traces.records import ActionRecord, EpisodeRecord, TurnRecord

EPISODE_COLS = (
    "episode_id, task, split, problem_id, seed, agents, group_size, protocol, status, "
    "failure_reason, final_return, created_at, finished_at, metadata"
)
TURN_INSERT_COLS = (
    "episode_id, parent_turn_id, turn_index, branch_index, reward, feedback, done, info"
)
TURN_COLS = "turn_id, " + TURN_INSERT_COLS
ACTION_COLS = (
    "turn_id, agent_index, agent, observation, prompt_token_ids, response_text, "
    "response_token_ids, logprobs, adapter_name, adapter_version, adapter_sha256, sampling, "
    "finish_reason, latency_ms"
)

# ---------------------------------------------------------------------------------------------
# packing helpers


def pack_token_ids(ids: Sequence[int]) -> bytes:
    """Token ids → little-endian int32 bytes; ValueError if an id is not an int32."""
    try:
        a = array("i", ids)
    except (OverflowError, TypeError) as e:
        raise ValueError(f"token ids must be int32 integers ({e})") from e
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack_token_ids(blob: bytes) -> list[int]:
    a = array("i")
    a.frombytes(blob)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def pack_logprobs(values: Sequence[float]) -> bytes:
    """Log-probs → little-endian float64 bytes (exact for any Python float / float32)."""
    a = array("d", values)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack_logprobs(blob: bytes) -> list[float]:
    a = array("d")
    a.frombytes(blob)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def dumps(value: Any, what: str) -> str:
    """`value` as JSON text; ValueError naming `what` if it is not JSON-serialisable."""
    # allow_nan=False: NaN/Infinity are not JSON, and exports must stay readable by `datasets`
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable ({e})") from e


def finite(x: float, what: str) -> float:
    """`x` as a float; ValueError naming `what` if it is NaN or infinite."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} is {x}; it must be finite")
    return x


# ---------------------------------------------------------------------------------------------
# record → row (values in the order of the column lists above)


def episode_row(e: EpisodeRecord) -> tuple[Any, ...]:
    """The EPISODE_COLS values of `e`; ValueError for non-JSON metadata / non-finite return."""
    return (
        e.episode_id,
        e.task,
        e.split,
        e.problem_id,
        int(e.seed),
        dumps(list(e.agents), "episode agents"),
        int(e.group_size),
        e.protocol,
        e.status,
        e.failure_reason,
        None if e.final_return is None else finite(e.final_return, "final_return"),
        float(e.created_at or time.time()),
        e.finished_at,
        dumps(e.metadata, "episode metadata"),
    )


def turn_row(episode_id: str, parent: int | None, t: TurnRecord, where: str) -> tuple[Any, ...]:
    """The TURN_INSERT_COLS values of `t` under `parent`; `where` names the turn in errors."""
    return (
        episode_id,
        parent,
        int(t.turn_index),
        int(t.branch_index),
        finite(t.reward, f"{where} reward"),
        dumps(t.feedback, f"{where} feedback"),
        int(bool(t.done)),
        dumps(t.info, f"{where} info"),
    )


def action_row(turn_id: int, agent_index: int, a: ActionRecord, what: str) -> tuple[Any, ...]:
    """The ACTION_COLS values of `a`; `what` names the action in errors."""
    return (
        turn_id,
        agent_index,
        a.agent,
        dumps(a.observation, f"{what} observation"),
        pack_token_ids(a.prompt_token_ids),
        a.response_text,
        pack_token_ids(a.response_token_ids),
        pack_logprobs(a.logprobs),
        a.adapter_name,
        int(a.adapter_version),
        a.adapter_sha256,
        dumps(a.sampling, f"{what} sampling"),
        a.finish_reason,
        float(a.latency_ms),
    )


# ---------------------------------------------------------------------------------------------
# row → record


def episode_from_row(r: Sequence[Any]) -> EpisodeRecord:
    """An EPISODE_COLS row → its EpisodeRecord, without turns."""
    return EpisodeRecord(
        episode_id=r[0],
        task=r[1],
        split=r[2],
        problem_id=r[3],
        seed=r[4],
        agents=json.loads(r[5]),
        group_size=r[6],
        protocol=r[7],
        status=r[8],
        failure_reason=r[9],
        final_return=r[10],
        created_at=r[11],
        finished_at=r[12],
        metadata=json.loads(r[13]),
    )


def turn_from_row(r: Sequence[Any]) -> tuple[str, TurnRecord]:
    """A TURN_COLS row → (episode_id, its TurnRecord without actions)."""
    tid, eid, parent, t_index, b_index, reward, feedback, done, info = r
    return (
        eid,
        TurnRecord(
            turn_index=t_index,
            actions=[],
            reward=reward,
            feedback=json.loads(feedback),
            done=bool(done),
            branch_index=b_index,
            parent_turn_id=parent,
            info=json.loads(info),
            turn_id=tid,
        ),
    )


def action_from_row(r: Sequence[Any]) -> ActionRecord:
    """An ACTION_COLS row → its ActionRecord (r[0] is the turn id, r[1] the agent index)."""
    return ActionRecord(
        agent=r[2],
        observation=json.loads(r[3]),
        prompt_token_ids=unpack_token_ids(r[4]),
        response_text=r[5],
        response_token_ids=unpack_token_ids(r[6]),
        logprobs=unpack_logprobs(r[7]),
        adapter_name=r[8],
        adapter_version=r[9],
        adapter_sha256=r[10],
        sampling=json.loads(r[11]),
        finish_reason=r[12],
        latency_ms=r[13],
    )
