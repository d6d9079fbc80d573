"""bench/run_all.py: one results file holds one machine, and --only adds to it.

A real (tiny) benchmark script runs in its own process through the runner; only the folder
it is discovered in is a temporary one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import run_all

FAKE = '''
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from bench.common import print_table
print_table("fake", [("speed ÷ baseline", "{value}", "a ratio")])
'''


@pytest.fixture
def bench_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    for name, value in (("alpha", "1.50"), ("beta", "0.90")):
        (d / f"{name}.py").write_text(FAKE.format(repo=str(run_all.REPO), value=value))
    monkeypatch.setattr(run_all, "BENCH", d)
    monkeypatch.setattr(run_all, "EXPECTED", ["alpha", "beta"])
    return d


def test_full_run_writes_rows_with_the_cpu_model(bench_dir, tmp_path):
    out = tmp_path / "latest.md"
    assert run_all.main(["--out", str(out)]) == 0
    text = out.read_text()
    cpu = run_all.cpu_model()
    assert f"| alpha | speed ÷ baseline | 1.50 | a ratio | {cpu} |" in text
    assert f"| beta | speed ÷ baseline | 0.90 | a ratio | {cpu} |" in text
    assert json.loads(out.with_suffix(".json").read_text())["cpu"] == cpu


def test_only_adds_to_a_file_of_the_same_machine(bench_dir, tmp_path):
    out = tmp_path / "latest.md"
    assert run_all.main(["--out", str(out), "--only", "alpha"]) == 0
    (bench_dir / "beta.py").write_text(FAKE.format(repo=str(run_all.REPO), value="0.95"))
    assert run_all.main(["--out", str(out), "--only", "beta"]) == 0
    text = out.read_text()
    assert "| alpha | speed ÷ baseline | 1.50 |" in text  # kept from the first run
    assert "| beta | speed ÷ baseline | 0.95 |" in text


def test_refuses_to_mix_machines_in_one_file(bench_dir, tmp_path, capsys):
    out = tmp_path / "latest.md"
    out.write_text("measured elsewhere\n")
    out.with_suffix(".json").write_text(json.dumps({"cpu": "Some Other CPU, 64 cores, no GPU", "results": {}}))
    assert run_all.main(["--out", str(out), "--only", "alpha"]) == 2
    assert "one machine" in capsys.readouterr().err
    assert out.read_text() == "measured elsewhere\n"  # nothing written


def test_studies_run_only_when_named(bench_dir, monkeypatch):
    (bench_dir / "study.py").write_text("raise SystemExit(1)")
    monkeypatch.setattr(run_all, "STUDIES", {"study"})
    assert "study" not in run_all.discover()


def test_only_takes_commas_and_refuses_unknown_names(bench_dir, tmp_path, capsys):
    out = tmp_path / "latest.md"
    assert run_all.main(["--out", str(out), "--only", "alpha,beta"]) == 0
    assert "alpha" in out.read_text() and "beta" in out.read_text()
    with pytest.raises(SystemExit) as e:  # a typo used to be skipped with a note, the run "passing"
        run_all.main(["--out", str(out), "--only", "alpha,gamma"])
    assert e.value.code == 2 and "--only: no benchmark named gamma" in capsys.readouterr().err


HANGS = """
import subprocess, sys, time
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
Path({pid_file!r}).write_text(str(child.pid))
time.sleep(300)
"""


def test_a_timed_out_benchmark_leaves_no_process_behind(tmp_path, monkeypatch):
    """bench/peer.py runs its trainers in worker processes; when the runner's time is up, the
    workers must stop with the benchmark (with a plain kill of the benchmark, one trained on
    for 20 minutes and died on a broken pipe)."""
    import os
    import time

    d = tmp_path / "bench"
    d.mkdir()
    pid_file = tmp_path / "worker.pid"
    (d / "hangs.py").write_text(HANGS.format(pid_file=str(pid_file)))
    monkeypatch.setattr(run_all, "BENCH", d)
    result = run_all.run_one("hangs", quick=False, timeout=5)
    assert result["status"] == "timed out after 5 s"
    worker = int(pid_file.read_text())

    def running() -> bool:  # an orphan's zombie waits for init to reap it: it runs nothing
        try:
            return Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (FileNotFoundError, ProcessLookupError):
            return False

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not running():
            break
        time.sleep(0.05)
    else:
        os.kill(worker, 9)
        pytest.fail("the benchmark's worker process outlived the timeout")


def test_peer_gets_the_time_its_default_run_needs():
    assert run_all.timeout_of("peer", None) >= 2 * 3600  # N = 8 and 32 took ~85 min on 2 cores
    assert run_all.timeout_of("hot_swap", None) == 3600
    assert run_all.timeout_of("peer", 60.0) == 60.0  # --timeout wins
