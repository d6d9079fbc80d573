"""Deterministic trace records for the trace tests (also imported by the crash-test child)."""

from __future__ import annotations

import random
import struct

from collm_serve.traces.records import ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

AGENTS = ["helper", "main"]


def f32(x: float) -> float:
    """The float32 nearest to x, as a Python float (what an engine's float32 log-prob becomes)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def make_action(agent: str, seed: int, n_tokens: int = 8, version: int = 3) -> ActionRecord:
    rng = random.Random(f"{agent}/{seed}")
    return ActionRecord(
        agent=agent,
        observation=[
            {"role": "system", "content": f"You are {agent}."},
            {"role": "user", "content": f"problem {seed} [not rich markup] :smile:"},
        ],
        prompt_token_ids=[rng.randrange(0, 49152) for _ in range(n_tokens + 3)],
        response_text=f"def {agent}_{seed}(): return {seed}",
        response_token_ids=[rng.randrange(0, 49152) for _ in range(n_tokens)],
        logprobs=[f32(-rng.expovariate(1.0)) for _ in range(n_tokens)],
        adapter_name=agent,
        adapter_version=version,
        adapter_sha256=f"{seed:064x}",
        sampling=SamplingRecord(temperature=0.7, top_p=0.9, top_k=0, max_tokens=64, seed=seed),
        finish_reason="stop",
        latency_ms=12.5,
    )


def make_turn(
    turn_index: int,
    parent: int | None,
    seed: int,
    branch: int = 0,
    n_tokens: int = 8,
    version: int = 3,
    done: bool = False,
) -> TurnRecord:
    return TurnRecord(
        turn_index=turn_index,
        actions=[make_action(a, seed, n_tokens, version) for a in AGENTS],
        reward=round(0.25 * (seed % 5), 2),
        feedback={a: f"feedback for {a} after {seed}" for a in AGENTS},
        done=done,
        branch_index=branch,
        parent_turn_id=parent,
        info={"levels": [1, 0], "seed": seed},
    )


def make_episode(
    task: str = "coding", split: str = "train", problem_id: str = "p0", seed: int = 0, **kw
) -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=kw.pop("episode_id", ""),
        task=task,
        split=split,
        problem_id=problem_id,
        seed=seed,
        agents=list(AGENTS),
        protocol=kw.pop("protocol", "parallel"),
        metadata=kw.pop("metadata", {"run": "test"}),
        **kw,
    )


def write_branching(store, final_return: float = 1.5, version: int = 3, **kw) -> EpisodeRecord:
    """A K=2 tree of depth 2: 2 root joint actions, each with 2 children (6 turns, 12 actions).

    Returns the record as written, with the fields the store fills in set and status ok.
    """
    ep = make_episode(group_size=2, **kw)
    eid = store.begin_episode(ep)
    seed = 0
    for b0 in (1, 0):  # write branch 1 first: children() must sort by branch_index
        root = make_turn(0, None, seed, branch=b0, version=version)
        store.append_turn(eid, root)
        ep.turns.append(root)
        seed += 1
        for b1 in (0, 1):
            child = make_turn(1, root.turn_id, seed, branch=b1, version=version, done=True)
            store.append_turn(eid, child)
            ep.turns.append(child)
            seed += 1
    store.finish_episode(eid, "ok", final_return)
    ep.status, ep.final_return = "ok", final_return
    return ep


def write_linear(
    store,
    n_turns: int,
    final_return: float | None,
    status: str | None = "ok",
    version: int = 3,
    **kw,
) -> EpisodeRecord:
    ep = make_episode(**kw)
    eid = store.begin_episode(ep)
    parent = None
    for d in range(n_turns):
        t = make_turn(d, parent, 100 + d, version=version, done=d == n_turns - 1)
        parent = store.append_turn(eid, t)
        ep.turns.append(t)
    if status is not None:
        store.finish_episode(eid, status, final_return, "boom" if status == "failed" else "")
        ep.status, ep.final_return = status, final_return
    return ep
