"""Reward shift and early termination in TaskEpisode.step (tasks/base.py), as the paper's code
does them: the shift is added to each turn's reward once (comlrl utils/reward_processor.py:20-22,
trainers/actor_critic/maac.py:650-651) and the episode ends after a turn whose shifted reward is
strictly above the threshold (maac.py:713-717)."""

from __future__ import annotations

import pytest

from collm_serve.tasks import EpisodeFinishedError, early_stop_reached
from collm_serve.tasks.toy import ToyTask

SHORT = {"helper": "", "main": ""}  # toy reward 1.0
HALF = {"helper": "x" * 32, "main": "x" * 32}  # toy reward 0.5


def toy(turns: int, shift: float = 0.0, threshold: float | None = None) -> ToyTask:
    task = ToyTask()
    task.num_turns, task.reward_shift, task.early_stop_threshold = turns, shift, threshold
    return task


def test_shift_is_applied_once_per_turn():
    ep = toy(3, shift=-2.0).new_episode(ToyTask().problems("train")[0])
    rewards = [ep.step(SHORT), ep.step(HALF), ep.step(SHORT)]
    assert [r.reward for r in rewards] == [-1.0, -1.5, -1.0]
    assert [r.info["raw_reward"] for r in rewards] == [1.0, 0.5, 1.0]
    assert all(r.info["reward_shift"] == -2.0 for r in rewards)
    assert [r.done for r in rewards] == [False, False, True]


def test_no_shift_no_threshold_leaves_info_as_it_was():
    r = toy(1).new_episode(ToyTask().problems("train")[0]).step(SHORT)
    assert r.reward == 1.0 and "raw_reward" not in r.info and "early_stop" not in r.info


def test_early_stop_ends_the_episode():
    task = toy(4, shift=-1.0, threshold=-0.25)
    ep = task.new_episode(task.problems("train")[0])
    r0 = ep.step(HALF)  # -0.5: plays on
    r1 = ep.step(SHORT)  # 0.0 > -0.25: stops after 2 of 4 turns
    assert (r0.done, r0.info["early_stop"]) == (False, False)
    assert (r1.done, r1.info["early_stop"], r1.reward) == (True, True, 0.0)
    assert ep.done and ep.turn == 2
    with pytest.raises(EpisodeFinishedError):
        ep.step(SHORT)
    # no feedback queued after the last turn played
    assert [m["role"] for m in ep.observation("main")] == ["user", "assistant", "user", "assistant"]


def test_threshold_is_strict_and_can_be_deferred():
    task = toy(2, threshold=0.5)
    assert not task.new_episode(task.problems("train")[0]).step(HALF).done  # 0.5 is not > 0.5
    ep = task.new_episode(task.problems("train")[0])
    r = ep.step(SHORT, early_stop=False)  # a caller deciding on siblings
    assert not r.done and not ep.done
    r = ep.end_early(r)
    assert r.done and r.info["early_stop"] and ep.done
    assert [m["role"] for m in ep.observation("main")] == ["user", "assistant"]
    with pytest.raises(ValueError):
        ep.end_early(r)


def test_early_stop_reached_is_the_mean_rule():
    assert early_stop_reached([1.0, -1.0], 0.5) is False  # one sibling above, the mean is not
    assert early_stop_reached([1.0, 0.2], 0.5) is True
    assert early_stop_reached([1.0], None) is False
