"""bench/llm_miniature.py machinery on the tiny test model (not the scientific outcome): one real
cell writes a complete JSON, a second start skips finished cells, and the eval stage uses the lr
with the best tuning AUC. Budget 4 joint actions (one cc update of the short variant's pool of 4)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import llm_miniature as lm
from collm_serve.models import tiny_model_dir


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cell_json_resume_and_lr_choice(tmp_path, monkeypatch):
    model = tiny_model_dir(0)
    monkeypatch.setattr(lm, "LR_GRID", [1e-4])
    args = ["--variants", "short", "--algos", "cc", "--stage", "tune", "--budget", "short=4", "--eval-n", "2",
            "--threads", "1", "--model", str(model), "--out", str(tmp_path)]
    assert lm.main(args) == 0
    path = tmp_path / lm.cell_name("short", "cc", 1e-4, lm.TUNE_SEED)
    cell = json.loads(path.read_text())
    assert (cell["variant"], cell["algo"], cell["seed"], cell["stage"]) == ("short", "cc", lm.TUNE_SEED, "tune")
    assert cell["joint_actions"] == cell["budget_joint_actions"] == 4 and cell["updates"] == 1
    assert [c["fraction"] for c in cell["curve"]] == lm.FRACTIONS
    assert all(0.0 <= c["eval_return"] <= 1.0 and len(c["per_instance"]) == 2 for c in cell["curve"])
    assert cell["config"]["rollout_buffer_size"] == 4 and cell["config"]["use_sampling_params"] is False
    log = cell["updates_log"][0]
    assert {"explained_variance", "adv_std", "nucleus_zero_frac", "train_return"} <= set(log)
    assert 0.0 <= lm.auc(cell["curve"]) <= 1.0

    # a second tuning lr, better by construction; then a restart: tuning cells are skipped and
    # every eval seed runs at the better lr
    better = dict(cell, lr=1e-3, curve=[dict(c, eval_return=1.0) for c in cell["curve"]])
    (tmp_path / lm.cell_name("short", "cc", 1e-3, lm.TUNE_SEED)).write_text(json.dumps(better))
    monkeypatch.setattr(lm, "LR_GRID", [1e-4, 1e-3])
    calls = []
    monkeypatch.setattr(lm, "run_cell", lambda v, a, lr, seed, *rest, **kw: calls.append((v, a, lr, seed)) or
                        {"curve": cell["curve"], "seconds": 0.0})
    assert lm.main([*args[:5], "all", *args[6:]]) == 0
    assert calls == [("short", "cc", 1e-3, s) for s in lm.EVAL_SEEDS]
    assert lm.best_lr(tmp_path, "short", "cc") == 1e-3


def test_budget_units_are_equal_across_algorithms():
    assert lm.joint_actions_per_problem(4, 2) == 30 and lm.joint_actions_per_problem(1, 4) == 4
    assert lm.unit_lcm("long") == 60 and lm.unit_lcm("short") == 4
    assert lm.auc([{"fraction": 0.0, "eval_return": 0.0}, {"fraction": 1.0, "eval_return": 1.0}]) == 0.5


def _cell(variant, algo, seed, curve, budget=100):
    fr = lm.FRACTIONS
    return {"variant": variant, "algo": algo, "seed": seed, "lr": 1e-4, "stage": "eval", "budget_joint_actions": budget,
            "curve": [{"fraction": f, "joint_actions": int(f * budget), "eval_return": r} for f, r in zip(fr, curve)]}


def test_decision_rule_on_synthetic_cells():
    """The pre-registered rule: no learning -> inconclusive; a clear CC lead -> confirms; a clear
    Monte Carlo lead -> refutes; tuning cells never count."""
    from bench import llm_miniature_stats as st

    flat = [_cell("long", a, s, [0.2] * 5) for a in lm.ALGOS for s in range(3)]
    assert st.summarize(flat)["long"]["verdict"].startswith("inconclusive (no learning")
    up = lambda top, s: [0.2, 0.2 + top / 4 + 0.01 * s, 0.2 + top / 2, 0.2 + 3 * top / 4, 0.2 + top + 0.01 * s]  # noqa: E731
    cc_wins = ([_cell("long", "cc", s, up(0.6, s)) for s in range(3)] + [_cell("long", "magrpo", s, up(0.2, s)) for s in range(3)]
               + [_cell("long", "dc", s, up(0.1, s)) for s in range(3)])
    row = st.summarize(cc_wins + [dict(_cell("long", "magrpo", 100, up(0.9, 0)), stage="tune")])["long"]
    assert row["algos"]["magrpo"]["n"] == 3 and row["verdict"].startswith("CC better")
    assert row["deltas"]["cc-magrpo"]["boot"][0] > 0 and row["deltas"]["cc-magrpo"]["welch"][0] > 0
    mc_wins = [_cell("long", "cc", s, up(0.2, s)) for s in range(3)] + [_cell("long", "magrpo", s, up(0.6, s)) for s in range(3)]
    assert st.summarize(mc_wins)["long"]["verdict"].startswith("Monte Carlo better")
    assert st.to_threshold(_cell("long", "cc", 0, [0.2, 0.25, 0.31, 0.4, 0.5]), 0.3) == 50.0
