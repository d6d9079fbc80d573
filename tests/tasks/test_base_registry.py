"""Registry, splits, joint-action validation, clone and observation rules shared by all tasks."""

from __future__ import annotations

import json

import pytest

from collm_serve.tasks import SPLITS, TASKS, EpisodeFinishedError, Problem, get_task

# Tasks whose step is cheap (coding's step runs the sandbox: covered in test_coding.py).
CHEAP = ("build", "toy", "writing", "writing_arxiv")
SAMPLE_ACTIONS = {
    "build": {"builder_a": "/setblock 1 0 2 red_wool", "builder_b": "/setblock 2 0 2 blue_wool"},
    "toy": {"helper": "hi", "main": ""},
    "writing": {"writer_a": "A short summary.", "writer_b": "A longer text. However, it adds detail."},
    "writing_arxiv": {"writer_a": "Background.", "writer_b": "Methods. However, they imply more."},
}


def test_registry_names_and_unknown_name():
    assert TASKS == ("build", "coding", "housebuild", "strbuild", "tally", "toy", "writing", "writing_arxiv")
    with pytest.raises(ValueError, match="valid tasks: build, coding, housebuild, strbuild, tally, toy, writing, writing_arxiv"):
        get_task("chess")


def test_unknown_option_names_valid_ones():
    with pytest.raises(ValueError, match=r"valid options: \['num_turns', 'reward_mode'\]"):
        get_task("build", colour="red")
    with pytest.raises(ValueError, match="unknown reward_mode"):
        get_task("build", reward_mode="dense")
    assert get_task("build", num_turns=2).num_turns == 2


@pytest.mark.parametrize(
    "name,agents,turns,n_train,n_eval",
    [
        ("build", ("builder_a", "builder_b"), 4, 8, 4),
        ("coding", ("helper", "main"), 2, 130, 32),
        ("toy", ("helper", "main"), 1, 8, 4),
        ("writing", ("writer_a", "writer_b"), 1, 321, 80),
        ("writing_arxiv", ("writer_a", "writer_b"), 1, 321, 80),
    ],
)
def test_shape_and_split_sizes(name, agents, turns, n_train, n_eval):
    task = get_task(name)
    assert task.name == name and task.agents == agents and task.num_turns == turns
    train, evl = task.problems("train"), task.problems("eval")
    assert (len(train), len(evl)) == (n_train, n_eval)
    assert all(p.split == "train" for p in train) and all(p.split == "eval" for p in evl)
    ids = [p.problem_id for p in train + evl]
    assert len(set(ids)) == len(ids)
    # deterministic order, also across instances
    assert [p.problem_id for p in get_task(name).problems("train")] == [p.problem_id for p in train]
    json.dumps([p.payload for p in train + evl])  # payloads are JSON-serialisable
    assert task.get_problem(evl[0].problem_id) == evl[0]
    with pytest.raises(ValueError, match="valid splits: train, eval"):
        task.problems("test")
    assert SPLITS == ("train", "eval")


@pytest.mark.parametrize("name", TASKS)
def test_initial_observation_is_own_prompt(name):
    task = get_task(name)
    ep = task.new_episode(task.problems("train")[0])
    assert ep.turn == 0 and not ep.done
    for agent in task.agents:
        obs = ep.observation(agent)
        if obs[0]["role"] == "system":  # the Minecraft tasks' own system prompt (minecraft.py)
            obs = obs[1:]
        assert len(obs) == 1 and obs[0]["role"] == "user" and obs[0]["content"]
    with pytest.raises(ValueError, match="unknown agent"):
        ep.observation("nobody")
    # observations are copies
    ep.observation(task.agents[0])[-1]["content"] = "mutated"
    assert ep.observation(task.agents[0])[-1]["content"] != "mutated"


@pytest.mark.parametrize("name", CHEAP)
def test_joint_action_validation(name):
    task = get_task(name)
    ep = task.new_episode(task.problems("train")[0])
    a, b = task.agents
    with pytest.raises(ValueError, match="missing"):
        ep.step({a: "x"})
    with pytest.raises(ValueError, match="unexpected"):
        ep.step({a: "x", b: "y", "intruder": "z"})
    with pytest.raises(TypeError):
        ep.step({a: "x", b: None})
    with pytest.raises(TypeError):
        ep.step([("x", "y")])
    assert ep.turn == 0  # nothing was consumed


@pytest.mark.parametrize("name", CHEAP)
def test_episode_runs_to_done_then_refuses(name):
    task = get_task(name)
    ep = task.new_episode(task.problems("eval")[0])
    results = []
    for t in range(task.num_turns):
        assert ep.turn == t
        results.append(ep.step(SAMPLE_ACTIONS[name]))
    assert [r.done for r in results] == [False] * (task.num_turns - 1) + [True]
    assert ep.done and ep.turn == task.num_turns
    for r in results:
        assert set(r.feedback) == set(task.agents)
        json.dumps(r.info)
        assert isinstance(r.reward, float)
    with pytest.raises(EpisodeFinishedError):
        ep.step(SAMPLE_ACTIONS[name])
    # history: prompt, then (own response, feedback) per non-final turn, then the last response
    a = task.agents[0]
    obs = ep.observation(a)
    assert [m["role"] for m in obs] == ["user"] + ["assistant", "user"] * (task.num_turns - 1) + ["assistant"]
    assert obs[-1]["content"] == SAMPLE_ACTIONS[name][a]


@pytest.mark.parametrize("name", CHEAP)
def test_determinism(name):
    task = get_task(name)
    p = task.problems("train")[1]
    runs = []
    for _ in range(2):
        ep = get_task(name).new_episode(p)
        runs.append([(r.reward, r.feedback, r.info) for r in (ep.step(SAMPLE_ACTIONS[name]) for _ in range(task.num_turns))])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("name", CHEAP)
def test_clone_is_independent(name):
    task = get_task(name, num_turns=2) if name != "toy" else get_task(name)
    ep = task.new_episode(task.problems("train")[0])
    twin = ep.clone()
    assert twin.task is ep.task and twin.problem is ep.problem
    r1 = ep.step(SAMPLE_ACTIONS[name])
    assert twin.turn == 0 and len(twin.observation(task.agents[0])) == 1
    r2 = twin.step({a: "" for a in task.agents})
    assert ep.observation(task.agents[0])[1]["content"] == SAMPLE_ACTIONS[name][task.agents[0]]
    assert twin.observation(task.agents[0])[1]["content"] == ""
    assert r1.info != r2.info


def test_problem_is_frozen():
    p = Problem("x", "train", {})
    with pytest.raises(AttributeError):
        p.split = "eval"
