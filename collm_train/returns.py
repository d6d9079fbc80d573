"""Targets and advantages over a turn tree (a linear episode is a tree with one child per node).

Everything works on flat per-sample tensors (N,) plus index lists:
  children[n] = samples one turn deeper that start at the node sample n led to (the K joint
                actions taken there, same agent); empty at a terminal turn.
  groups      = lists of sibling samples (same parent node, same turn, same agent): the
                Monte Carlo group of size K.

Actor-critic (paper, CoLLM-CC/DC):
  y_t   = r_t + gamma * V_old(h_{t+1})      (y_t = r_t at the last turn)          TD(0) target
  A_t   = y_t - V_old(h_t)
  GAE(lambda), generalised to the tree:  A(n) = delta(n) + gamma*lambda * mean_c A(c),
  delta(n) = y(n) - V(n), target = A + V  (lambda=0: TD(0); lambda=1: MC return - V).
  With K > 1 children V_old(h_{t+1}) is the mean over the children's values (they start at the
  same node, so their histories, and values, coincide).
Monte Carlo (MAGRPO family): R(n) = r(n) + gamma * mean_c R(c) (CoMLRL magrpo.py:917-928), then
a baseline per group: MAGRPO R - mean(group), MAREINFORCE R, MARLOO R_i - mean_{j != i} R_j,
MAReMax R - max(group) (magrpo.py:1379-1393). Under the paper's default within-group
standardisation (magrpo.py:1417-1420) every one of these is an affine map of R within the group,
so all four end up as (R - mean) / std: the baselines differ only with normalize_adv='off'.
An episode that ended early (the task's early termination) simply has a node without children:
its return is its reward and its TD target y = r, as CoMLRL does (magrpo.py:871, 918-920;
maac.py:713-728).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

Children = Sequence[Sequence[int]]


def child_mean(x: torch.Tensor, children: Children) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of x over each sample's children. Returns (mean (N,), has_child (N,) bool); 0 if none."""
    out = torch.zeros_like(x)
    has = torch.zeros(len(children), dtype=torch.bool, device=x.device)
    for n, ch in enumerate(children):
        if len(ch):
            out[n] = x[list(ch)].mean()
            has[n] = True
    return out, has


def td0_targets(
    rewards: torch.Tensor, values: torch.Tensor, children: Children, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """TD(0): v_target = r + gamma * V_old(h_{t+1}) (r at terminal), adv = v_target - V_old(h_t).

    CoMLRL: maac.py:719-729 / iac.py:704-714 (target) and ac_base.py:79-91 (A = target - V_old).

    rewards, values: (N,). Returns (v_target (N,), adv (N,)).
    """
    next_values, _ = child_mean(values, children)  # (N,), 0 where terminal
    v_target = rewards + gamma * next_values
    return v_target, v_target - values


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, children: Children, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) (Schulman et al. 2016, eq. 16) on the tree. Returns (v_target (N,), adv (N,))."""
    next_values, _ = child_mean(values, children)
    delta = rewards + gamma * next_values - values  # (N,)
    adv = torch.zeros_like(delta)
    done = [False] * len(children)

    def visit(n: int) -> None:  # post-order: children first; depth = number of turns
        if done[n]:
            return
        for c in children[n]:
            visit(c)
        ch = list(children[n])
        adv[n] = delta[n] + (gamma * lam * adv[ch].mean() if ch else 0.0)
        done[n] = True

    for n in range(len(children)):
        visit(n)
    return adv + values, adv


def tree_returns(rewards: torch.Tensor, children: Children, gamma: float) -> torch.Tensor:
    """R(n) = r(n) + gamma * mean over children of R(c); R = r at a leaf. (N,)."""
    ret = torch.zeros_like(rewards)
    done = [False] * len(children)

    def visit(n: int) -> None:
        if done[n]:
            return
        for c in children[n]:
            visit(c)
        ch = list(children[n])
        ret[n] = rewards[n] + (gamma * ret[ch].mean() if ch else 0.0)
        done[n] = True

    for n in range(len(children)):
        visit(n)
    return ret


# --- Monte Carlo baselines: one function per group vector R_g (K,) -> adv_g (K,) -------------
def grpo_adv(ret_g: torch.Tensor) -> torch.Tensor:
    """MAGRPO: R - mean of the group (magrpo.py:1381-1382; std scaling is normalize_adv='group')."""
    return ret_g - ret_g.mean()


def reinforce_adv(ret_g: torch.Tensor) -> torch.Tensor:
    """MAREINFORCE: the return itself, no baseline (magrpo.py:1383-1384, mareinforce.py:16)."""
    return ret_g.clone()


def loo_adv(ret_g: torch.Tensor) -> torch.Tensor:
    """MARLOO: R_i - mean of the OTHER K-1 returns = (K R_i - sum R) / (K - 1) (Kool et al. 2019;
    magrpo.py:1387-1392, marloo.py:16). K = 1 is refused before training (Algorithm.check_groups);
    here it returns R (no others)."""
    K = ret_g.numel()
    if K == 1:
        return ret_g.clone()
    return ret_g - (ret_g.sum() - ret_g) / (K - 1)


def remax_adv(ret_g: torch.Tensor) -> torch.Tensor:
    """MAReMax: R - max of the group (magrpo.py:1385-1386, maremax.py:16); every advantage <= 0."""
    return ret_g - ret_g.max()


def group_advantages(ret: torch.Tensor, groups: Sequence[Sequence[int]], baseline) -> torch.Tensor:
    """Apply a per-group baseline function to every sibling group. ret: (N,) -> adv (N,)."""
    adv = torch.zeros_like(ret)
    covered = torch.zeros(ret.numel(), dtype=torch.bool)
    for g in groups:
        idx = list(g)
        adv[idx] = baseline(ret[idx])
        covered[idx] = True
    if not bool(covered.all()):
        raise ValueError("every sample must belong to exactly one Monte Carlo group")
    return adv


def normalize_by_group(adv: torch.Tensor, keys: Sequence[Hashable], eps: float = 1e-6) -> torch.Tensor:
    """(A - mean) / max(std, eps) within each key, e.g. key = (agent, turn_index). (N,) -> (N,).

    As CoMLRL (actor_critic/ac_base.py:94-103, reinforce/magrpo.py:1417-1420): population std
    clamped from below at eps, and a group of ONE sample passes through unchanged (`numel() > 1`),
    so a singleton keeps its signal instead of becoming 0.
    """
    out = adv.clone()
    by_key: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    for idx in by_key.values():
        if len(idx) < 2:
            continue
        a = adv[idx]
        out[idx] = (a - a.mean()) / a.std(unbiased=False).clamp(min=eps)
    return out


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var[y - y_pred] / Var[y] (CleanRL); nan when Var[y] = 0."""
    var_y = torch.var(y_true, unbiased=False)
    if var_y.item() == 0:
        return float("nan")
    return float(1 - torch.var(y_true - y_pred, unbiased=False) / var_y)
