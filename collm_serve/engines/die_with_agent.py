"""An engine process never outlives its agent (docs/design.md, "Engines").

vLLM runs its engine core in a child process (`VLLM::EngineCore`). When the agent is killed
with SIGKILL (OOM killer, `kill -9`, a supervisor's hard stop) nothing runs in the agent to stop
that child: it stayed alive under PID 1 holding its memory (~610 MB on CPU; on a GPU its
memory, so the restarted agent cannot start). Linux's parent-death signal closes that hole:
`prctl(PR_SET_PDEATHSIG, SIGKILL)` in the child makes the kernel kill it when its parent dies.

How it is armed:
- `VLLMEngine.start` calls `protect_children()` in the agent before vLLM starts anything: it
  records the agent's pid in `COLLM_ENGINE_PARENT_PID` (inherited by the engine processes) and
  installs an at-fork hook. vLLM's default start method on CPU is fork; a forked child inherits
  the "plugins loaded" flag, so no plugin runs in it again: the hook arms it right after fork.
- A spawned engine process (spawn method, e.g. once CUDA is initialised) arms itself in
  `register`, through the `vllm.general_plugins` entry point `collm_die_with_agent` that runs
  in every vLLM process (pyproject.toml).
- Armed processes point the variable at themselves, so their own workers die with them.
A process without the variable (any other vLLM user of this environment) is left alone.
Tested by tests/reliability/test_engine_orphans.py (kill -9 of the agent; and the same test
failing with arming switched off, COLLM_BREAK=orphan_engine).

The signal fires when the *thread* that forked the child ends, not only the process: vLLM
starts the engine from `asyncio.to_thread`'s executor, whose idle threads live until the event
loop closes, after `engine.shutdown()`. After arming, the child checks that its parent is still
the expected one, so an agent killed between fork and prctl does not leave an orphan either.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "COLLM_ENGINE_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_prctl = None
_protecting: int | None = None  # pid whose forked children must die with it
_armed_in: int | None = None  # pid of this process once armed
_hooked = False


def _load_prctl():
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before any fork, not in the child
    return _prctl


def _arm(expected_parent: int) -> None:
    """Die with `expected_parent`: parent-death SIGKILL, then make sure it is still alive."""
    global _armed_in
    pid = os.getpid()
    if _armed_in == pid:
        return
    prctl = _load_prctl()
    if prctl is None:  # not Linux: nothing to arm (the agent's SIGTERM path still stops it)
        return
    if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != expected_parent:  # the parent died before the signal was armed
        os.kill(pid, signal.SIGKILL)
    _armed_in = pid
    protect_children()  # this process's own children die with it in turn


def _after_fork_in_child() -> None:
    if _protecting is not None:
        _arm(_protecting)


def protect_children() -> None:
    """Before starting engine processes: every child forked or spawned (through vLLM's plugin
    hook) from now on dies with this process. Idempotent."""
    global _protecting, _hooked
    _load_prctl()
    _protecting = os.getpid()
    os.environ[ENV] = str(_protecting)
    if not _hooked:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _hooked = True


def register() -> None:
    """vLLM general-plugin hook (entry point `collm_die_with_agent`): arms a spawned engine
    process of a CoLLM agent; idempotent, and nothing for any other process."""
    value = os.environ.get(ENV, "")
    if value.isdigit() and int(value) != os.getpid():
        _arm(int(value))
