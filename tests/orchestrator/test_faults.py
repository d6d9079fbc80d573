"""Faults with real processes: a dead agent address, an agent killed mid-run, the collector
killed (-9) or interrupted (SIGINT) mid-run. The store must stay consistent every time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collm_serve.orchestrator import collect, plan_episodes
from collm_serve.orchestrator.teams import build_task
from collm_serve.traces import TraceStore
from tests.orchestrator.conftest import REPO, agent_process, make_team, start_all, write_team


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(path) -> bool:
    """The writer created the store and switched it to WAL (the -wal file exists): from then
    on a reader cannot make its set-up fail with "database is locked"."""
    return Path(f"{path}-wal").exists()


def status_counts(path) -> dict[str, int]:
    """Episodes by status, read-only: polling must not race the writer that creates the file
    (opening a TraceStore may create the schema or switch the journal to WAL)."""
    counts = {"running": 0, "ok": 0, "failed": 0}
    if not _ready(path):
        return counts
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        counts.update(conn.execute("SELECT status, COUNT(*) FROM episodes GROUP BY status").fetchall())
    except sqlite3.OperationalError:  # no schema yet
        pass
    finally:
        conn.close()
    return counts


def stored_counts(path) -> dict[str, int]:
    """Episodes by status once no collector runs (the WAL may be checkpointed away by then)."""
    with TraceStore(path, create=False) as store:
        return store.stats()["episodes"]


def running_turns(path) -> list[int]:
    """Turns stored so far by each running episode (read-only)."""
    if not _ready(path):
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [n for (n,) in conn.execute(
            "SELECT (SELECT COUNT(*) FROM turns t WHERE t.episode_id = e.episode_id) "
            "FROM episodes e WHERE e.status = 'running'")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"collector exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def collector(team_file: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "collm_serve", "collect", "--team", str(team_file), "--no-progress", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def assert_complete_chains(path, task: str, num_turns: int) -> list:
    """Every ok episode has its whole chain; returns them."""
    with TraceStore(path, create=False) as store:
        assert store.integrity_check() == "ok"
        eps = list(store.iter_episodes(task=task))
    for ep in eps:
        assert [t.turn_index for t in ep.turns] == list(range(num_turns))
        assert [t.parent_turn_id for t in ep.turns] == [None] + [t.turn_id for t in ep.turns[:-1]]
        assert ep.turns[-1].done and ep.final_return == pytest.approx(sum(t.reward for t in ep.turns))
    return eps


async def test_unreachable_agent_is_retried_then_stored_failed(agents, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    team = make_team("toy", [agents[0].address, dead], tmp_path / "t.db",
                     retry={"attempts": 3, "backoff_s": 0.05})
    summary = await collect(team, 2, "train")
    assert (summary.ok, summary.failed) == (0, 2)
    for f in summary.failures:
        assert f.reason.startswith(f"agent main ({dead}): UNAVAILABLE after 3 attempts")
    with TraceStore(team.traces, create=False) as store:
        eps = list(store.iter_episodes(status=None))
        assert [(e.status, e.failure_reason) for e in eps] == [("failed", f.reason) for f in summary.failures]
        assert all(not e.turns for e in eps) and store.completed_keys("toy", "train") == set()


async def test_agent_killed_mid_run_then_restarted(agents, tmp_path):
    """kill -9 one agent while episodes run: failed episodes with the reason, none left running;
    then the agent is back on another port (a new team config) and resume completes the plan.
    The shared session service `main` plays the restarted one: to the orchestrator it is just
    that, a new process at a new address (and the test saves an agent start-up)."""
    (main,) = start_all([agent_process(tmp_path, "main")])
    try:
        team = make_team("toy", [agents[0].address, main.address], tmp_path / "t.db")
        run = asyncio.create_task(collect(team, 8, "train", concurrency=1))
        await asyncio.to_thread(wait_for, lambda: status_counts(team.traces)["ok"] >= 2, 120, "two ok episodes")
        main.kill()
        summary = await asyncio.wait_for(run, 120)
    finally:
        main.kill()
    assert summary.ok >= 2 and summary.failed >= 1 and summary.ok + summary.failed == 8
    assert all(f.reason.startswith(f"agent main ({main.address}):") for f in summary.failures)
    assert stored_counts(team.traces)["running"] == 0

    restarted = agents[1]
    assert restarted.address != main.address
    team2 = make_team("toy", [agents[0].address, restarted.address], tmp_path / "t.db")
    resumed = await collect(team2, 8, "train", resume=True)
    assert (resumed.skipped, resumed.ok, resumed.failed) == (summary.ok, 8 - summary.ok, 0)
    planned = {p.key for p in plan_episodes(build_task(team), "train", 8, team.seed)}
    with TraceStore(team.traces, create=False) as store:
        assert store.completed_keys("toy", "train") == planned
    assert_complete_chains(team.traces, "toy", 1)


def test_collector_killed_mid_episode_then_resumed(agents, tmp_path):
    team = make_team("coding", [p.address for p in agents], tmp_path / "t.db")
    team_file = write_team(tmp_path / "team.yaml", team)
    db = tmp_path / "t.db"

    def mid_episode() -> bool:  # one episode ok and the next one half-written (turn 0 stored)
        return status_counts(db)["ok"] >= 1 and 1 in running_turns(db)

    proc = collector(team_file, "--episodes", "4", "--concurrency", "1")
    try:
        wait_for(mid_episode, 120, "an ok episode and a half-written one", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ok_before = assert_complete_chains(db, "coding", 2)
    counts = stored_counts(db)
    assert counts["running"] == 1 and counts["ok"] == len(ok_before)
    with TraceStore(db, create=False) as store:
        assert store.completed_keys("coding", "train") == {(e.problem_id, e.seed) for e in ok_before}

    proc = collector(team_file, "--episodes", "4", "--concurrency", "1", "--resume", "--json")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["marked_interrupted"] == 1 and summary["skipped"] == len(ok_before)
    assert summary["ok"] == 4 - len(ok_before) and summary["failed"] == 0
    eps = assert_complete_chains(db, "coding", 2)
    assert {e.episode_id for e in ok_before} <= {e.episode_id for e in eps}  # intact, untouched
    with TraceStore(db, create=False) as store:
        planned = {p.key for p in plan_episodes(build_task(team), "train", 4, team.seed)}
        assert store.completed_keys("coding", "train") == planned
        (interrupted,) = store.iter_episodes(status="failed")
        assert interrupted.failure_reason == "interrupted" and len(interrupted.turns) == 1


def test_sigint_stops_the_collector_cleanly(agents, tmp_path):
    team = make_team("toy", [p.address for p in agents], tmp_path / "t.db")
    team_file = write_team(tmp_path / "team.yaml", team)
    db = tmp_path / "t.db"
    proc = collector(team_file, "--episodes", "200", "--concurrency", "2")
    try:
        wait_for(lambda: status_counts(db)["ok"] >= 1, 120, "an ok episode", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "continue with --resume" in err
    counts = stored_counts(db)
    assert counts["running"] == 0 and 1 <= counts["ok"] < 200
    assert_complete_chains(db, "toy", 1)
