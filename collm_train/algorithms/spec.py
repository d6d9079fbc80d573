"""The one definition of the algorithms: name, critic, baseline and a line of help each.

Torch-free on purpose: `TrainConfig` (its `algo` Literal and the validators), the CLI (its
`--algo` choices and help, generated from TrainConfig) and `data.check_group_sizes` read it to
refuse a bad config in a second, before torch or a model loads. The registry's classes
(`collm_train.algorithms.base.register`) take their traits from here and refuse a name this
table lacks; a test checks every name here has a class, so the two cannot drift.

Traits:
  critic          "joint": one critic V(h_t) on the joint history (CoLLM-CC, CoMLRL
                  trainers/actor_critic/maac.py); "own": one critic V_i(h_{i,t}) per agent
                  (CoLLM-DC, iac.py); None: a Monte Carlo baseline over the branching tree.
  group_baseline  the advantage compares a return with its K siblings' (mean, leave-one-out,
                  max): K >= 2 is required, as CoMLRL refuses num_generations < 2
                  (reinforce/magrpo.py:62-65); with K = 1 the baseline is the sample itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CriticKind = Literal["joint", "own"]


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    critic: CriticKind | None
    group_baseline: bool
    help: str


SPECS: dict[str, AlgorithmSpec] = {s.name: s for s in (
    AlgorithmSpec("cc", "joint", False, "CoLLM-CC, a centralized critic V(h_t)"),
    AlgorithmSpec("dc", "own", False, "CoLLM-DC, one critic V_i(h_{i,t}) per agent"),
    AlgorithmSpec("magrpo", None, True, "Monte Carlo, R - group mean"),
    AlgorithmSpec("mareinforce", None, False, "Monte Carlo, R (no baseline)"),
    AlgorithmSpec("marloo", None, True, "Monte Carlo, R - leave-one-out mean"),
    AlgorithmSpec("maremax", None, True, "Monte Carlo, R - group max"),
)}

ALGO_NAMES: tuple[str, ...] = tuple(SPECS)
CRITIC_ALGOS: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.critic is not None)
GROUP_BASELINE_ALGOS: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.group_baseline)
AlgoName = Literal[ALGO_NAMES]  # type: ignore[valid-type]  # Literal["cc", "dc", ...], built from SPECS


def spec(name: str) -> AlgorithmSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGO_NAMES)}") from None


def algo_help() -> str:
    """`cc` CoLLM-CC, ...; the text of TrainConfig.algo (and so of `--algo`)."""
    return "Algorithm: " + "; ".join(f"`{s.name}` {s.help}" for s in SPECS.values()) + "."


__all__ = ["ALGO_NAMES", "AlgoName", "AlgorithmSpec", "CRITIC_ALGOS", "CriticKind", "GROUP_BASELINE_ALGOS",
           "SPECS", "algo_help", "spec"]
