"""Held-out evaluation: is the team better after training, and how sure are we?

A learning claim counts only on problems never trained on, with a confidence interval. The
demo (and anyone else) evaluates the same planned episodes before and after training — the
same eval problems with the same seeds (collm_serve.orchestrator.teams.plan_episodes) — so
the two sets of returns are paired by (problem, seed) and the difference is estimated from the
per-episode differences, which removes the problem-to-problem variance from the interval.

Intervals are bootstrap percentile intervals from `scipy.stats.bootstrap` (percentile rather
than BCa: BCa is undefined when every value is equal, e.g. a reward that is 0 everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Hashable

CONFIDENCE = 0.95
RESAMPLES = 10_000


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval (low == high == mean when n < 2 or all values equal)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values: Sequence[float], *, confidence: float = CONFIDENCE, seed: int = 0) -> Estimate:
    """Mean of `values` with a `confidence` bootstrap percentile interval."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci needs at least one value")
    mean = math.fsum(xs) / len(xs)
    if len(xs) < 2 or min(xs) == max(xs):
        return Estimate(mean, mean, mean, len(xs))
    import numpy as np
    from scipy.stats import bootstrap

    res = bootstrap((np.asarray(xs),), np.mean, confidence_level=confidence, n_resamples=RESAMPLES,
                    method="percentile", rng=np.random.default_rng(seed))
    return Estimate(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), len(xs))


@dataclass(frozen=True)
class PairedComparison:
    before: Estimate
    after: Estimate
    delta: Estimate  # mean of per-episode (after - before), its interval
    unmatched: int  # episodes present on one side only (failed on the other), left out

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "delta": self.delta.to_dict(), "unmatched": self.unmatched}


def paired_comparison(before: Mapping[Hashable, float], after: Mapping[Hashable, float], *,
                      confidence: float = CONFIDENCE, seed: int = 0) -> PairedComparison:
    """before/after: return per episode key (e.g. (problem_id, seed)); only keys on both sides count."""
    keys = [k for k in before if k in after]
    if not keys:
        raise ValueError("no episode was evaluated both before and after")
    unmatched = len(set(before) ^ set(after))
    return PairedComparison(
        before=mean_ci([before[k] for k in keys], confidence=confidence, seed=seed),
        after=mean_ci([after[k] for k in keys], confidence=confidence, seed=seed),
        delta=mean_ci([after[k] - before[k] for k in keys], confidence=confidence, seed=seed),
        unmatched=unmatched,
    )
