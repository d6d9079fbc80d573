"""What the paper ran on each task: the values `preset: paper` fills when `task` is set.

Torch-free (TrainConfig reads it to fill a preset). Every value carries the config line it comes
from; docs/paper-fidelity.md ("Per-task settings") prints the same table, and
tests/train/test_paper_presets.py pins every value. Sources, paths inside each repository:

  MC  OpenMLRL/LLM_Collab_Minecraft @9c2e006: house_build/configs/house_build_{maac,iac,magrpo}_config.yaml,
      str_build/configs/str_build_{maac,iac,magrpo}_config.yaml
  CG  OpenMLRL/LLM_Collab_Code_Generation: configs/maac_he_config.yaml @09408c8,
      configs/iac_he_config.yaml and configs/magrpo_he_config.yaml @07663c1 (HumanEval)
  W   OpenMLRL/LLM_Collab_Writing @7e59995: configs/{maac,iac,magrpo}_tldr_config.yaml (TLDR)
  lib CoMLRL 1.3.6 (PyPI comlrl==1.3.6), a config class default where the task config sets none

Algorithm families: `cc` is the paper's MAAC config, `dc` its IAC config, `mc` its MAGRPO config
(the paper ran MAGRPO; mareinforce / marloo / maremax reuse that config, as CoMLRL's subclasses
of MAGRPOTrainer do). Sampling: the task scripts pass `agent_model.temperature/top_p` to the
trainer (CG train_maac.py @07663c1 `temperature = model_config.temperature`; W train_maac.py:249-250),
so a trainer section's own `temperature` (CG maac_he:49-50 says 0.6 / 0.6) is not what ran.
`top_k` 0 = none (the configs' `top_k: null`). `early_stop_threshold` None = no threshold.

What every task's preset shares (the paper's code, not a task config):
  use_sampling_params False  log pi = temperature-1 log_softmax of the raw logits, summed over the
                             response (maac.py:818-830, iac.py:853-867, magrpo.py:1464-1479)
  off_policy 'none'          pi_old of the ratio = the same rule, recomputed before the update
                             (CoMLRL recomputes old log-probs by a forward, maac.py:521-528)
  epochs 1                   each buffer is used once (ac_base.py:205-235, magrpo.py:1335-1377)
Tasks without a paper run (build, writing_arxiv, toy, ...) get no per-task values: `task` names
them, the task-independent `paper` preset applies.
"""

from __future__ import annotations

from typing import Any

Cited = tuple[Any, str]  # (value, "source file:line")

_HB = "MC house_build/configs/house_build_{}_config.yaml:{}"
_SB = "MC str_build/configs/str_build_{}_config.yaml:{}"
_HE = "CG configs/{}_he_config.yaml:{}"
_TL = "W configs/{}_tldr_config.yaml:{}"
_LIB_K1 = "lib maac.py:42 / iac.py:50 num_generations 1 (multi-turn requires 1, maac.py:66-67)"


def _rows(src: str, cfg: str, **fields: tuple[Any, int | str]) -> dict[str, Cited]:
    """fields: name=(value, line) in file `cfg` of `src`; a str line is a full citation."""
    return {k: (v, line if isinstance(line, str) else src.format(cfg, line)) for k, (v, line) in fields.items()}


COMMON: dict[str, Cited] = {
    "use_sampling_params": (False, "lib maac.py:818-830, iac.py:853-867, magrpo.py:1464-1479"),
    "off_policy": ("none", "lib maac.py:521-528 (old log-probs recomputed by a forward)"),
    "epochs": (1, "lib ac_base.py:205-235, magrpo.py:1335-1377 (each buffer used once)"),
}

PAPER_TASKS: dict[str, dict[str, dict[str, Cited]]] = {
    "housebuild": {
        "cc": _rows(_HB, "maac", lr=(5e-6, 45), critic_lr=(5e-6, 46), value_coef=(0.6, 47),
                    rollout_buffer_size=(1, 48), minibatch_size=(1, 49), max_new_tokens=(512, 50),
                    temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 53), gamma=(0.9, 54),
                    early_stop_threshold=(0.0, 55), reward_shift=(-1.0, 64), num_generations=(1, _LIB_K1)),
        "dc": _rows(_HB, "iac", lr=(5e-6, 44), critic_lr=(5e-6, 45), value_coef=(0.6, 46),
                    value_clip=(0.05, 47), rollout_buffer_size=(1, 48), minibatch_size=(1, 49),
                    max_new_tokens=(512, 50), temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 53),
                    gamma=(0.9, 55), early_stop_threshold=(0.0, 56), reward_shift=(-1.0, 65),
                    num_generations=(1, _LIB_K1)),
        "mc": _rows(_HB, "magrpo", lr=(1e-5, 38), num_generations=(2, 40), max_new_tokens=(512, 41),
                    temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 44), gamma=(0.9, 45),
                    early_stop_threshold=(-0.1, 47), rollout_buffer_size=(1, 48), minibatch_size=(1, 49),
                    reward_shift=(-1.0, 58)),
    },
    "strbuild": {
        "cc": _rows(_SB, "maac", lr=(2.5e-6, 46), critic_lr=(2.5e-6, 47), value_coef=(0.6, 48),
                    rollout_buffer_size=(1, 49), minibatch_size=(1, 50), max_new_tokens=(512, 51),
                    temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 54), gamma=(0.9, 55),
                    early_stop_threshold=(-0.1, 56), reward_shift=(-2.0, 65), num_generations=(1, _LIB_K1)),
        "dc": _rows(_SB, "iac", lr=(2.5e-6, 45), critic_lr=(2.5e-6, 46), value_coef=(0.6, 47),
                    value_clip=(0.05, 48), rollout_buffer_size=(1, 49), minibatch_size=(1, 50),
                    max_new_tokens=(512, 51), temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 54),
                    gamma=(0.9, 56), early_stop_threshold=(-0.1, 57), reward_shift=(-2.0, 66),
                    num_generations=(1, _LIB_K1)),
        "mc": _rows(_SB, "magrpo", lr=(5e-6, 39), num_generations=(2, 41), max_new_tokens=(512, 42),
                    temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 45), gamma=(0.9, 46),
                    early_stop_threshold=(-0.1, 48), rollout_buffer_size=(1, 49), minibatch_size=(1, 50),
                    reward_shift=(-2.0, 59)),
    },
    "coding": {
        "cc": _rows(_HE, "maac", lr=(5e-6, 43), critic_lr=(5e-6, 44), value_coef=(0.6, 45),
                    rollout_buffer_size=(4, 46), minibatch_size=(4, 47), max_new_tokens=(256, 48),
                    temperature=(0.7, 4), top_p=(0.9, 5), top_k=(0, "CG maac_he_config.yaml:1-7 (agent_model sets no top_k)"),
                    gamma=(0.9, 52), early_stop_threshold=(-0.2, 53), reward_shift=(-4.0, 58),
                    num_generations=(1, _LIB_K1)),
        "dc": _rows(_HE, "iac", lr=(5e-6, 47), critic_lr=(5e-6, 48), value_coef=(0.6, 49),
                    value_clip=(0.2, 50), rollout_buffer_size=(4, 51), minibatch_size=(4, 52),
                    max_new_tokens=(256, 53), temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 6),
                    gamma=(1.0, 54), early_stop_threshold=(-0.2, 55), reward_shift=(-4.0, 60),
                    num_generations=(1, _LIB_K1)),
        "mc": _rows(_HE, "magrpo", lr=(2e-5, 42), num_generations=(4, 44), max_new_tokens=(256, 45),
                    temperature=(0.6, 4), top_p=(0.6, 5), top_k=(0, 6), gamma=(1.0, 46),
                    early_stop_threshold=(-0.2, 48), rollout_buffer_size=(2, 49), minibatch_size=(2, 50),
                    reward_shift=(-4.0, 59)),
    },
    "writing": {  # one turn: gamma and early stop have no effect (the episode ends after turn 1)
        "cc": _rows(_TL, "maac", lr=(5e-6, 45), critic_lr=(5e-6, 46), value_coef=(0.6, 47),
                    rollout_buffer_size=(4, 48), minibatch_size=(4, 49), max_new_tokens=(256, 50),
                    temperature=(0.7, 4), top_p=(0.9, 5), top_k=(0, 6), gamma=(0.9, "lib maac.py:45 (not set)"),
                    early_stop_threshold=(None, "not set; 1 turn"), reward_shift=(0.0, 59),
                    num_generations=(1, _LIB_K1)),
        "dc": _rows(_TL, "iac", lr=(5e-6, 45), critic_lr=(5e-6, 46), value_coef=(0.6, 47),
                    value_clip=(0.2, 48), rollout_buffer_size=(4, 49), minibatch_size=(4, 50),
                    max_new_tokens=(256, 51), temperature=(0.7, 4), top_p=(0.9, 5), top_k=(0, 6),
                    gamma=(0.9, "lib iac.py:49 (not set)"), early_stop_threshold=(None, "not set; 1 turn"),
                    reward_shift=(0.0, 60), num_generations=(1, _LIB_K1)),
        "mc": _rows(_TL, "magrpo", lr=(5e-6, 37), num_generations=(4, 39), max_new_tokens=(256, 40),
                    temperature=(0.7, 4), top_p=(0.9, 5), top_k=(0, 6), gamma=(0.9, "lib magrpo.py:44 (not set)"),
                    early_stop_threshold=(None, "not set; 1 turn"), rollout_buffer_size=(1, 42),
                    minibatch_size=(1, 43), reward_shift=(0.0, 52)),
    },
}

# The paper's measured cost of our nucleus-scored log-prob (use_sampling_params=True), quoted in
# TrainConfig.use_sampling_params and docs/paper-fidelity.md: fraction of sampled tokens whose
# nucleus holds one token (log-prob exactly 0, no gradient), SmolLM2-135M-Instruct, measured by
# issue 28's author on 2026-12-07.
NUCLEUS_ZERO_GRAD = {"writing": 0.69, "coding": 0.72, "strbuild": 0.87, "housebuild": 0.95}


def family(algo: str) -> str:
    """`cc`, `dc`, or `mc` (every Monte Carlo baseline): which of the paper's configs applies."""
    return algo if algo in ("cc", "dc") else "mc"


def paper_values(task: str | None, algo: str) -> dict[str, Cited]:
    """{field: (value, source)} the paper ran for (task, algo); {} for a task it did not run."""
    if task not in PAPER_TASKS:
        return {}
    return {**COMMON, **PAPER_TASKS[task][family(algo)]}


__all__ = ["COMMON", "NUCLEUS_ZERO_GRAD", "PAPER_TASKS", "family", "paper_values"]
