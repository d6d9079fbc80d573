"""Monte Carlo baselines over the branching tree (MAGRPO family): no critic.

R(node) = r + gamma * mean(child returns); the K siblings (same parent node and turn, joint
actions aligned by branch index) form the group a baseline is computed in.
"""

from __future__ import annotations

from collm_train.algorithms.base import Algorithm, register
from collm_train.returns import group_advantages, grpo_adv, loo_adv, reinforce_adv, remax_adv, tree_returns


class MonteCarlo(Algorithm):
    critic = None
    baseline = staticmethod(reinforce_adv)

    def advantages(self, batch, values, config):
        ret = tree_returns(batch.tensor("reward"), batch.children, config.gamma)  # (N,)
        return group_advantages(ret, batch.groups, self.baseline), ret


@register
class MAGRPO(MonteCarlo):
    """R - mean(group)."""

    name = "magrpo"
    baseline = staticmethod(grpo_adv)


@register
class MAREINFORCE(MonteCarlo):
    """R, no baseline."""

    name = "mareinforce"
    baseline = staticmethod(reinforce_adv)


@register
class MARLOO(MonteCarlo):
    """R_i - mean of the other K-1 returns."""

    name = "marloo"
    baseline = staticmethod(loo_adv)


@register
class MAReMax(MonteCarlo):
    """R - max(group)."""

    name = "maremax"
    baseline = staticmethod(remax_adv)
