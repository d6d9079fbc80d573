"""collm-train's user interface (issue 15 item 7): flags generated from TrainConfig, `config
--dump`, `--resume latest`, provenance in hparams.json, optional trackers, per-minibatch progress."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import types

import pytest
import yaml
from click.testing import CliRunner

from collm_serve.traces import TraceStore
from collm_train.cli import TRAIN_FIELDS, main
from collm_train.config import TrainConfig
from collm_train.run import ResumeError, RunLog, provenance, resolve_resume, traces_fingerprint
from collm_train.trackers import TrackerUnavailable, check_trackers
from tests.conftest import REPO
from tests.train.conftest import chain_episode

AGENTS = ["helper", "main"]


def _flags(command) -> dict[str, list[str]]:
    return {p.name: p.opts + p.secondary_opts for p in command.params}


@pytest.mark.parametrize("name", ["main", "online", "config"])
def test_every_train_config_field_is_a_flag_exactly_once(name):
    command = main if name == "main" else main.commands[name]
    flags = _flags(command)
    for field in TRAIN_FIELDS:
        assert flags[field][0] == "--" + field.replace("_", "-"), field
    opts = [o for p in command.params for o in p.opts + p.secondary_opts]
    assert len(opts) == len(set(opts)), "a flag defined twice"
    # its help is the field's docstring: one source
    help_text = {p.name: p.help for p in command.params}
    assert help_text["value_coef"].startswith("c_v, weight of the critic loss")


def _dump(*args: str) -> dict:
    r = CliRunner().invoke(main, ["config", "--dump", *args])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.output)


def test_flags_of_every_kind_reach_the_config(tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg_file.write_text(yaml.safe_dump({"lr": 1e-3, "epochs": 3, "algo": "dc"}))
    d = _dump("--config", str(cfg_file), "--epochs", "2", "--clip-eps", "0.3", "--truncated-is", "none",
              "--critic-on-actor", "--lora-target-modules", "q_proj,v_proj", "--actor-device", "helper=cpu,main=cpu",
              "--normalize-adv", "group", "--micro-batch-size", "2")
    assert d["algo"] == "dc" and d["lr"] == 1e-3  # the file's values where no flag is given
    assert d["epochs"] == 2  # a flag beats the file
    assert (d["clip_eps"], d["truncated_is"]) == (0.3, None)  # `none` for an optional field
    assert d["critic_on_actor"] is True and d["lora_target_modules"] == ["q_proj", "v_proj"]
    assert d["actor_device"] == {"helper": "cpu", "main": "cpu"} and d["normalize_adv"] == "group"
    assert TrainConfig(**d).micro_batch_size == 2
    assert _dump("--no-use-sampling-params", "--off-policy", "none")["use_sampling_params"] is False


def test_config_dump_is_the_config_printout():
    plain = CliRunner().invoke(main, ["config", "--algo", "magrpo"])
    dumped = CliRunner().invoke(main, ["config", "--algo", "magrpo", "--dump"])
    assert plain.exit_code == dumped.exit_code == 0 and plain.output == dumped.output


def test_a_bad_flag_value_names_the_flag_and_all_problems_show():
    r = CliRunner().invoke(main, ["config", "--lr", "-5", "--gamma", "2"])
    assert r.exit_code == 1
    assert "--lr: Input should be greater than 0 (got -5.0)" in r.stderr
    assert "--gamma: Input should be less than or equal to 1 (got 2.0)" in r.stderr
    r = CliRunner().invoke(main, ["config", "--epochs", "two"])
    assert r.exit_code == 2 and "'--epochs'" in r.output and "'two' is not a valid integer" in r.output


# -- --resume --------------------------------------------------------------------------------------


def _make_run(runs, name, mtime):
    d = runs / name
    d.mkdir(parents=True)
    (d / "hparams.json").write_text("{}")
    import os

    os.utime(d / "hparams.json", (mtime, mtime))


def test_resume_latest_and_unknown_names(tmp_path):
    runs = tmp_path / "runs"
    _make_run(runs, "toy__cc__0__100", 100)
    _make_run(runs, "toy__cc__1__200", 300)  # newest activity of toy/cc
    _make_run(runs, "toy__dc__0__999", 999)  # other algorithm
    assert resolve_resume(runs, "latest", "toy", "cc") == "toy__cc__1__200"
    assert resolve_resume(runs, "toy__cc__0__100", "toy", "cc") == "toy__cc__0__100"
    assert resolve_resume(runs, None, "toy", "cc") is None
    with pytest.raises(ResumeError) as e:
        resolve_resume(runs, "toy__cc__0__10", "toy", "cc")
    msg = str(e.value)
    assert "no such run" in msg and "did you mean 'toy__cc__0__100'?" in msg and "toy__dc__0__999" in msg
    assert "--resume latest" in msg
    with pytest.raises(ResumeError, match="no run of task 'toy' with --algo magrpo"):
        resolve_resume(runs, "latest", "toy", "magrpo")


# -- provenance, trackers --------------------------------------------------------------------------


def test_hparams_record_versions_git_sha_and_the_traces_fingerprint(tmp_path):
    ids = ["e2", "e0", "e1"]
    fp = traces_fingerprint(ids)
    assert fp == traces_fingerprint(sorted(ids)) == hashlib.sha256(b"e0\ne1\ne2\n").hexdigest()
    assert fp != traces_fingerprint(ids[:2])
    run = RunLog(tmp_path, "toy", "cc", 0, {"lr": 1.0, "provenance": provenance(ids, "traces.db")})
    run.close()
    saved = json.loads((run.dir / "hparams.json").read_text())["provenance"]
    assert saved["traces"] == {"path": "traces.db", "episodes": 3, "fingerprint": "sha256:" + fp}
    assert {"collm", "torch", "pydantic"} <= set(saved["packages"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:  # this test runs from a git checkout (CI): the sha is recorded
        assert saved["git_sha"].split("+")[0] == head.stdout.strip()


class _Recorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *a, **k: self.calls.append((name, a, k)) or self


@pytest.fixture
def fake_trackers(monkeypatch):
    """FakeWandb / FakeMlflow: modules injected as `wandb` / `mlflow` that record every call
    (neither package is installed here; the integration code is the same either way)."""
    fake_wandb, fake_mlflow = types.ModuleType("wandb"), types.ModuleType("mlflow")
    wandb_run, mlflow_calls = _Recorder(), _Recorder()
    fake_wandb.init = lambda **k: wandb_run.calls.append(("init", (), k)) or wandb_run
    for fn in ("start_run", "log_params", "log_metrics", "end_run"):
        setattr(fake_mlflow, fn, getattr(mlflow_calls, fn))
    import importlib.machinery

    for mod in (fake_wandb, fake_mlflow):  # find_spec must see them as installed
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return wandb_run, mlflow_calls


def test_trackers_get_hparams_and_every_scalar(tmp_path, fake_trackers):
    wandb_run, mlflow_calls = fake_trackers
    run = RunLog(tmp_path, "toy", "cc", 0, {"lr": 1e-4, "provenance": {"git_sha": "abc"}},
                 trackers=["wandb", "mlflow"])
    run.log(1, {"losses/actor": 0.5, "charts/ess": math.nan, "note": "text"})
    run.close()
    init = wandb_run.calls[0]
    assert init[0] == "init" and init[2]["name"] == run.name and init[2]["config"]["lr"] == 1e-4
    assert ("log", ({"losses/actor": 0.5},), {"step": 1}) in wandb_run.calls  # NaN and text dropped
    assert wandb_run.calls[-1][0] == "finish"
    names = [c[0] for c in mlflow_calls.calls]
    assert names == ["start_run", "log_params", "log_metrics", "end_run"]
    assert mlflow_calls.calls[1][1][0] == {"lr": "0.0001", "provenance.git_sha": "abc"}
    assert mlflow_calls.calls[2][1:] == (({"losses/actor": 0.5},), {"step": 1})


def test_a_tracker_that_is_not_installed_is_refused_with_the_fix():
    from importlib.util import find_spec

    if find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(TrackerUnavailable, match="--tracker wandb: the wandb package is not installed; pip install"):
        check_trackers(["wandb"])


# -- progress inside an update -------------------------------------------------------------------


def test_update_reports_every_minibatch(tiny_model):
    from collm_train.trainer import Trainer

    episodes = [chain_episode(AGENTS, [1.0, 0.0], episode_id=f"e{k}") for k in range(3)]  # 12 samples
    trainer = Trainer(TrainConfig(algo="cc", minibatch_size=5, epochs=2), tiny_model, AGENTS)
    steps = []
    trainer.update(episodes, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 6) for i in range(1, 7)]  # 2 epochs x ceil(12 / 5)


def test_offline_run_through_the_cli_records_provenance(tmp_path):
    """The real CLI on the tiny model: hparams.json carries the fingerprint of the traces used."""
    traces = tmp_path / "traces.db"
    with TraceStore(str(traces)) as store:
        for k in range(2):
            ep = chain_episode(AGENTS, [1.0], episode_id=f"e{k}")
            ep.task = "toy"
            store.import_episode(ep)
    team = tmp_path / "team.yaml"
    team.write_text(yaml.safe_dump({"task": "toy", "agents": {a: {"address": f"127.0.0.1:{5001 + i}"}
                                                              for i, a in enumerate(AGENTS)}}))
    r = CliRunner().invoke(main, ["--traces", str(traces), "--team", str(team), "--model", "embedded:tiny-llama",
                                  "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "adapters"),
                                  "--minibatch-size", "2", "--iterations", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    prov = json.loads((run_dir / "hparams.json").read_text())["provenance"]
    assert prov["traces"]["fingerprint"] == "sha256:" + traces_fingerprint(["e0", "e1"])
    assert "iteration 2: actor loss" in r.stderr
    # --resume latest continues that run: iterations 3 and 4, same folder
    r = CliRunner().invoke(main, ["--traces", str(traces), "--team", str(team), "--model", "embedded:tiny-llama",
                                  "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "adapters"),
                                  "--resume", "latest", "--progress"])  # the bar's code path runs
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    assert "iteration 3: actor loss" in r.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 1
