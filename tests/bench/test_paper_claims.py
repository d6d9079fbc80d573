"""bench/paper_claims.py on CPU with the tiny model: the GPU script's result files, end to end.

The end-to-end test runs writing (cc, dc, magrpo) and housebuild (cc) with --quick (8 new tokens,
a tiny budget): a few seconds per cell. The multi-turn K-ary tree with early stop is checked
without a model (a stub sampler), so the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import math
import pytest

from bench import paper_claims as pc


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_claims")
    rc = pc.main(["--device", "cpu", "--model", "tiny", "--quick", "--threads", "1", "--out", str(out),
                  "--tasks", "writing", "--algos", "cc,dc,magrpo"])
    rc2 = pc.main(["--device", "cpu", "--model", "tiny", "--quick", "--threads", "1", "--out", str(out),
                   "--tasks", "housebuild", "--algos", "cc"])
    return out, rc, rc2


def test_grid_writes_one_file_per_cell_with_paper_settings(grid):
    out, rc, rc2 = grid
    assert rc == 0 and rc2 == 0
    expect = {("writing", "cc"): (5e-6, 1, 4), ("writing", "dc"): (5e-6, 1, 4), ("writing", "magrpo"): (5e-6, 4, 1),
              ("housebuild", "cc"): (5e-6, 1, 1)}
    for (task, algo), (lr, k, pool) in expect.items():
        cell = json.loads((out / f"{task}-{algo}-s0.json").read_text())
        assert (cell["task"], cell["algo"], cell["seed"], cell["device"], cell["device_name"]) == (task, algo, 0, "cpu", "cpu")
        c = cell["config"]
        assert (c["lr"], c["num_generations"], c["rollout_buffer_size"]) == (lr, k, pool)
        assert c["use_sampling_params"] is False and c["off_policy"] == "none"  # the paper's log-prob rule
        assert cell["max_new_tokens_used"] == 8 and cell["quick"] is True
        assert cell["joint_actions"] >= cell["budget_joint_actions"] > 0 and cell["updates"]
        ev = cell["eval"]
        n = ev["episodes"]
        assert n == len(ev["before_returns"]) == len(ev["after_returns"]) == ev["before"]["n"] > 0
        assert ev["unmatched"] == 0
        for side in ("before", "after"):
            vals = list(ev[f"{side}_returns"].values())
            assert math.isclose(ev[side]["mean"], sum(vals) / n, abs_tol=1e-9)
            assert ev[side]["low"] <= ev[side]["mean"] <= ev[side]["high"]
        deltas = [ev["after_returns"][key] - ev["before_returns"][key] for key in ev["before_returns"]]
        assert math.isclose(ev["delta"]["mean"], sum(deltas) / n, abs_tol=1e-9)
        assert cell["wall_s"] >= cell["sample_s"] + cell["update_s"] + cell["eval_s"] > 0
    hb = json.loads((out / "housebuild-cc-s0.json").read_text())
    assert hb["config"]["early_stop_threshold"] == 0.0 and hb["config"]["reward_shift"] == -1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == summary["of"] == 1  # the last call's grid: housebuild/cc
    assert set(summary["summary"]) == {"housebuild/cc"}


def test_existing_cells_are_skipped(grid, capsys):
    out, _, _ = grid
    before = (out / "writing-cc-s0.json").read_text()
    assert pc.main(["--device", "cpu", "--model", "tiny", "--quick", "--out", str(out), "--tasks", "writing",
                    "--algos", "cc"]) == 0
    assert (out / "writing-cc-s0.json").read_text() == before  # resumable: not rerun


class StubSampler:
    """Fixed answers, no model: exercises play()'s tree, store links and early stop."""

    def __init__(self, text: str):
        self.text, self.t, self.p, self.k, self.max_new = text, 0.6, 0.6, 0, 4
        self.trainer = type("T", (), {"version": 0})()

    def prompt(self, agent, observation):
        return [1, 2, 3]

    def sample(self, agent, prompts, generator):
        return [[5, 6]] * len(prompts), [[-0.5, -0.5]] * len(prompts), [self.text] * len(prompts)


def test_magrpo_tree_on_housebuild_is_full_and_linked(tmp_path):
    from collm_serve.tasks import get_task
    from collm_serve.traces import TraceStore

    task = get_task("housebuild", early_stop_threshold=-0.1)
    probs = task.problems("train")[:1]
    with TraceStore(tmp_path / "t.db") as store:
        returns, eps = pc.play(StubSampler(""), task, probs, 2, None, store, "housebuild", 0)
    (ep,) = eps
    assert ep.group_size == 2 and ep.status == "ok"
    assert len(ep.turns) == 2 + 4 + 8 + 16  # no early stop: an empty build scores < 0.9
    assert sum(t.parent_turn_id is None for t in ep.turns) == 2
    assert math.isclose(returns[0], pc.empty_return(task, probs[0]))  # every leaf is the same empty play
    assert math.isclose(ep.final_return, returns[0])


def test_floors_and_distribution():
    assert pc.FLOORS == pytest.approx({"housebuild": -4.4, "strbuild": -20.0, "coding": -8.0, "writing": 0.0})
    d = pc.distribution([0.0, 0.0, 1.0, 2.0], floor=0.0)
    assert d["n"] == 4 and d["mean"] == 0.75 and d["frac_above_floor"] == 0.5
    assert d["std"] == pytest.approx(0.9574271, rel=1e-6)


def test_pack_and_unpack_model_roundtrip(tmp_path, monkeypatch):
    src = tmp_path / "M"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(bytes(range(256)) * 1000)
    monkeypatch.setattr(pc, "PART", 100_000)  # 3 parts
    pc.pack_model(src, tmp_path / "carry")
    parts = sorted((tmp_path / "carry").glob("part-*"))
    assert len(parts) == 3
    monkeypatch.setenv("COLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLLM_PARTS_STAGE", str(tmp_path / "stage"))
    for i, part in enumerate(parts):  # one part per device call
        one = tmp_path / f"call{i}"
        one.mkdir()
        part.rename(one / part.name)
        assert pc.unpack_model(one) == 0
    got = tmp_path / "home" / "models" / "M"
    assert (got / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (got / "config.json").read_text() == "{}"
