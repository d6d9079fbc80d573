"""CoLLM-CC and CoLLM-DC: TD(0) (paper) or GAE(lambda) advantages from the old critic values.

y_t = r_t + gamma V_old(h_{t+1}) (y_t = r_t at the last turn), A_t = y_t - V_old(h_t); the two
variants differ only in what the critic sees: the joint history h_t (CC) or h_{i,t} (DC).
"""

from __future__ import annotations

from collm_train.algorithms.base import Algorithm, register
from collm_train.returns import gae_advantages, td0_targets


class ActorCritic(Algorithm):
    def advantages(self, batch, values, config):
        if values is None:
            raise ValueError(f"{self.name} needs the old critic values V_old(h_t)")
        rewards = batch.tensor("reward")  # (N,)
        if config.gae_lambda is None:
            v_target, adv = td0_targets(rewards, values, batch.children, config.gamma)
        else:
            v_target, adv = gae_advantages(rewards, values, batch.children, config.gamma, config.gae_lambda)
        return adv, v_target


@register
class CentralizedCritic(ActorCritic):
    """CoLLM-CC: one critic V_phi(h_t) over the joint history of all agents."""

    name = "cc"  # critic "joint" (spec.py)

    def history(self, sample):
        return sample.joint_ids


@register
class DecentralizedCritics(ActorCritic):
    """CoLLM-DC: critic V_phi_i(h_{i,t}) per agent over its own history."""

    name = "dc"  # critic "own" (spec.py)

    def history(self, sample):
        return sample.own_ids


__all__ = ["ActorCritic", "CentralizedCritic", "DecentralizedCritics"]
