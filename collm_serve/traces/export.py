"""Export traces as flat rows that `datasets.load_dataset("json" | "parquet")` reads as-is.

Row shape: ONE ROW PER ACTION (agent × turn), each carrying its episode's and turn's columns,
in the order of `COLUMNS`. Flat rows with a fixed schema are what Arrow-based readers want: no
free-form nesting to infer, and every file of a sharded export has the same columns and types.
- `prompt` and `completion` are chat messages, lists of {"role", "content"}: TRL's
  "conversational prompt-completion" format (SFTTrainer, GRPOTrainer, ... read these column
  names) and verl's default `prompt_key`. `prompt` is what the agent was given (its own
  history, the agent's server-side system prompt not included: `prompt_token_ids` are the exact
  tokens); `completion` is one assistant message, the response text.
- Rewards: `reward` is the turn's joint reward (shared by all agents), `final_return` the
  episode's return.
- Behaviour log-probs: `logprobs` holds one float per response token (float64: the exact values
  the store holds) under the sampling distribution of the policy `adapter_version` names;
  `logprob_sum` is their sum, log π_behaviour(completion | prompt) of the whole macro action.
- Token ids (`prompt_token_ids`, `response_token_ids`) are lists of ints.
- Free-form dicts (`sampling`, `feedback`, `turn_info`, `episode_metadata`) are JSON strings:
  their keys vary by task, and inferring a struct type from them makes shards disagree.
  `feedback` is the whole turn's {agent: text}.
- An episode without turns (e.g. failed at its first generation) is one row whose turn and
  action columns are null, so `import_jsonl` restores it too.
Rows of an episode are contiguous and in write order; `import_jsonl` relies on that.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collm_serve.traces.records import ActionRecord, EpisodeRecord, TurnRecord
from collm_serve.traces.store import TraceStore

EPISODE_COLUMNS = (
    "episode_id",
    "task",
    "split",
    "problem_id",
    "seed",
    "agents",
    "group_size",
    "protocol",
    "status",
    "failure_reason",
    "final_return",
    "created_at",
    "finished_at",
    "episode_metadata",
)
TURN_COLUMNS = (
    "turn_id",
    "parent_turn_id",
    "turn_index",
    "branch_index",
    "reward",
    "done",
    "feedback",
    "turn_info",
)
ACTION_COLUMNS = (
    "agent_index",
    "agent",
    "prompt",
    "completion",
    "prompt_token_ids",
    "response_token_ids",
    "logprobs",
    "logprob_sum",
    "adapter_name",
    "adapter_version",
    "adapter_sha256",
    "sampling",
    "finish_reason",
    "latency_ms",
)
COLUMNS = EPISODE_COLUMNS + TURN_COLUMNS + ACTION_COLUMNS


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def chat(messages: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat messages as exported: {"role", "content"} only, both strings (a fixed Arrow struct)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def completion(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def episode_rows(ep: EpisodeRecord) -> Iterator[dict[str, Any]]:
    """The flat rows of one episode (see the module docstring)."""
    head = {
        "episode_id": ep.episode_id,
        "task": ep.task,
        "split": ep.split,
        "problem_id": ep.problem_id,
        "seed": ep.seed,
        "agents": list(ep.agents),
        "group_size": ep.group_size,
        "protocol": ep.protocol,
        "status": ep.status,
        "failure_reason": ep.failure_reason,
        "final_return": ep.final_return,
        "created_at": ep.created_at,
        "finished_at": ep.finished_at,
        "episode_metadata": _json(ep.metadata),
    }
    if not ep.turns:
        yield head | dict.fromkeys(TURN_COLUMNS + ACTION_COLUMNS)
        return
    for t in ep.turns:
        turn = {
            "turn_id": t.turn_id,
            "parent_turn_id": t.parent_turn_id,
            "turn_index": t.turn_index,
            "branch_index": t.branch_index,
            "reward": t.reward,
            "done": t.done,
            "feedback": _json(t.feedback),
            "turn_info": _json(t.info),
        }
        for i, a in enumerate(t.actions):
            yield (
                head
                | turn
                | {
                    "agent_index": i,
                    "agent": a.agent,
                    "prompt": chat(a.observation),
                    "completion": completion(a.response_text),
                    "prompt_token_ids": a.prompt_token_ids,
                    "response_token_ids": a.response_token_ids,
                    "logprobs": a.logprobs,
                    "logprob_sum": math.fsum(a.logprobs),
                    "adapter_name": a.adapter_name,
                    "adapter_version": a.adapter_version,
                    "adapter_sha256": a.adapter_sha256,
                    "sampling": _json(a.sampling),
                    "finish_reason": a.finish_reason,
                    "latency_ms": a.latency_ms,
                }
            )


@contextmanager
def _atomic_output(out_path: str | os.PathLike[str]) -> Iterator[str]:
    """Yields a temporary path beside `out_path` (its missing parent folders created), renamed
    to `out_path` on success and removed on failure, so a reader never sees half a file."""
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the output file's path, e.g. {out / 'traces.jsonl'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{os.fspath(out)}.tmp"
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_jsonl(store: TraceStore, out_path: str | os.PathLike[str], **filters: Any) -> int:
    """Write the episodes `store.iter_episodes(**filters)` yields as JSON lines; returns rows.

    Missing parent folders are created; written to `out_path + ".tmp"` and renamed.
    """
    n = 0
    with _atomic_output(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for ep in store.iter_episodes(**filters):
            for row in episode_rows(ep):
                f.write(_json(row))
                f.write("\n")
                n += 1
    return n


def arrow_schema() -> Any:
    """The pyarrow schema of the Parquet export (int32 token ids, float64 log-probs)."""
    import pyarrow as pa

    s, i64, f64 = pa.string(), pa.int64(), pa.float64()
    messages = pa.list_(pa.struct([("role", s), ("content", s)]))
    types = {
        "prompt": messages,
        "completion": messages,
        "logprob_sum": f64,
        "agents": pa.list_(s),
        "seed": i64,
        "group_size": i64,
        "final_return": f64,
        "created_at": f64,
        "finished_at": f64,
        "turn_id": i64,
        "parent_turn_id": i64,
        "turn_index": i64,
        "branch_index": i64,
        "reward": f64,
        "done": pa.bool_(),
        "agent_index": i64,
        "prompt_token_ids": pa.list_(pa.int32()),
        "response_token_ids": pa.list_(pa.int32()),
        "logprobs": pa.list_(f64),
        "adapter_version": i64,
        "latency_ms": f64,
    }
    return pa.schema([(c, types.get(c, s)) for c in COLUMNS])


def export_parquet(
    store: TraceStore,
    out_path: str | os.PathLike[str],
    *,
    row_group_rows: int = 4096,
    **filters: Any,
) -> int:
    """Same rows as export_jsonl, as one Parquet file (streamed in row groups); returns rows."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            "export_parquet needs pyarrow (pip install pyarrow); export_jsonl does not"
        ) from e
    schema = arrow_schema()
    n = 0
    buf: list[dict[str, Any]] = []
    with _atomic_output(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for ep in store.iter_episodes(**filters):
            buf.extend(episode_rows(ep))
            if len(buf) >= row_group_rows:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf = []
        if buf or n == 0:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


def rows_to_episodes(rows: Iterable[dict[str, Any]]) -> Iterator[EpisodeRecord]:
    """Inverse of `episode_rows` over a stream whose episodes are contiguous."""
    current: EpisodeRecord | None = None
    turns: dict[int, TurnRecord] = {}
    seen: set[str] = set()
    for line_no, row in enumerate(rows, 1):
        row = _upgrade(row)
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row {line_no}: missing columns {missing}")
        eid = row["episode_id"]
        if current is None or eid != current.episode_id:
            if eid in seen:
                raise ValueError(f"row {line_no}: rows of episode {eid!r} are not contiguous")
            if current is not None:
                yield current
            seen.add(eid)
            turns = {}
            current = EpisodeRecord(
                episode_id=eid,
                task=row["task"],
                split=row["split"],
                problem_id=row["problem_id"],
                seed=row["seed"],
                agents=list(row["agents"]),
                group_size=row["group_size"],
                protocol=row["protocol"],
                status=row["status"],
                failure_reason=row["failure_reason"],
                final_return=row["final_return"],
                created_at=row["created_at"],
                finished_at=row["finished_at"],
                metadata=json.loads(row["episode_metadata"]),
            )
        tid = row["turn_id"]
        if tid is None:
            continue
        turn = turns.get(tid)
        if turn is None:
            turn = turns[tid] = TurnRecord(
                turn_index=row["turn_index"],
                actions=[],
                reward=row["reward"],
                feedback=json.loads(row["feedback"]),
                done=row["done"],
                branch_index=row["branch_index"],
                parent_turn_id=row["parent_turn_id"],
                info=json.loads(row["turn_info"]),
                turn_id=tid,
            )
            current.turns.append(turn)
        if row["agent_index"] != len(turn.actions):
            raise ValueError(
                f"row {line_no}: action {row['agent_index']} of turn {tid} out of order"
            )
        turn.actions.append(
            ActionRecord(
                agent=row["agent"],
                observation=[dict(m) for m in row["prompt"]],
                prompt_token_ids=list(row["prompt_token_ids"]),
                response_text=_completion_text(row["completion"], line_no),
                response_token_ids=list(row["response_token_ids"]),
                logprobs=list(row["logprobs"]),
                adapter_name=row["adapter_name"],
                adapter_version=row["adapter_version"],
                adapter_sha256=row["adapter_sha256"],
                sampling=json.loads(row["sampling"]),
                finish_reason=row["finish_reason"],
                latency_ms=row["latency_ms"],
            )
        )
    if current is not None:
        yield current


def _upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older export (JSON-string `observation`, plain `response_text`, no
    `logprob_sum`) in the current shape."""
    if "prompt" in row or "observation" not in row:
        return row
    row = dict(row)
    obs, text = row.pop("observation"), row.pop("response_text", None)
    row["prompt"] = None if obs is None else json.loads(obs)
    row["completion"] = None if text is None else completion(text)
    row.setdefault("logprob_sum", None if row.get("logprobs") is None else math.fsum(row["logprobs"]))
    return row


def _completion_text(messages: list[dict[str, Any]], line_no: int) -> str:
    if len(messages) != 1 or messages[0].get("role") != "assistant":
        raise ValueError(f"row {line_no}: completion must be one assistant message, got {messages!r}")
    return messages[0]["content"]


def import_jsonl(
    store: TraceStore, path: str | os.PathLike[str], *, skip_existing: bool = False
) -> int:
    """Load an `export_jsonl` file into `store`; returns the number of episodes written.

    One transaction per episode: an error stops the import after the episodes already written
    (rerun with skip_existing=True). Turn ids are reassigned; parent links follow them.
    """

    def rows() -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_no}: not JSON ({e})") from e

    return sum(
        store.import_episode(ep, skip_existing=skip_existing) for ep in rows_to_episodes(rows())
    )
