"""Monte Carlo baselines over the branching tree (MAGRPO family): no critic.

R(node) = r + gamma * mean(child returns); the K siblings (same parent node and turn, joint
actions aligned by branch index) form the group a baseline is computed in (CoMLRL
reinforce/magrpo.py:917-928 for R, 1379-1393 for the baselines, `joint_mode="aligned"` at
magrpo.py:820-827). MAGRPO, MARLOO and MAReMax need K >= 2 (spec.py group_baseline, checked by
data.check_group_sizes before any model loads): their baseline over one sample is the sample
itself (advantage 0), and CoMLRL refuses num_generations < 2 (magrpo.py:62-65). MAREINFORCE has
no baseline, so K = 1 is meaningful for it and allowed here (CoMLRL's shared config refuses it
too; docs/paper-fidelity.md).
"""

from __future__ import annotations

from collm_train.algorithms.base import Algorithm, register
from collm_train.algorithms.spec import SPECS
from collm_train.returns import group_advantages, grpo_adv, loo_adv, reinforce_adv, remax_adv, tree_returns


class MonteCarlo(Algorithm):
    baseline = staticmethod(reinforce_adv)

    def advantages(self, batch, values, config):
        ret = tree_returns(batch.tensor("reward"), batch.children, config.gamma)  # (N,)
        return group_advantages(ret, batch.groups, self.baseline), ret


# The one thing the four Monte Carlo algorithms differ in: the per-group baseline (returns.py,
# each with its CoMLRL lines; SPECS[name].help says it in words). One registered subclass each.
BASELINES = {
    "magrpo": grpo_adv,  # R - mean(group)
    "mareinforce": reinforce_adv,  # R, no baseline
    "marloo": loo_adv,  # R_i - mean of the other K-1 returns
    "maremax": remax_adv,  # R - max(group)
}
for _name, _baseline in BASELINES.items():
    register(type(f"MonteCarlo[{_name}]", (MonteCarlo,), {
        "name": _name, "baseline": staticmethod(_baseline), "__doc__": SPECS[_name].help,
        "__module__": __name__}))
