"""Early termination in the episode runner, with the real agent services: an episode (K = 1) or
a node's K joint actions (K >= 2) end once the mean of their shifted rewards passes the task's
threshold (comlrl trainers/actor_critic/maac.py:713-717, reinforce/magrpo.py:853-860); the
stored turns say done, and the tree is cut there.

The rewards come from a scripted task (per turn, a queue of rewards handed to the steps in the
order they run), so nothing depends on sampled text; the K steps of one node share a queue, and
the node rule only looks at their mean, so the order the threads take them in does not matter.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from collm_serve import tasks as task_registry
from collm_serve.orchestrator import collect, tree_turns
from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split
from collm_serve.team import TeamConfig
from collm_serve.traces import TraceStore


class ScriptedTask(Task):
    name = "scripted"

    def __init__(self, num_turns: int = 3, rewards: list[list[float]] | None = None,
                 reward_shift: float = 0.0, early_stop_threshold: float | None = 0.5):
        self.agents = ("helper", "main")
        self.num_turns = num_turns
        self.reward_shift, self.early_stop_threshold = reward_shift, early_stop_threshold
        self.queues = [list(q) for q in rewards or []]
        self.lock = threading.Lock()

    def problems(self, split: str) -> list[Problem]:
        return [Problem(f"scripted/{check_split(split)}", split, {})]

    def new_episode(self, problem: Problem) -> TaskEpisode:
        return ScriptedEpisode(self, problem)


class ScriptedEpisode(TaskEpisode):
    task: ScriptedTask

    def _initial_prompt(self, agent: str) -> str:
        return "Say hello."

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        with self.task.lock:
            reward = self.task.queues[self.turn].pop(0)
        return reward, {a: "Again." for a in self.agents}, {}


@pytest.fixture
def scripted_team(agents, tmp_path, monkeypatch):
    monkeypatch.setitem(task_registry._REGISTRY, "scripted", (__name__, "ScriptedTask"))

    def build(task: str = "scripted", names=("helper", "main"), **overrides) -> TeamConfig:
        data = {
            "task": task,
            "agents": {n: {"address": p.address, "timeout_s": 60, "sampling": {"max_tokens": 8}}
                       for n, p in zip(names, agents)},
            "traces": str(tmp_path / "traces.db"),
        }
        data.update(overrides)
        return TeamConfig(**data)

    return build


async def one_episode(team: TeamConfig):
    summary = await collect(team, 1, "train")
    assert summary.ok == 1, summary.failures
    with TraceStore(team.traces, create=False) as store:
        return store.get_episode(summary.episode_ids[0])


async def test_chain_stops_after_the_turn_that_passes(scripted_team):
    team = scripted_team(task_options={"num_turns": 3, "rewards": [[0.1], [0.9], [0.0]],
                                       "reward_shift": -0.2})
    ep = await one_episode(team)
    # turn 0: 0.1 - 0.2 = -0.1 plays on; turn 1: 0.7 > 0.5 ends it: 2 of 3 turns stored
    assert [(t.turn_index, t.done) for t in ep.turns] == [(0, False), (1, True)]
    assert [t.reward for t in ep.turns] == pytest.approx([-0.1, 0.7])  # shifted once
    assert ep.turns[1].info["early_stop"] and not ep.turns[0].info["early_stop"]
    assert ep.turns[1].info["raw_reward"] == pytest.approx(0.9)
    assert ep.final_return == pytest.approx(0.6)


async def test_node_mean_below_threshold_keeps_every_branch(scripted_team):
    # one sibling alone would pass (1.0 > 0.5), the node's mean (0.0) does not: the tree is whole
    team = scripted_team(group_size=2, task_options={
        "num_turns": 2, "rewards": [[1.0, -1.0], [0.0] * 4]})
    ep = await one_episode(team)
    assert len(ep.turns) == tree_turns(2, 2)
    assert all(not t.done for t in ep.children(None))


async def test_node_mean_above_threshold_ends_all_siblings(scripted_team):
    team = scripted_team(group_size=2, task_options={"num_turns": 2, "rewards": [[1.0, 0.2], []]})
    ep = await one_episode(team)
    roots = ep.children(None)
    assert len(ep.turns) == 2 and [t.done for t in roots] == [True, True]
    assert all(t.info["early_stop"] for t in roots) and all(not ep.children(t.turn_id) for t in roots)
    assert ep.final_return == pytest.approx(0.6)


async def test_strbuild_through_the_runner(scripted_team):
    team = scripted_team("strbuild", names=("builder_a", "builder_b"))
    ep = await one_episode(team)
    assert 1 <= len(ep.turns) <= 4
    for t in ep.turns:
        assert t.reward == pytest.approx(t.info["raw_reward"] - 2.0)
        assert t.done == (t.turn_index == 3 or t.info["early_stop"])
        for a in t.actions:  # the paper's prompt of that turn: [system, user]
            assert [m["role"] for m in a.observation] == ["system", "user"]
    assert ep.turns[-1].done
