"""Algorithm registry: each variant is a small class; the update loop (trainer.py) is shared.

    ALGORITHMS["cc"]  CoLLM-CC      centralized critic V(h_t), TD(0) / GAE advantages
    ALGORITHMS["dc"]  CoLLM-DC      decentralized critics V_i(h_{i,t})
    ALGORITHMS["magrpo" | "mareinforce" | "marloo" | "maremax"]   Monte Carlo baselines
"""

from collm_train.algorithms.base import ALGORITHMS, Algorithm, get_algorithm, register
from collm_train.algorithms import actor_critic as _actor_critic  # noqa: F401  (registers)
from collm_train.algorithms import monte_carlo as _monte_carlo  # noqa: F401  (registers)

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm", "register"]
