"""Actor and critic losses on macro actions (one log-prob per (agent, turn) sample).

All functions return PER-SAMPLE losses (N,) so the trainer can sum a micro-batch and divide by
the minibatch size (gradient accumulation stays exact). `adv` and `v_target` are constants.
  on-policy      -A * log pi                   (paper: maac.py:875, iac.py:932, magrpo.py:1481)
  PPO clipping   max(-A*rho, -A*clip(rho, 1-eps, 1+eps)), rho = exp(log pi - log pi_old)
                 (Schulman et al. 2017, eq. 7)
  truncated IS   -min(rho, c).detach() * A * log pi       (IMPALA / V-trace style truncation)
  critic         c_v * (y - V)^2                                       (maac.py:876, 883)
  clipped critic max((y - V)^2, (y - V_clip)^2), V_clip = V_old + clip(V - V_old, +-eps)
                 (CoMLRL's shared-model IAC, iac.py:938-950)
  KL (k3)        sum_tokens exp(ref - logp) - (ref - logp) - 1   (Schulman, "Approximating KL")

A macro-action log-ratio sums over every response token, so it can be huge for stale data:
log rho is clamped to +-LOG_RATIO_CLAMP before exp (no inf * 0 = nan; beyond it the sample
gets no gradient, like a clipped one), and ESS is computed in log space.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0


def _ratio(logp: torch.Tensor, logp_old: torch.Tensor) -> torch.Tensor:
    return torch.exp(torch.clamp(logp - logp_old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def pg_loss(logp: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """On-policy policy gradient -A * log pi. logp, adv: (N,) -> (N,)."""
    return -adv * logp


def clipped_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate. Returns (loss (N,), ratio (N,), clipped (N,) bool).

    `clipped` marks samples whose gradient the clip removes (the clipped branch is the max).
    """
    ratio = _ratio(logp, logp_old)  # (N,)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.max(pg1, pg2)
    clipped = (pg2 > pg1).detach()
    return loss, ratio.detach(), clipped


def truncated_is_loss(
    logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-min(rho, c).detach() * A * log pi. Returns (loss (N,), ratio (N,), truncated (N,) bool)."""
    ratio = _ratio(logp, logp_old).detach()  # (N,)
    rho_bar = torch.clamp(ratio, max=c)
    return -rho_bar * adv * logp, ratio, ratio > c


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    use_ratio: torch.Tensor,
    clip_eps: float | None = None,
    truncated_is: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The actor loss per action: -A * log pi where use_ratio is False (the paper's on-policy
    loss), the truncated-IS or PPO-clip loss where it is True (no ratio loss configured: -A log pi
    everywhere). Returns (loss (N,), ratio (N,), clipped (N,) bool; clipped only where use_ratio)."""
    plain = pg_loss(logp, adv)
    ratio = _ratio(logp, logp_old).detach()
    clipped = torch.zeros_like(ratio, dtype=torch.bool)
    loss = plain
    if truncated_is is not None:
        tis, ratio, clipped = truncated_is_loss(logp, logp_old, adv, truncated_is)
        loss = torch.where(use_ratio, tis, plain)
    elif clip_eps is not None:
        ppo, ratio, _ = clipped_surrogate(logp, logp_old, adv, clip_eps)
        clipped = (ratio - 1.0).abs() > clip_eps  # CleanRL's clipfrac
        loss = torch.where(use_ratio, ppo, plain)
    return loss, ratio, clipped & use_ratio


def effective_sample_size(ratio: torch.Tensor) -> float:
    """Normalised ESS = (sum rho)^2 / (N * sum rho^2) in (0, 1]; 1 when all weights are equal."""
    ratio = ratio.detach().double()
    n = ratio.numel()
    if n == 0:
        return float("nan")
    return float(ratio.sum() ** 2 / (n * (ratio**2).sum()))


def effective_sample_size_log(log_ratio: torch.Tensor) -> float:
    """The same ESS from log rho, stable for any magnitude: exp(2 lse(l) - lse(2l)) / N."""
    log_ratio = log_ratio.detach().double()
    n = log_ratio.numel()
    if n == 0:
        return float("nan")
    return float(torch.exp(2 * torch.logsumexp(log_ratio, 0) - torch.logsumexp(2 * log_ratio, 0)) / n)


def value_loss(values: torch.Tensor, v_target: torch.Tensor, value_coef: float) -> torch.Tensor:
    """c_v * (y - V)^2. values, v_target: (N,) -> (N,)."""
    return value_coef * (v_target - values) ** 2


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, v_target: torch.Tensor, clip: float
) -> torch.Tensor:
    """max((y - V)^2, (y - V_clip)^2), V_clip = V_old + clip(V - V_old, -clip, clip) (iac.py:942-950).

    values, old_values, v_target: (N,) -> (N,), without the c_v factor."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return torch.max((v_target - values) ** 2, (v_target - v_clipped) ** 2)


def kl_k3(token_logp: torch.Tensor, ref_token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref) per sequence, summed over response tokens. (B, T) -> (B,)."""
    log_r = (ref_token_logp - token_logp).masked_fill(~mask, 0.0)
    return (torch.exp(log_r) - log_r - 1.0).masked_fill(~mask, 0.0).sum(-1)
