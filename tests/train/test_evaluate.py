"""Held-out before/after comparison: pairing by episode key, intervals that can fail."""

from __future__ import annotations

import pytest

from collm_train.evaluate import mean_ci, paired_comparison


def test_constant_values_have_a_zero_width_interval():
    est = mean_ci([0.25] * 8)
    assert (est.mean, est.low, est.high, est.n) == (0.25, 0.25, 0.25, 8)


def test_interval_contains_the_mean_and_narrows_with_n():
    small = mean_ci([0.0, 1.0] * 4)
    large = mean_ci([0.0, 1.0] * 200)
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 3


def test_pairing_removes_problem_variance():
    # problems differ a lot (0..0.9) but every one improves by exactly 0.05: the paired
    # difference is certain, while the unpaired intervals of before and after overlap
    before = {(f"p{i}", i): i / 10 for i in range(10)}
    after = {k: v + 0.05 for k, v in before.items()}
    cmp = paired_comparison(before, after)
    assert cmp.delta.mean == pytest.approx(0.05) and cmp.delta.low == pytest.approx(0.05)
    assert cmp.after.low < cmp.before.high
    assert cmp.unmatched == 0


def test_only_matched_episodes_count():
    before = {("a", 0): 0.0, ("b", 1): 1.0, ("c", 2): 0.5}
    after = {("a", 0): 1.0, ("c", 2): 0.5, ("d", 3): 0.0}
    cmp = paired_comparison(before, after)
    assert cmp.delta.n == 2 and cmp.unmatched == 2
    assert cmp.delta.mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both before and after"):
        paired_comparison({("a", 0): 1.0}, {("b", 0): 1.0})


def test_a_worse_team_gets_an_interval_below_zero():
    before = {("p", i): 0.8 + 0.01 * (i % 3) for i in range(32)}
    after = {k: v - 0.2 - 0.01 * (k[1] % 2) for k, v in before.items()}
    cmp = paired_comparison(before, after)
    assert cmp.delta.high < 0
