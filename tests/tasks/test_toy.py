from __future__ import annotations

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.toy import TOY_MAX_CHARS, toy_agent_reward


@pytest.mark.parametrize(
    "helper,main,reward",
    [
        ("", "", 1.0),
        ("a" * 32, "", 0.75),
        ("a" * 16, "a" * 48, 0.5),
        ("a" * 64, "a" * 100, 0.0),
        ("a" * 63, "", (1 / 64 + 1) / 2),
    ],
)
def test_toy_rewards(helper, main, reward):
    task = get_task("toy")
    ep = task.new_episode(task.problems("train")[0])
    r = ep.step({"helper": helper, "main": main})
    assert r.reward == pytest.approx(reward, abs=1e-12)
    assert r.done
    assert r.info["lengths"] == {"helper": len(helper), "main": len(main)}
    assert f"{len(helper)} characters" in r.feedback["helper"]


def test_toy_agent_reward_and_prompt():
    assert TOY_MAX_CHARS == 64
    assert toy_agent_reward("") == 1.0 and toy_agent_reward("x" * 200) == 0.0
    task = get_task("toy")
    ep = task.new_episode(task.problems("eval")[0])
    assert ep.observation("main") == [{"role": "user", "content": "Say one word about candle."}]
    assert [p.problem_id for p in task.problems("eval")] == [f"toy/eval-{i}" for i in range(4)]
