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


def test_online_with_every_iteration_skipped_fails(tmp_path, dead_ports):
    team = toy_team(tmp_path, [f"127.0.0.1:{p}" for p in dead_ports])
    r = cli("collm_train", "online", "--team", str(team), "--model", "embedded:tiny-llama", "--iterations", "2",
            "--episodes-per-iteration", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "adapters"),
            timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "all 2 iteration(s) skipped: no episode completed, nothing was trained" in r.stderr
    assert "fix: start the agent (collm-serve start --agent" in out  # the reason of each skipped iteration
    assert "Traceback" not in out


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
