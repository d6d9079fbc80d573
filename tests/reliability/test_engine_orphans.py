"""A crashed agent leaves nothing behind: after `kill -9` of the agent its engine processes die
too (collm_serve/engines/die_with_agent.py), and without the arming they would survive.

The processes are found as the killed process's children BEFORE the kill (afterwards they
belong to PID 1), and every wait is on observed /proc state with a bound: no fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_agent
from tests.reliability.helpers import broken_env

GONE_WITHIN_S = 20.0  # the kernel sends the signal at once; the bound only absorbs a busy CI box


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/<pid>/stat, None once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie has already died


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def survivors(pids: list[int], timeout: float = GONE_WITHIN_S) -> list[int]:
    """The pids still alive after waiting up to `timeout` for all of them to die."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_all(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- the mechanism, with plain multiprocessing children (fast) -----------------------------------

PARENT = """
import multiprocessing, os, sys, time
from collm_serve.engines import die_with_agent

def engine():
    die_with_agent.register()  # what vLLM's plugin hook does in every engine process
    print("ready", os.getpid(), flush=True)
    time.sleep(600)

if __name__ == "__main__":
    method, armed = sys.argv[1], sys.argv[2] == "armed"
    if armed:
        die_with_agent.protect_children()  # what VLLMEngine.start does in the agent
    multiprocessing.get_context(method).Process(target=engine).start()
    time.sleep(600)
"""


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("armed", ["armed", "unarmed"])
def test_children_die_with_a_killed_parent(tmp_path, method, armed):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    repo = str(Path(__file__).resolve().parents[2])
    parent = subprocess.Popen([sys.executable, str(script), method, armed], stdout=subprocess.PIPE, text=True,
                              start_new_session=True, env={**os.environ, "PYTHONPATH": repo})
    child = None
    try:
        word, pid = parent.stdout.readline().split()  # the child runs (and armed itself if it does)
        child = int(pid)
        assert word == "ready" and child in children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=GONE_WITHIN_S)
        if armed == "armed":
            assert survivors([child]) == [], f"child {child} outlived its SIGKILLed parent"
        else:  # the check can fail: without the arming the child stays alive, re-parented
            assert survivors([child], timeout=0) == [child]
    finally:
        kill_all([child] if child else [])
        parent.kill()
        parent.wait()


# -- the real thing: a vLLM agent's VLLM::EngineCore ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arming", ["on", "broken"])
def test_kill9_agent_takes_its_vllm_engine_along(tmp_path, monkeypatch, arming):
    if arming == "broken":
        for key, value in broken_env("orphan_engine").items():
            monkeypatch.setenv(key, value)
    agent = start_agent(tmp_path, "main", engine="vllm", model="embedded:tiny-llama", max_model_len=256,
                        max_prompt_tokens=128, kv_cache_bytes=32 << 20, keep_versions=1, cpu_threads=None)
    engines: list[int] = []
    try:
        engines = [p for p in children(agent.proc.pid) if "EngineCore" in cmdline(p)]
        assert engines, (f"no VLLM::EngineCore child of agent {agent.proc.pid}: "
                         f"{[cmdline(p) for p in children(agent.proc.pid)]}")
        os.kill(agent.proc.pid, signal.SIGKILL)  # the agent only, not its process group
        agent.proc.wait(timeout=GONE_WITHIN_S)
        if arming == "on":
            left = survivors(engines)
            assert left == [], f"engine process(es) {left} outlived the killed agent: {[cmdline(p) for p in left]}"
        else:  # the test can fail: without the arming the engine stays, re-parented
            assert survivors(engines, timeout=0) == engines
    finally:
        kill_all(engines)
        agent.kill()
