"""The algorithm interface: how advantages are computed and what data it needs.

Names and traits (critic kind, group baseline) come from `spec.SPECS`, the one definition:
`register` copies them onto the class and refuses a name the table lacks."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from collm_train.algorithms.spec import SPECS, AlgorithmSpec, CriticKind

if TYPE_CHECKING:
    from collm_train.config import TrainConfig
    from collm_train.data import ActionSample, Batch

ALGORITHMS: dict[str, type["Algorithm"]] = {}


def register(cls: type["Algorithm"]) -> type["Algorithm"]:
    if cls.name in ALGORITHMS:
        raise ValueError(f"algorithm {cls.name!r} registered twice")
    if cls.name not in SPECS:
        raise ValueError(f"algorithm {cls.name!r} has no entry in collm_train/algorithms/spec.py SPECS; add it there")
    cls.spec = SPECS[cls.name]
    cls.critic = cls.spec.critic
    ALGORITHMS[cls.name] = cls
    return cls


def get_algorithm(name: str) -> "Algorithm":
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}") from None


class Algorithm:
    name: ClassVar[str]
    spec: ClassVar[AlgorithmSpec]  # set by register, from spec.SPECS
    critic: ClassVar[CriticKind | None] = None  # spec.critic: "joint" (V on h_t), "own" (V_i on h_{i,t}), None

    def train_advantages(
        self, batch: "Batch", values: torch.Tensor | None, config: "TrainConfig"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`advantages`, then standardised as config.adv_norm says (paper: per (agent, turn) of each
        pool for CC/DC, ac_base.py:94-103 + 205-218, the pool being config.rollout_buffer_size
        (schedule.pool_ids; None: the whole batch); within each sibling group for MC,
        magrpo.py:1417-1420)."""
        from collm_train.returns import normalize_by_group
        from collm_train.schedule import pool_ids

        adv, target = self.advantages(batch, values, config)
        mode = config.adv_norm
        if mode == "agent_turn":
            pool = pool_ids(batch, config.rollout_buffer_size, by_group=self.critic is None)
            keys = [(s.agent, pool[i], s.turn_index) for i, s in enumerate(batch.samples)]
            adv = normalize_by_group(adv, keys, config.adv_eps)
        elif mode == "group":
            adv = normalize_by_group(adv, [s.group for s in batch.samples], config.adv_eps)
        return adv, target

    def history(self, sample: "ActionSample") -> list[int]:
        """The critic input h for this sample (only for algorithms with a critic)."""
        raise NotImplementedError(f"{self.name} has no critic")

    def advantages(
        self, batch: "Batch", values: torch.Tensor | None, config: "TrainConfig"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (adv (N,), v_target (N,)); v_target is the critic target, or the MC return."""
        raise NotImplementedError
