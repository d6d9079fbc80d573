"""The sandbox may not take the host's memory, and nothing the child does may stall the parent
(issue 27, items 1, 2 and 5). One test per guard, each run twice: against the real sandbox it
holds; with THAT guard switched off (`sandbox._LAYERS = Layers(<guard>=False)`, the escape
suite's pattern) the same attack gets through - proof the test can fail and that this guard is
what stops it. Assertions read the parent's own accounting (`SandboxResult.parent_read`,
`killed_reason`), not tight timings: this runs on a loaded 2-core box.
"""

from __future__ import annotations

import pytest

from collm_serve.tasks import sandbox
from collm_serve.tasks.sandbox import RETURN_GRACE_S, CallCheck, Layers, SandboxLimits, run_tests
from collm_serve.tasks.sandbox_launch import STREAM_CAP

LIMITS = SandboxLimits(timeout_s=6.0, per_test_timeout_s=3.0)
CHUNK = 1 << 16  # one read of the parent: what a stream may overshoot its cap by


def run(monkeypatch, code: str, calls: list, weaken: str | None = None, limits: SandboxLimits = LIMITS):
    """`attack(*args)` for each args in `calls`, each expected to return "escaped"."""
    monkeypatch.setattr(sandbox, "_LAYERS", Layers(**{weaken: False}) if weaken else Layers())
    try:
        return run_tests(code, [CallCheck.call(*a, expected="escaped") for a in calls], entry_point="attack",
                         limits=limits)
    finally:
        monkeypatch.setattr(sandbox, "_LAYERS", Layers())


def within_the_contract(r, limits: SandboxLimits = LIMITS) -> None:
    # generous: only a run that ignored its deadline fails this on a loaded box
    assert r.duration_s < limits.timeout_s + RETURN_GRACE_S + 3.0, r.duration_s


# --- 1. every writable place capped, or read-only ------------------------------------------------
MOUNTS = """
import os
CAP_BYTES, CAP_INODES = %d, %d
def places():
    seen = ["/", "/dev", "/dev/shm", "/work", "/sbx", "/tmp", "/proc"]
    for line in open("/proc/self/mountinfo"):
        p = line.split()[4]
        if p not in seen and os.path.isdir(p):
            seen.append(p)
    return seen
def attack(mode):
    over = []
    for p in places():
        d = os.path.join(p, "flood%%d" %% os.getpid())
        try:
            os.mkdir(d)
        except OSError:
            continue
        n = 0
        try:
            if mode == "bytes":  # 1 MiB files (RLIMIT_FSIZE is per file)
                while n <= CAP_BYTES:
                    with open(os.path.join(d, "b%%d" %% n), "wb") as f:
                        f.write(b"x" * (1 << 20))
                    n += 1 << 20
            else:
                while n <= CAP_INODES:
                    os.close(os.open(os.path.join(d, "i%%d" %% n), os.O_CREAT | os.O_WRONLY))
                    n += 1
        except OSError:
            pass
        if n > (CAP_BYTES if mode == "bytes" else CAP_INODES):
            over.append(p)
    return "escaped" if over else "held"
""" % (LIMITS.tmpfs_bytes, LIMITS.tmpfs_inodes)


def test_every_writable_mount_is_capped_in_bytes_and_inodes(monkeypatch):
    """Every mount point in the sandbox (the root, /dev and /dev/shm, /work, the tmpfs hiding
    site-packages, whatever mountinfo lists) takes at most the work dir's caps: bytes
    (`tmpfs_bytes`) and inodes (`tmpfs_inodes`). Without the read-only remounts the root and
    /dev take more than the cap; without the inode cap the work dir takes any number of files."""
    r = run(monkeypatch, MOUNTS, [("bytes",), ("inodes",)])
    assert r.num_passed == 0, r
    assert r.outcomes[1].error == "no result (inode_limit)", r.outcomes[1]  # /work's cap hit
    within_the_contract(r)
    weak = run(monkeypatch, MOUNTS, [("bytes",)], "ro_mounts")
    assert weak.num_passed == 1, f"with ro_mounts off a mount should take more than the cap: {weak}"
    weak = run(monkeypatch, MOUNTS, [("inodes",)], "inode_cap")
    assert weak.num_passed == 1, f"with inode_cap off /work should take more inodes than the cap: {weak}"


SHARED_MEMORY = """
import ctypes, os
def attack(kind):
    libc = ctypes.CDLL(None, use_errno=True)
    if kind == "sysv":  # 64 MiB segments outlive the worker, until the run's IPC namespace ends
        libc.shmat.restype, libc.shmat.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        sid = libc.shmget(0, 64 << 20, 0o1600)
        if sid < 0:
            return "held"
        ctypes.memset(libc.shmat(sid, None, 0), 1, 64 << 20)
        return "escaped"
    if kind == "msg":
        return "escaped" if libc.msgget(0, 0o1600) >= 0 else "held"
    try:
        os.memfd_create("x")
    except OSError:
        return "held"
    return "escaped"
"""


def test_host_shared_memory_outside_the_mounts_is_denied(monkeypatch):
    """SysV shared memory and message queues, and memory-backed files, would put host memory
    out of every mount's cap (a SysV segment outlives the worker that made it): the seccomp
    filter denies them; without the filter each one works."""
    calls = [("sysv",), ("msg",), ("memfd",)]
    r = run(monkeypatch, SHARED_MEMORY, calls)
    assert r.num_passed == 0, r
    weak = run(monkeypatch, SHARED_MEMORY, calls, "seccomp")
    assert weak.num_passed == 3, f"without seccomp each should work: {weak}"


# --- 2. a budget on what the parent reads ---------------------------------------------------------
FLOOD_RECORDS = """
import json, os, struct
def frame(obj):
    h = json.dumps(obj, separators=(",", ":")).encode()
    return struct.pack(">II", len(h), 0) + h
def attack(k):
    for fd in range(3, 64):  # the worker's result pipe
        try:
            if os.readlink("/proc/self/fd/%%d" %% fd).startswith("pipe:"):
                break
        except OSError:
            pass
    if k %% 2:  # one big value per frame: memory and decode time in the parent
        blob = frame({"i": 0, "ok": {"l": [0] * %d}})
    else:  # many tiny frames: one json.loads each
        blob = frame({"i": 7}) * 20000
    try:
        while True:
            os.write(fd, blob)
    except OSError:
        pass
    return "escaped"
"""


def test_a_record_flood_costs_the_parent_its_budget_only(monkeypatch):
    """12 tests whose workers each fill their 1 MiB result allowance with junk frames or one
    huge value: the parent reads at most `read_bytes`, decodes at most `read_nodes` values and
    (calls + 2) frames per test, and returns on time. Without the budget it reads ~12 MiB and
    decodes millions of values."""
    limits = SandboxLimits(timeout_s=8.0, per_test_timeout_s=2.0)
    code = FLOOD_RECORDS % (limits.result_bytes // 3)
    calls = [(k,) for k in range(12)]
    r = run(monkeypatch, code, calls, limits=limits)
    read = r.parent_read
    assert read["results"] <= limits.read_bytes + CHUNK, read
    assert read["values"] <= limits.read_nodes + 1 and read["frames"] <= 3 * len(calls), read
    within_the_contract(r, limits)
    weak = run(monkeypatch, code, calls, "record_budget", limits=limits).parent_read
    assert weak["results"] > limits.read_bytes + CHUNK, f"without the budget the parent reads more: {weak}"


FLOOD_STREAMS = """
import os
def attack(k):
    data = b"x" * 65536
    while True:
        try:
            os.write(1 + k, data)
        except OSError:
            pass
"""


def test_a_stdout_or_stderr_flood_is_read_up_to_its_cap_only(monkeypatch):
    """A worker that writes to stdout (then stderr) until its time is up: the parent reads each
    stream up to STREAM_CAP and closes it (the writer gets EPIPE) - one chunk past the cap at
    most, instead of a read loop until the deadline. Without the guard it reads everything."""
    limits = SandboxLimits(timeout_s=6.0, per_test_timeout_s=2.0)
    r = run(monkeypatch, FLOOD_STREAMS, [(0,), (1,)], limits=limits)
    read = r.parent_read
    assert read["stdout"] <= STREAM_CAP + CHUNK and read["stderr"] <= STREAM_CAP + CHUNK, read
    assert len(r.stdout) < 3000 and len(r.stderr) < 3000
    within_the_contract(r, limits)
    weak = run(monkeypatch, FLOOD_STREAMS, [(0,), (1,)], "stream_budget", limits=limits).parent_read
    assert weak["stdout"] > 4 * STREAM_CAP, f"without the guard the parent reads the whole flood: {weak}"


def test_chatty_honest_code_keeps_its_verdict(monkeypatch):
    """Past the cap the harness drops a worker's output inside the sandbox: code that prints
    2 MiB still returns its value (it is not cut off by EPIPE), and the parent reads one cap."""
    code = "def attack(k):\n    for i in range(32768):\n        print('x' * 63)\n    return 'escaped'\n"
    r = run(monkeypatch, code, [(0,), (1,)])
    assert r.num_passed == 2, r
    assert r.parent_read["stdout"] <= STREAM_CAP and r.stdout.startswith("x" * 63), r.parent_read


# --- a stopped or signalled harness ---------------------------------------------------------------
STOP = """
import os, signal, time
def attack(sig):
    os.kill(os.getppid(), sig)
    time.sleep(30)
    return "escaped"
"""


def test_a_stopped_harness_ends_the_run_early(monkeypatch):
    """A worker stops its harness (same uid, same namespace): the parent sees it (state T) within
    0.1 s and ends the run - instead of waiting out the whole timeout (700x an honest run in the
    issue). Without the watch the run lasts until the deadline."""
    import signal

    r = run(monkeypatch, STOP, [(int(signal.SIGSTOP),), (0,)])
    assert r.killed_reason == "harness_stopped" and not r.timed_out, r
    assert r.duration_s < LIMITS.timeout_s, r.duration_s
    weak = run(monkeypatch, STOP, [(int(signal.SIGSTOP),), (0,)], "stop_watch")
    assert weak.killed_reason == "wall_timeout" and weak.timed_out, weak


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM", "SIGSEGV"])
def test_a_signalled_harness_ends_the_run_early(monkeypatch, sig):
    """A harness killed by its worker takes the namespace with it: its pipes close and the
    parent returns at once, scoring nothing."""
    import signal

    r = run(monkeypatch, STOP, [(int(getattr(signal, sig)),)])
    assert r.num_passed == 0 and not r.timed_out and r.duration_s < LIMITS.timeout_s, r
    assert r.killed_reason == "harness_died", r
