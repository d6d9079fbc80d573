"""`collm-traces` via CliRunner, plus one subprocess smoke test of the real entry point."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collm_serve.traces.cli import cli
from collm_serve.traces.store import TraceStore
from tests.traces.helpers import write_branching, write_linear

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "traces.db"
    with TraceStore(path) as s:
        ep = write_branching(s, final_return=1.5, version=3)
        write_linear(s, 2, 0.5, version=4)
        write_linear(s, 1, None, status="failed", task="writing")
    return path, ep


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for f in fragments:
        assert f in lines[0]


def table_rows(text):
    """Rich table body rows as lists of stripped cells."""
    return [
        [c.strip() for c in ln.strip("│").split("│")]
        for ln in text.splitlines()
        if ln.startswith("│")
    ]


def test_stats(db):
    path, _ = db
    r = run("stats", path)
    assert r.exit_code == 0, r.output
    assert "3 episodes (ok 2, failed 1, running 0), 9 turns, 18 actions, schema v1" in r.stdout
    assert table_rows(r.stdout) == [
        ["coding", "2", "0", "0", "8", "1"],
        ["writing", "0", "1", "0", "1", "-"],
        ["helper", "helper", "3", "1", "6", "1.5"],
        ["helper", "helper", "4", "1", "2", "0.5"],
        ["main", "main", "3", "1", "6", "1.5"],
        ["main", "main", "4", "1", "2", "0.5"],
    ]


def test_stats_json(db):
    path, _ = db
    r = run("stats", path, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["episodes"] == {"ok": 2, "failed": 1, "running": 0} and (s["turns"], s["actions"]) == (9, 18)
    assert [(a["agent"], a["adapter_version"], a["mean_return"]) for a in s["by_adapter"]] == [
        ("helper", 3, 1.5), ("helper", 4, 0.5), ("main", 3, 1.5), ("main", 4, 0.5)]


def test_list(db):
    path, ep = db
    r = run("list", path, "--json")
    assert r.exit_code == 0, r.output
    heads = json.loads(r.stdout)
    assert [(h["task"], h["status"], h["final_return"], h["turns"]) for h in heads] == [
        ("writing", "failed", None, 1), ("coding", "ok", 0.5, 2), ("coding", "ok", 1.5, 6)]  # newest first
    assert heads[-1]["episode_id"] == ep.episode_id and heads[0]["failure_reason"] == "boom"
    assert all(isinstance(h["created_at"], float) for h in heads)
    r = run("list", path, "--task", "coding", "--status", "ok", "--limit", "1", "--json")
    assert [h["final_return"] for h in json.loads(r.stdout)] == [0.5]
    r = run("list", path, "--since", "2999-01-01", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []
    r = run("list", path, "--split", "train")
    assert r.exit_code == 0, r.output
    rows = table_rows(r.stdout)
    assert [row[0] for row in rows] == [h["episode_id"] for h in heads]
    assert rows[0][4] == "failed: boom" and rows[2][5:7] == ["1.5", "6"]
    r = run("list", path, "--since", "last week")
    assert r.exit_code == 2 and "--since" in r.output and "ISO time" in r.output


def test_show(db):
    path, ep = db
    r = run("show", path, ep.episode_id)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert ep.episode_id in out and "status ok" in out and "final return 1.5" in out
    assert "agent helper" in out and "agent main" in out
    assert "helper@v3" in out and "main@v3" in out
    assert "def helper_0(): return 0" in out and "feedback for main after 5" in out
    assert "[user] problem 0 [not rich markup] :smile:" in out  # printed literally
    assert out.count("turn 1  branch 1") == 4  # 2 subtrees x 2 agents
    only = run("show", path, ep.episode_id, "--agent", "main")
    assert only.exit_code == 0 and "agent helper" not in only.stdout
    assert_one_line_error(run("show", path, ep.episode_id, "--agent", "x"), "no agent 'x'")


def test_export(db, tmp_path):
    path, _ = db
    out = tmp_path / "t.jsonl"
    r = run("export", path, "--format", "jsonl", "--out", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"wrote 16 rows to {out}"
    assert len(out.read_text().splitlines()) == 16
    r = run(
        "export",
        path,
        "--format",
        "parquet",
        "--out",
        tmp_path / "t.parquet",
        "--status",
        "all",
        "--task",
        "writing",
    )
    assert r.exit_code == 0 and "wrote 2 rows" in r.stdout, r.output
    r = run("export", path, "--format", "csv", "--out", out)
    assert r.exit_code == 2  # click usage error


def test_bad_inputs_one_line(db, tmp_path):
    path, _ = db
    assert_one_line_error(run("stats", tmp_path / "missing.db"), "missing.db", "no such")
    assert not (tmp_path / "missing.db").exists()
    assert_one_line_error(run("show", path, "nope"), "no episode 'nope'")
    assert_one_line_error(run("stats", "mysql://h/db"), "unsupported", "mysql")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    assert_one_line_error(run("stats", path), "version 7 is newer", "version 1")
    assert_one_line_error(
        run("export", path, "--format", "jsonl", "--out", tmp_path / "x.jsonl"), "version 7"
    )


def test_entry_point_subprocess(db, tmp_path):
    path, _ = db
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "collm_serve.traces.cli"]
    ok = subprocess.run(
        [*cmd, "stats", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "3 episodes" in ok.stdout and "coding" in ok.stdout
    bad = subprocess.run(
        [*cmd, "show", str(path), "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f"Error: no episode 'nope' in {path}"]
    assert "Traceback" not in bad.stderr
