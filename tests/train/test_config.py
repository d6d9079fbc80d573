"""TrainConfig validation: messages state the invariant and the fix."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from collm_train.config import TrainConfig


def test_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.algo, c.gamma, c.value_coef, c.clip_eps, c.off_policy) == ("cc", 0.9, 0.6, 0.2, "auto")
    assert c.has_critic and not TrainConfig(algo="magrpo").has_critic
    assert "Discount" in TrainConfig.model_fields["gamma"].description  # docstrings are the docs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(truncated_is=2.0), "set clip_eps=None"),
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
