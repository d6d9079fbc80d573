"""The mistakes a new user makes on a fresh clone (issue 15), each made for real: the command
exits non-zero (a Kubernetes Job is then marked failed) and the message names the fix.

Agents that are "not running" are ports held bound without listening: connections to them are
refused at once, and no other process can take the port while the test runs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import collm_serve
from collm_serve.cli import main as serve_cli
from collm_serve.traces import TraceStore
from collm_serve.traces.cli import cli as traces_cli
from collm_train.cli import main as train_cli
from tests.traces.helpers import write_branching

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def dead_ports():
    """Two ports nobody listens on (bound, not listening: connect() is refused)."""
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    yield [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()


def toy_team(tmp_path: Path, addresses: list[str]) -> Path:
    team = {"task": "toy", "traces": str(tmp_path / "traces.db"), "retry": {"attempts": 1, "backoff_s": 0},
            "agents": {"helper": {"address": addresses[0]}, "main": {"address": addresses[1]}}}
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(team))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """An entry point as a user runs it (its own process: exit code, stdout and stderr apart)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


# -- collect / online with no agent running ---------------------------------------------------


def test_collect_with_no_agent_running_fails_and_says_start_it(tmp_path, dead_ports):
    team = toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports])
    r = CliRunner().invoke(serve_cli, ["collect", "--team", str(team), "--episodes", "2", "--no-progress"])
    assert r.exit_code == 1, r.output
    assert "error: all 2 episode(s) failed; first reasons:" in r.stderr
    assert "UNAVAILABLE" in r.stderr and "fix: start the agent (collm-serve start --agent" in r.stderr
    reasons = [ln for ln in r.stderr.splitlines() if ln.startswith("  ") and not ln.startswith("    fix:")]
    assert 1 <= len(reasons) <= 3 and all(len(ln) <= 202 for ln in reasons), reasons  # short, not a dump


def test_collect_that_completes_nothing_new_still_succeeds(tmp_path, dead_ports):
    """0 episodes asked: nothing failed, so nothing to report (exit 0)."""
    team = toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports])
    r = CliRunner().invoke(serve_cli, ["collect", "--team", str(team), "--episodes", "0", "--no-progress"])
    assert r.exit_code == 0, r.output


def test_online_with_no_agent_running_fails_before_loading_a_model(tmp_path, dead_ports):
    team = toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports])
    r = cli("collm_train", "online", "--team", str(team), "--model", "embedded:tiny-llama", "--iterations", "2",
            "--episodes-per-iteration", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "adapters"))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    for agent in ("helper", "main"):  # both problems at once, each with its fix
        assert f"fix: start it (collm-serve start --agent {agent})" in r.stderr
    assert "Traceback" not in out
    assert not (tmp_path / "runs").exists()  # refused before a run (or a model) was started


def test_online_loop_with_every_iteration_skipped_trains_nothing(tmp_path, dead_ports):
    """Agents that die after the start-up check: every iteration is skipped with its reason, and
    the empty history is what makes `collm-train online` exit 1 (cli.py)."""
    from collm_serve.team import load_team_config
    from collm_train.online import online_loop
    from collm_train.run import RunLog

    team = load_team_config(toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports]))
    lines: list[str] = []
    run = RunLog(tmp_path / "runs", "toy", "cc", 0, {})
    history = online_loop(team, None, run, out_dir=tmp_path / "adapters", iterations=2, episodes_per_iteration=1,
                          traces=team.traces, echo=lines.append)  # no trainer: it must never be asked
    run.close()
    assert history == []
    assert sum("no complete episodes (1 failed); skipping update" in ln for ln in lines) == 2
    assert any("fix: start the agent (collm-serve start --agent" in ln for ln in lines)


# -- addresses and ports ------------------------------------------------------------------------


def test_address_without_a_port_is_refused():
    r = CliRunner().invoke(serve_cli, ["info", "--address", "localhost"])
    assert r.exit_code == 2
    assert "'localhost' has no port (gRPC would dial 443); write host:port, e.g. localhost:50061" in r.output


def test_team_file_address_without_a_port_is_refused(tmp_path):
    team = toy_team(tmp_path, ["localhost", "localhost:50062"])
    r = CliRunner().invoke(serve_cli, ["collect", "--team", str(team), "--episodes", "1"])
    assert r.exit_code == 1 and "agents.helper.address" in r.output and "write host:port" in r.output
    assert not (tmp_path / "traces.db").exists()


def test_agent_on_a_port_in_use_fails_at_once(tmp_path):
    with socket.socket() as other:  # another service already listens there
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = cli("collm_serve", "start", "--agent", "helper", "--engine", "transformers", "--model",
                "embedded:tiny-llama", "--port", str(port), "--state-dir", str(tmp_path / "state"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"error: cannot listen on 127.0.0.1:{port}: port {port} is already in use (another agent or "
            "service on it?); pick a free --port (0 = any free)") in r.stderr
    assert '"event": "failed"' in r.stdout  # what supervisors and the launcher read
    assert "Traceback" not in r.stderr


# -- trace export ---------------------------------------------------------------------------------


@pytest.fixture
def trace_db(tmp_path) -> Path:
    path = tmp_path / "traces.db"
    with TraceStore(str(path)) as store:
        write_branching(store)
    return path


def test_export_creates_missing_parent_folders(tmp_path, trace_db):
    out = tmp_path / "exports" / "2026" / "coding.jsonl"
    r = CliRunner().invoke(traces_cli, ["export", str(trace_db), "--format", "jsonl", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and len(out.read_text().splitlines()) == 12
    assert not list(out.parent.glob("*.tmp"))
    assert "warning" not in r.stderr


def test_export_matching_nothing_warns_and_lists_what_there_is(tmp_path, trace_db):
    """Decision: a filter matching nothing writes the empty file and exits 0 (an empty split is
    legitimate in a pipeline), with a warning on stderr that makes a typo obvious."""
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(traces_cli, ["export", str(trace_db), "--format", "jsonl", "--out", str(out),
                                        "--task", "codng"])
    assert r.exit_code == 0, r.output
    assert out.exists() and out.read_text() == ""
    assert "warning: no episode matches task='codng', status='ok'; the store holds coding: 1 ok" in r.stderr
    assert "change --task/--split/--status" in r.stderr


def test_export_to_a_folder_names_the_fix(tmp_path, trace_db):
    r = CliRunner().invoke(traces_cli, ["export", str(trace_db), "--format", "jsonl", "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert f"{tmp_path} is a folder; give the output file's path, e.g. {tmp_path / 'traces.jsonl'}" in r.output
    assert ".tmp" not in r.output


# -- --version on every CLI ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "group"), [("collm-serve", serve_cli), ("collm-traces", traces_cli),
                                             ("collm-train", train_cli)])
def test_version_on_every_cli(name, group):
    r = CliRunner().invoke(group, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"{name}, version {collm_serve.__version__}", r.output


# -- collm-train: every mistake refused before a model loads ------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model ends the command with exit 99: a check that comes too late shows as 99."""
    import collm_serve.models as models

    def trap(*_a, **_k):
        raise SystemExit(99)

    monkeypatch.setattr(models, "resolve_model", trap)


@pytest.fixture
def toy_traces(tmp_path, dead_ports) -> tuple[Path, Path]:
    """A team file (agents not running) and its trace store with two complete toy episodes."""
    from tests.train.conftest import chain_episode

    team = toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports])
    with TraceStore(str(tmp_path / "traces.db")) as store:
        for k in range(2):
            ep = chain_episode(["helper", "main"], [1.0, 0.0], episode_id=f"e{k}")
            ep.task = "toy"
            store.import_episode(ep)
    return team, tmp_path / "traces.db"


def train(*args: str):
    r = CliRunner().invoke(train_cli, list(args))
    assert r.exit_code == 1, (r.exit_code, r.output)  # 99 would mean: the model was loading
    assert "Traceback" not in r.output
    return r.stderr


def test_train_on_a_jsonl_file_points_to_the_trace_store(tmp_path, toy_traces, no_model):
    team, db = toy_traces
    jsonl = tmp_path / "traces.jsonl"
    with TraceStore(str(db)) as store:
        from collm_serve.traces.export import export_jsonl

        export_jsonl(store, jsonl)
    err = train("--traces", str(jsonl), "--team", str(team))
    assert f"--traces {jsonl} is a JSON/JSONL file, not a trace store (SQLite)" in err
    assert f"pass --traces {db} (the team's traces in {team})" in err and "import_jsonl" in err
    assert len(err.strip().splitlines()) == 1


def test_train_on_an_empty_trace_store_says_collect_first(tmp_path, toy_traces, no_model):
    team, _ = toy_traces
    TraceStore(str(tmp_path / "empty.db")).close()
    err = train("--traces", str(tmp_path / "empty.db"), "--team", str(team))
    assert "no complete episodes of task 'toy' (it holds no episodes)" in err
    assert f"collect some first (collm-serve collect --team {team})" in err


@pytest.mark.parametrize(("text", "expected"), [
    ("lr: [1e-4\nepochs: 2\n", "not valid YAML at line 2"),
    ("- lr: 1e-4\n", "the top level is a list, expected a mapping of TrainConfig keys (key: value, not '- item')"),
    ("lr: -1\nepocs: 2\n", "epocs: unknown key; did you mean 'epochs'?"),
])
def test_train_config_file_mistakes_are_one_clear_error(tmp_path, toy_traces, no_model, text, expected):
    team, db = toy_traces
    config = tmp_path / "train.yaml"
    config.write_text(text)
    err = train("--traces", str(db), "--team", str(team), "--config", str(config))
    assert expected in err
    if "epocs" in text:  # every problem at once, not the first only
        assert "2 problems" in err and "lr: Input should be greater than 0 (got -1)" in err


def test_a_bad_train_flag_names_the_flag(toy_traces, no_model):
    team, db = toy_traces
    err = train("--traces", str(db), "--team", str(team), "--lr", "-5")
    assert err.strip() == "error: --lr: Input should be greater than 0 (got -5.0)"


def test_unknown_resume_lists_the_runs_and_latest_needs_one(tmp_path, toy_traces, no_model):
    team, db = toy_traces
    (tmp_path / "runs" / "toy__cc__0__100").mkdir(parents=True)
    (tmp_path / "runs" / "toy__cc__0__100" / "hparams.json").write_text("{}")
    err = train("--traces", str(db), "--team", str(team), "--runs", str(tmp_path / "runs"), "--resume", "toy_cc_0")
    assert "--resume toy_cc_0: no such run" in err and "toy__cc__0__100" in err and "--resume latest" in err
    err = train("--traces", str(db), "--team", str(team), "--runs", str(tmp_path / "runs"), "--resume", "latest",
                "--algo", "dc")
    assert "--resume latest: no run of task 'toy' with --algo dc" in err and "drop --resume" in err


def test_options_before_a_subcommand_are_refused(tmp_path):
    err = train("--lr", "-5", "plot", str(tmp_path))
    assert "--lr given before the subcommand `plot` would be ignored; `plot` does not take --lr" in err
    err = train("--epochs", "2", "online", "--team", "x.yaml")
    assert "put them after it: collm-train online --epochs ..." in err


def test_a_tracker_that_is_not_installed_is_refused(toy_traces, no_model):
    from importlib.util import find_spec

    if find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    team, db = toy_traces
    err = train("--traces", str(db), "--team", str(team), "--tracker", "mlflow")
    assert "--tracker mlflow: the mlflow package is not installed; pip install mlflow" in err


def test_push_to_agents_that_are_not_running_fails_before_training(toy_traces, no_model):
    team, db = toy_traces
    err = train("--traces", str(db), "--team", str(team), "--push")
    for agent in ("helper", "main"):  # every problem at once
        assert f"agent {agent} @ 127.0.0.1:" in err and f"fix: start it (collm-serve start --agent {agent})" in err


def test_push_checks_adapter_root_and_base_model_on_the_live_agent(tmp_path, toy_traces, no_model):
    """The agent itself says whether it would load from --out (its adapter_root) and which base it
    serves; checked before any model loads. The default --out is $COLLM_HOME/adapters."""
    from collm_serve.models import collm_home
    from tests.conftest import start_agent

    team, db = toy_traces
    root = tmp_path / "root"
    root.mkdir()
    raw = yaml.safe_load(team.read_text())
    with start_agent(tmp_path, "helper", adapter_root=str(root)) as agent:
        raw["agents"]["helper"]["address"] = agent.address
        team.write_text(yaml.safe_dump(raw))
        base = ["--traces", str(db), "--team", str(team), "--push", "--model", "embedded:tiny-llama"]
        err = train(*base)  # default --out: not this agent's adapter_root
        assert f"agent helper @ {agent.address} will not load adapters from --out {collm_home() / 'adapters'}" in err
        assert "PERMISSION_DENIED" in err and f"outside the adapter root {root.resolve()}" in err
        assert "fix: use --out inside the agent's adapter_root (named above)" in err
        err = train(*base, "--out", str(root))  # helper is fine now; main is still not running
        assert "agent helper" not in err and "agent main" in err
        err = train(*base[:-2], "--out", str(root))  # the trainer's default model: another base
        assert "agent helper @" in err and "serves base model 'tiny-llama-s0'" in err
        assert "fix: train with the agents' --model" in err
    assert not any(root.iterdir())  # the probe loaded nothing, wrote nothing


# -- config files: every problem at once, with suggestions; flags blamed as flags -------------


def test_team_file_with_agent_instead_of_agents_shows_every_problem(tmp_path):
    team = tmp_path / "team.yaml"
    team.write_text("task: toy\nagent:\n  helper: {address: 'localhost:1'}\ngroup_sise: 2\n")
    r = CliRunner().invoke(serve_cli, ["collect", "--team", str(team), "--episodes", "1"])
    assert r.exit_code == 1
    assert f"{team}: 3 problems:" in r.output
    assert "agent: unknown key; did you mean 'agents'?" in r.output
    assert "group_sise: unknown key; did you mean 'group_size'?" in r.output
    assert "agents: required" in r.output


def test_agents_file_typo_gets_a_suggestion(tmp_path):
    agents = tmp_path / "agents.yaml"
    agents.write_text("agents:\n  helper: {max_tokns_limit: 64, sampling: {temprature: 0.5}}\n")
    r = CliRunner().invoke(serve_cli, ["start", "--agent", "helper", "--config", str(agents)])
    assert r.exit_code == 1
    assert "agents.helper.max_tokns_limit: unknown key; did you mean 'max_tokens_limit'?" in r.output
    assert "agents.helper.sampling.temprature: unknown key; did you mean 'temperature'?" in r.output


def test_a_bad_port_flag_blames_the_flag_not_the_built_in_file():
    r = CliRunner().invoke(serve_cli, ["start", "--agent", "helper", "--port", "99999"])
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: --port: Input should be less than or equal to 65535 (got 99999)"
