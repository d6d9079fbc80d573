"""Actor / critic losses on hand numbers (clip eps = 0.2)."""

from __future__ import annotations

import math

import pytest
import torch

from collm_train.losses import (
    clipped_surrogate,
    effective_sample_size,
    effective_sample_size_log,
    kl_k3,
    pg_loss,
    truncated_is_loss,
    value_loss,
)


def _logp_for(ratios, logp_old=-2.0):
    logp = torch.tensor([logp_old + math.log(r) for r in ratios], requires_grad=True)
    return logp, torch.full((len(ratios),), logp_old)


def test_pg_loss_on_policy():
    logp = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss = pg_loss(logp, torch.tensor([2.0, -1.0]))
    assert loss.tolist() == pytest.approx([2.0, -3.0])
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-2.0, 1.0])  # -A


def test_clipped_surrogate_inside_outside_both_signs():
    #          inside  above   below   below   above   at 1
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 1.0]
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -2.0])
    logp, logp_old = _logp_for(ratios)
    loss, ratio, clipped = clipped_surrogate(logp, logp_old, adv, 0.2)
    # A>0: -min(rA, clip(r)A): 1.1 -> -1.1 ; 1.5 -> -1.2 (clipped) ; 0.5 -> -0.5 (pessimistic, unclipped)
    # A<0: 0.5 -> max(.5, .8) = .8 (clipped) ; 1.5 -> max(1.5, 1.2) = 1.5 (unclipped) ; r=1 -> 2
    assert loss.tolist() == pytest.approx([-1.1, -1.2, -0.5, 0.8, 1.5, 2.0], abs=1e-6)
    assert ratio.tolist() == pytest.approx(ratios, abs=1e-6)
    assert clipped.tolist() == [False, True, False, True, False, False]
    loss.sum().backward()
    # d/dlogp of -A*r = -A*r where unclipped, 0 where the clip is active
    assert logp.grad.tolist() == pytest.approx([-1.1, 0.0, -0.5, 0.0, 1.5, 2.0], abs=1e-6)


def test_truncated_is():
    ratios = [0.5, 1.0, 3.0]
    adv = torch.tensor([1.0, -1.0, 2.0])
    logp, logp_old = _logp_for(ratios)
    loss, ratio, truncated = truncated_is_loss(logp, logp_old, adv, c=1.0)
    rho_bar = [0.5, 1.0, 1.0]
    expected = [-rb * a * lp for rb, a, lp in zip(rho_bar, adv.tolist(), logp.tolist())]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)
    assert truncated.tolist() == [False, False, True]
    loss.sum().backward()
    assert logp.grad.tolist() == pytest.approx([-0.5, 1.0, -2.0], abs=1e-6)  # -rho_bar * A, rho detached


def test_effective_sample_size():
    assert effective_sample_size(torch.ones(4)) == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    assert effective_sample_size(torch.tensor([2.0, 1.0])) == pytest.approx(9 / 10)  # 3^2 / (2*5)
    log_r = torch.tensor([0.3, -1.2, 2.0, 0.0])
    assert effective_sample_size_log(log_r) == pytest.approx(effective_sample_size(log_r.exp()))
    # macro-action log-ratios of stale data: exp would overflow, the log form does not
    assert effective_sample_size_log(torch.tensor([1000.0, 0.0, -1000.0])) == pytest.approx(1 / 3)


def test_huge_log_ratio_stays_finite():
    logp = torch.tensor([500.0, -500.0], requires_grad=True)
    loss, ratio, clipped = clipped_surrogate(logp, torch.zeros(2), torch.tensor([-1.0, 1.0]), 0.2)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()


def test_value_loss_and_kl():
    v = torch.tensor([0.5, 2.0])
    assert value_loss(v, torch.tensor([1.5, 2.0]), 0.6).tolist() == pytest.approx([0.6, 0.0])
    lp = torch.tensor([[-1.0, -2.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    assert kl_k3(lp, lp.clone(), mask).tolist() == pytest.approx([0.0])
    ref = torch.tensor([[-1.0 + math.log(2), -2.0, -50.0]])  # last column is padding: ignored
    assert kl_k3(lp, ref, mask).item() == pytest.approx(2 - math.log(2) - 1)
