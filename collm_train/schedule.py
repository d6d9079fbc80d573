"""Which samples each optimizer step of an update trains on, and the pools advantages share.

Two schedules (TrainConfig.rollout_buffer_size):

  None  ours: the update's trainable samples, shuffled, cut into minibatches of minibatch_size
        across agents and turns; `epochs` passes.
  B     the paper's (CoMLRL 1.3.6): each agent appends its units to its own buffer in the order
        they were played and processes the buffer when it holds B (actor_critic/ac_base.py:227-238,
        reinforce/magrpo.py:1316-1319; a part-filled buffer is flushed at the end, ac_base.py:240):
        the buffer is split per turn (ac_base.py:205-218, magrpo.py:1335-1342), each turn's units
        shuffled and stepped train_batch_size (= minibatch_size) at a time (maac.py:907-915,
        magrpo.py:1359-1377). A unit is one sample for cc/dc and one sibling group of K samples
        (CoMLRL's node, appended at magrpo.py:1001) for the Monte Carlo baselines. Buffers are processed in the
        order they fill, agents interleaved as their samples arrive.

`pool_ids` gives each sample its (agent's) pool number, so the cc/dc standardisation runs within a
pool's (agent, turn) samples, as `_prepare_advantages` does on each per-turn slice of a buffer
(ac_base.py:94-103). With B = 1 every pool is a singleton: advantages pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collm_train.config import TrainConfig
    from collm_train.data import Batch


def chunks(idx: Sequence[int], size: int | None) -> list[list[int]]:
    idx = list(idx)
    if not size:
        return [idx] if idx else []
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _units(batch: "Batch", by_group: bool) -> list[list[int]]:
    """Sample indices per unit, in play order (batch order: episodes, their turn rows, agents)."""
    if not by_group:
        return [[i] for i in range(len(batch))]
    return sorted((list(g) for g in batch.groups if g), key=min)


def _pools(batch: "Batch", size: int, by_group: bool) -> list[list[list[int]]]:
    """Every agent's pools (lists of units), in the order they fill (ties: team order)."""
    per_agent: dict[str, list[list[int]]] = {}
    for unit in _units(batch, by_group):
        per_agent.setdefault(batch.samples[unit[0]].agent, []).append(unit)
    order = {a: k for k, a in enumerate(batch.agents)}
    pools = [(max(max(u) for u in pool), order.get(agent, 0), pool)
             for agent, units in per_agent.items() for pool in chunks(units, size)]  # type: ignore[arg-type]
    return [p for *_, p in sorted(pools, key=lambda t: (t[0], t[1]))]


def pool_ids(batch: "Batch", size: int | None, by_group: bool) -> list[int]:
    """(N,) the pool each sample belongs to (all 0 when size is None: the batch is one pool)."""
    out = [0] * len(batch)
    if size is None:
        return out
    for p, pool in enumerate(_pools(batch, size, by_group)):
        for unit in pool:
            for i in unit:
                out[i] = p
    return out


def plan_steps(batch: "Batch", trainable: Sequence[int], config: "TrainConfig", rng: torch.Generator,
               by_group: bool) -> list[list[int]]:
    """The sample indices of every optimizer step of one update, in order (all epochs)."""
    keep = set(int(i) for i in trainable)
    steps: list[list[int]] = []
    for _epoch in range(config.epochs):
        if config.rollout_buffer_size is None:
            idx = torch.tensor(sorted(keep), dtype=torch.long)
            perm = idx[torch.randperm(len(idx), generator=rng)].tolist()
            steps += chunks(perm, config.minibatch_size)
            continue
        for pool in _pools(batch, config.rollout_buffer_size, by_group):
            by_turn: dict[int, list[list[int]]] = {}
            for unit in pool:
                by_turn.setdefault(batch.samples[unit[0]].turn_index, []).append(unit)
            for t in sorted(by_turn):
                units = by_turn[t]
                units = [units[j] for j in torch.randperm(len(units), generator=rng).tolist()]
                for step in chunks(units, config.minibatch_size):  # type: ignore[arg-type]
                    mb = [i for unit in step for i in unit if i in keep]
                    if mb:
                        steps.append(mb)
    return steps


__all__ = ["chunks", "plan_steps", "pool_ids"]
