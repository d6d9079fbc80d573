"""Algorithm registry: each variant is a small class; the update loop (trainer.py) is shared.

    ALGORITHMS["cc"]  CoLLM-CC      centralized critic V(h_t), TD(0) / GAE advantages
    ALGORITHMS["dc"]  CoLLM-DC      decentralized critics V_i(h_{i,t})
    ALGORITHMS["magrpo" | "mareinforce" | "marloo" | "maremax"]   Monte Carlo baselines

Names and traits are defined once, in `spec.py` (torch-free, read by TrainConfig and the CLI);
the classes (and torch) load on first use of ALGORITHMS / Algorithm / get_algorithm / register,
so `import collm_train.algorithms.spec` validates a config without importing torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = ("ALGORITHMS", "Algorithm", "get_algorithm", "register")


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from collm_train.algorithms import actor_critic as _actor_critic  # noqa: F401  (registers)
    from collm_train.algorithms import base
    from collm_train.algorithms import monte_carlo as _monte_carlo  # noqa: F401  (registers)

    return getattr(base, name)


__all__ = list(_LAZY)
