"""TrainConfig validation: messages state the invariant and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collm_train.config import TrainConfig


def test_defaults_follow_the_paper():
    """Default preset `paper` = CoMLRL 1.3.6's update rules (issue 12; before it: PPO clip 0.2)."""
    c = TrainConfig()
    assert c.preset == "paper"
    assert (c.algo, c.gamma, c.value_coef, c.off_policy) == ("cc", 0.9, 0.6, "auto")
    assert (c.clip_eps, c.truncated_is, c.ratio_on) == (None, 1.0, "stale")  # -A log pi on fresh actions
    assert (c.normalize_adv, c.adv_norm, c.adv_eps) == ("auto", "agent_turn", 1e-6)
    assert (c.max_grad_norm, c.value_clip) == (None, 0.2)
    assert TrainConfig(algo="magrpo").adv_norm == "group"
    assert c.has_critic and not TrainConfig(algo="magrpo").has_critic
    assert "Discount" in TrainConfig.model_fields["gamma"].description  # docstrings are the docs


def test_collm_preset_and_explicit_fields_win():
    c = TrainConfig(preset="collm")
    assert (c.clip_eps, c.truncated_is, c.ratio_on, c.adv_norm, c.max_grad_norm, c.value_clip) == (
        0.2, None, "all", "off", 1.0, None)
    # giving one of the alternatives turns the preset's other one off
    p = TrainConfig(clip_eps=0.1)
    assert (p.clip_eps, p.truncated_is, p.ratio_on) == (0.1, None, "stale")
    q = TrainConfig(preset="collm", truncated_is=2.0)
    assert (q.clip_eps, q.truncated_is) == (None, 2.0)
    assert TrainConfig(preset="collm", normalize_adv=True).adv_norm == "agent_turn"  # old bool form
    assert TrainConfig(normalize_adv=False).adv_norm == "off"
    # a dump reloads to the same config (what `collm-train config` prints and --config reads)
    assert TrainConfig(**c.model_dump()) == c and TrainConfig(**p.model_dump()) == p


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(truncated_is=2.0, clip_eps=0.2), "set clip_eps=None"),
        (dict(preset="ppo"), "preset"),
        (dict(algo="magrpo", gae_lambda=0.9), "needs a critic"),
        (dict(algo="cc", critic_on_actor=True), "critic_on_actor applies to algo='dc'"),
        (dict(use_sampling_params=False), "off_policy='none'"),
        (dict(minibatch_size=4, micro_batch_size=8), "micro_batch_size=8 exceeds"),
        (dict(gamma=1.5), "less than or equal to 1"),
        (dict(algo="ppo"), "algo"),
        (dict(lora_target_modules=()), "at least one module"),
        (dict(unknown=1), "Extra inputs"),
    ],
)
def test_invalid(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        TrainConfig(**kwargs)


def test_frozen_and_device_lookup():
    c = TrainConfig(truncated_is=2.0, clip_eps=None, actor_device={"helper": "cpu"})
    with pytest.raises(ValidationError):
        c.gamma = 0.5
    assert c.device_of("helper") == "cpu"
    with pytest.raises(ValueError, match="no entry for agent 'main'"):
        c.device_of("main")


def test_algorithm_names_come_from_the_spec_table_without_torch():
    """TrainConfig.algo, its help and `collm-train --algo` read algorithms/spec.py, and validating
    a config (or building the CLI) imports no torch: a bad --algo costs a second."""
    import subprocess
    import sys
    import typing

    from click.testing import CliRunner

    from collm_train.algorithms.spec import ALGO_NAMES, SPECS
    from collm_train.cli import main

    field = TrainConfig.model_fields["algo"]
    assert typing.get_args(field.annotation) == ALGO_NAMES
    assert all(f"`{name}` {s.help}" in field.description for name, s in SPECS.items())
    out = CliRunner().invoke(main, ["config", "--help"]).output
    assert "[cc|dc|magrpo|mareinforce|marloo|maremax]" in out and SPECS["dc"].help in " ".join(out.split())
    code = ("import sys; from collm_train.cli import main; from collm_train.config import TrainConfig; "
            "TrainConfig(algo='dc'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
