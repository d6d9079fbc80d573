"""bench/sample_efficiency.py machinery: rollouts through the trace store, the statistics, and a
1-seed run with a tiny budget producing a well-formed summary (not the scientific outcome)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from bench import sample_efficiency as se
from collm_serve.traces import TraceStore
from collm_train.data import build_batch
from collm_train.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rewards_are_sparse_and_need_both_agents():
    task = se.TASKS["long"]
    cues = [0, 1, 2, 1]
    ok = [{"alice": [c], "bob": [0]} for c in cues]  # (c + 0) mod M == c
    assert [se.turn_reward(task, cues, ok, t) for t in range(4)] == [0.0, 0.0, 0.0, 1.0]
    half = ok[:2] + [{"alice": [se.M + 1], "bob": [0]}, {"alice": [2], "bob": [1]}]  # a cue token; 2+1 != 1 mod 3
    assert se.turn_reward(task, cues, half, 3) == 0.5
    # the prompt holds the agent's own past actions only
    assert se.prompt(task, "alice", cues, [[4], [2]], 2) == [se.TAGS["alice"], se.M, 4, se.M + 1, 2, se.M + 2]
    short = se.TASKS["short"]
    assert se.turn_reward(short, [2], [{"alice": [1], "bob": [1]}], 0) == 1.0


def test_magrpo_tree_goes_through_the_store(tmp_path):
    task = se.TASKS["long"]
    trainer = Trainer(se.train_config("magrpo", 0), se.tiny_policy(0), se.AGENTS)
    with TraceStore(tmp_path / "t.sqlite") as store:
        (ep,) = se.rollout(trainer, task, [[1, 2, 0, 1]], se.K_MAGRPO, store, torch.Generator().manual_seed(0), 0)
        assert store.get_episode(ep.episode_id).status == "ok"
    assert len(ep.turns) == 4 + 16 + 64 + 256  # a full K-ary tree of depth 4
    assert all(t.reward == 0.0 for t in ep.turns if t.turn_index < 3)
    batch = build_batch([ep], se.AGENTS)
    assert len(batch) == 2 * 340 and {len(g) for g in batch.groups} == {se.K_MAGRPO}
    assert batch.episode_returns[0] == pytest.approx(ep.final_return)


def test_median_ci_order_statistics_and_censoring():
    med, lo, hi, cov = se.median_ci([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (med, lo, hi) == (3.0, 1.0, 5.0) and cov == pytest.approx(1 - 2 / 32)
    med, lo, hi, cov = se.median_ci([float(v) for v in range(1, 12)])  # n = 11: (X_(2), X_(10)), 98.8%
    assert (med, lo, hi) == (6.0, 2.0, 10.0) and cov >= 0.95
    med, lo, hi, _ = se.median_ci([1.0, math.inf, math.inf, 2.0, math.inf])
    assert math.isinf(med) and lo == 1.0 and math.isinf(hi)  # most seeds censored: median "> budget"
    assert se.ratio_ci([10.0] * 5, [20.0] * 5, 100) == (0.5, 0.5, 0.5, False, False)
    point, _, _, c_num, c_den = se.ratio_ci([math.inf] * 3, [10.0] * 3, 100)
    assert point == 10.0 and c_num and not c_den and se.fmt_ratio(point, c_num, c_den) == "> 10.00"
    assert se.fmt_ratio(0.5, False, True) == "< 0.50" and se.fmt_ratio(1.0, True, True).startswith("n/a")


def test_bench_runs_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    assert se.main(["--seeds", "1", "--budget-long", "150", "--budget-short", "40", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {(r["task"], r["algo"]) for r in result["runs"]} == {(t, a) for t in se.TASKS for a in se.ALGOS}
    for r in result["runs"]:
        assert 0 < r["steps"] <= r["budget"] + 2 * 340  # stops at the first update past the budget
        assert r["steps_to_target"] is None or r["steps_to_target"] <= r["steps"]
        steps = [c[0] for c in r["curve"]]
        assert steps == sorted(steps) and steps[0] == 0 and 0.0 <= r["final_eval"] <= 1.0
    for task in se.TASKS:
        s = result["summary"][task]
        assert set(s["algos"]) == set(se.ALGOS) and set(s["ratios"]) == {"cc/magrpo", "cc/dc"}
        assert all(a["n"] == 1 and 0 <= a["reached"] <= 1 for a in s["algos"].values())
    metrics = [r[0] for r in se.rows(se.summarize(result["runs"]), smoke=False)]
    assert "CC ÷ MAGRPO env steps, long horizon" in metrics and "CC ÷ DC env steps, short horizon" in metrics
    assert "magrpo greedy return when stopped, long horizon" in metrics
    assert all("[smoke]" in m for m in (r[0] for r in se.rows(se.summarize(result["runs"]), smoke=True)))
    assert se.main(["--from-json", str(out)]) == 0  # the saved run re-renders without training


def test_eval_problems_are_held_out_of_training():
    task = se.TASKS["long"]
    held = {tuple(c) for c in se.eval_problems(task, 0)}
    assert len(held) > 1 and se.M ** task.turns >= 4 * se.EVAL_PROBLEMS
    assert se.eval_problems(se.TASKS["short"], 0) == [[c] for c in range(se.M)]
    assert all(len(c) == task.turns for c in se.problems(random.Random(0), 3, task.turns))
