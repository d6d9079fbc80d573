"""The tally task (issue 28's LLM miniature): rewards, the fixed disjoint split, feedback that
carries the last score, and each variant's horizon."""

from __future__ import annotations

import pytest

from collm_serve.tasks import TASKS, get_task
from collm_serve.tasks.tally import best_return, parse_move, progress


def _play(task, problem, moves):
    ep = task.new_episode(problem)
    return ep, [ep.step({"alice": str(a), "bob": str(b)}) for a, b in moves]


def test_registered_and_horizons():
    assert "tally" in TASKS
    assert get_task("tally").num_turns == 4
    assert {v: get_task("tally", variant=v).num_turns for v in ("long", "short", "sparse")} == {
        "long": 4, "short": 1, "sparse": 4}
    with pytest.raises(ValueError, match="variant"):
        get_task("tally", variant="medium")


@pytest.mark.parametrize("text,move", [("7", 7), ("I add 5.", 5), ("0", 0), ("12", 0), ("-3", 0),
                                       ("none", 0), ("3 then 9", 3)])
def test_parse_move(text, move):
    assert parse_move(text) == move


@pytest.mark.parametrize("variant", ["long", "short", "sparse"])
def test_split_disjoint_fixed_and_non_trivial(variant):
    task = get_task("tally", variant=variant)
    train, ev = task.problems("train"), task.problems("eval")
    tr_ids, ev_ids = {p.problem_id for p in train}, {p.problem_id for p in ev}
    assert not tr_ids & ev_ids
    assert {(p.payload["start"], p.payload["target"]) for p in train}.isdisjoint(
        {(p.payload["start"], p.payload["target"]) for p in ev})
    assert 0.15 < len(ev) / (len(ev) + len(train)) < 0.25
    assert [p.problem_id for p in get_task("tally", variant=variant).problems("eval")] == [p.problem_id for p in ev]


def test_long_rewards_compound_and_overshoot_is_permanent():
    task = get_task("tally", variant="long")
    prob = next(p for p in task.problems("train") + task.problems("eval") if (p.payload["start"], p.payload["target"]) == (0, 36))
    ep, res = _play(task, prob, [(9, 9), (9, 9), (0, 0), (0, 0)])
    assert [r.reward for r in res] == [0.5, 1.0, 1.0, 1.0]
    assert [r.done for r in res] == [False, False, False, True]
    assert sum(r.reward for r in res) == best_return(prob) == 3.5
    _, over = _play(task, prob, [(9, 9), (9, 9), (9, 0), (0, 0)])  # 45: overshoot by 9 stays
    assert [r.reward for r in over] == [0.5, 1.0, 0.75, 0.75]
    _, junk = _play(task, prob, [("x", "x")] * 4)  # invalid answers add nothing
    assert [r.reward for r in junk] == [0.0] * 4


def test_short_is_dense_and_graded():
    task = get_task("tally", variant="short")
    prob = next(p for p in task.problems("train") + task.problems("eval") if (p.payload["start"], p.payload["target"]) == (10, 20))
    rewards = [_play(task, prob, [(a, b)])[1][0].reward for a, b in [(5, 5), (4, 4), (9, 9), (0, 0)]]
    assert rewards == [1.0, 0.8, pytest.approx(0.2), 0.0]
    assert best_return(prob) == 1.0 and progress(20, 10, 20) == 1.0


def test_sparse_rewards_only_at_the_end():
    task = get_task("tally", variant="sparse")
    prob = next(p for p in task.problems("train") + task.problems("eval") if (p.payload["start"], p.payload["target"]) == (0, 36))
    _, res = _play(task, prob, [(9, 9), (9, 9), (0, 0), (0, 0)])
    assert [r.reward for r in res] == [0.0, 0.0, 0.0, 1.0]
    assert best_return(prob) == 1.0


def test_feedback_has_the_last_score_and_state_not_the_partners_answer():
    task = get_task("tally", variant="long")
    prob = next(p for p in task.problems("train") + task.problems("eval") if (p.payload["start"], p.payload["target"]) == (0, 36))
    ep = task.new_episode(prob)
    assert "Total: 0. Target: 36." in ep.observation("alice")[0]["content"]
    r = ep.step({"alice": "4", "bob": "My number is 5"})
    assert "Score this round: 0.25." in r.feedback["alice"]
    assert "you added 4, the team added 9" in r.feedback["alice"] and "Total: 9." in r.feedback["bob"]
    assert "My number" not in r.feedback["alice"]
    obs = ep.observation("alice")
    assert [m["role"] for m in obs] == ["user", "assistant", "user"] and obs[-1]["content"] == r.feedback["alice"]
    clone = ep.clone()
    clone.step({"alice": "9", "bob": "9"})
    assert ep.total == 9 and clone.total == 27  # a branching rollout's copies are independent
