"""`collm-train` checks that run before any model loads, and `collm-train config`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from collm_serve.traces import TraceStore
from collm_train.cli import main
from collm_train.config import TrainConfig
from tests.conftest import REPO
from tests.train.conftest import chain_episode

AGENTS = ["helper", "main"]

# runs the CLI in a fresh interpreter with model loading booby-trapped, and reports at exit
# whether torch was ever imported (no torch: certainly no model)
DRIVER = """
import atexit, sys
import collm_serve.models as models
def _no_model(*a, **k):
    print("MODEL LOAD ATTEMPTED", file=sys.stderr)
    raise SystemExit(99)
models.resolve_model = _no_model
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.stderr))
from collm_train.cli import main
sys.argv = ["collm-train", *sys.argv[1:]]
main()
"""


@pytest.fixture
def k1_setup(tmp_path):
    traces = tmp_path / "traces.db"
    with TraceStore(str(traces)) as store:
        for k in range(3):
            ep = chain_episode(AGENTS, [1.0, 0.0], episode_id=f"e{k}")
            ep.task = "toy"
            store.import_episode(ep)
    team = tmp_path / "team.yaml"  # group_size defaults to 1
    team.write_text(yaml.safe_dump({"task": "toy", "traces": str(traces),
                                    "agents": {a: {"address": f"127.0.0.1:{5001 + i}"} for i, a in enumerate(AGENTS)}}))
    return tmp_path, traces, team


@pytest.mark.parametrize("algo", ["magrpo", "marloo", "maremax"])
@pytest.mark.parametrize("mode", ["offline", "online"])
def test_group_baselines_refuse_k1_before_loading_a_model(k1_setup, algo, mode):
    tmp, traces, team = k1_setup
    args = ["--algo", algo, "--traces", str(traces), "--team", str(team), "--runs", str(tmp / "runs")]
    if mode == "online":
        args = ["online", "--algo", algo, "--team", str(team), "--runs", str(tmp / "runs")]
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stderr[-2000:]
    err = done.stderr
    assert f"error: --algo {algo} needs group_size >= 2" in err and "group_size: 4" in err
    assert "--group-size 4" in err and "mareinforce" in err  # the fix is named
    assert "Traceback" not in err and "MODEL LOAD ATTEMPTED" not in err
    assert "torch imported: False" in err
    assert not (tmp / "runs").exists()  # refused before a run directory was made
    assert elapsed < 10, f"took {elapsed:.1f} s"  # ~0.7 s measured on an idle 2-core machine


def test_mareinforce_and_cc_accept_k1_traces(k1_setup):
    tmp, traces, team = k1_setup
    done = subprocess.run([sys.executable, "-c", DRIVER, "--algo", "mareinforce", "--traces", str(traces),
                           "--team", str(team), "--runs", str(tmp / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 99 and "MODEL LOAD ATTEMPTED" in done.stderr  # went on to load the model


def test_config_prints_the_effective_config_as_yaml():
    runner = CliRunner()
    out = runner.invoke(main, ["config", "--algo", "cc", "--preset", "paper"])
    assert out.exit_code == 0, out.output
    data = yaml.safe_load(out.output)
    assert set(data) == set(TrainConfig.model_fields)  # every field
    assert TrainConfig(**data) == TrainConfig(algo="cc", preset="paper")  # a valid --config file
    assert (data["clip_eps"], data["truncated_is"], data["ratio_on"]) == (None, 1.0, "stale")
    assert data["normalize_adv"] == "auto"
    assert "# c_v, weight of the critic loss" in out.output  # descriptions as comments
    collm = yaml.safe_load(runner.invoke(main, ["config", "--algo", "magrpo", "--preset", "collm"]).output)
    assert (collm["algo"], collm["clip_eps"], collm["truncated_is"]) == ("magrpo", 0.2, None)
    assert collm["max_grad_norm"] == 1.0


def test_traces_without_sampling_are_refused_before_loading_a_model(k1_setup):
    tmp, traces, team = k1_setup
    with TraceStore(str(traces)) as store:  # a hand-written legacy row: no top_k, no max_tokens
        store.conn.execute("UPDATE actions SET sampling = '{\"temperature\": 0.7}' WHERE agent = 'main'")
    done = subprocess.run([sys.executable, "-c", DRIVER, "--algo", "mareinforce", "--traces", str(traces),
                           "--team", str(team), "--runs", str(tmp / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "episode e0 turn 0: the action of 'main' has no sampling record" in done.stderr
    assert "Traceback" not in done.stderr and "MODEL LOAD ATTEMPTED" not in done.stderr
