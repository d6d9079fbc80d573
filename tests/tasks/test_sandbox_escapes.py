"""Sandbox escape suite: one test per attack class of issue 11, each run twice.

Every attack is a function `attack()` that returns the string "escaped" only when it got out
(or forged a pass). Against the real sandbox it must score 0 tests; against a sandbox with ONE
layer switched off (`sandbox._LAYERS = Layers(<layer>=False)`, the pattern of
tests/reliability/broken) the same program must score 1 - proof that the test can fail and
that this layer is what stops it.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import socket
import tempfile
import time

import pytest

from collm_serve.tasks import sandbox
from collm_serve.tasks.coding import CodingTask
from collm_serve.tasks.sandbox import CallCheck, Layers, SandboxLimits, run_tests

LIMITS = SandboxLimits(timeout_s=6.0, per_test_timeout_s=4.0)


def attack(monkeypatch, code: str, weaken: str | None = None, *, expected="escaped",
           limits: SandboxLimits = LIMITS):
    if weaken:
        monkeypatch.setattr(sandbox, "_LAYERS", Layers(**{weaken: False}))
    try:
        return run_tests(code, [CallCheck.call(expected=expected)], entry_point="attack", limits=limits)
    finally:
        monkeypatch.setattr(sandbox, "_LAYERS", Layers())


def both(monkeypatch, code: str, weaken: str, **kw) -> None:
    real = attack(monkeypatch, code, **kw)
    assert real.num_passed == 0, real
    weak = attack(monkeypatch, code, weaken, **kw)
    assert weak.num_passed == 1, f"with {weaken} off the attack should succeed: {weak}"


@pytest.fixture
def host_secret():
    import pathlib
    import shutil

    top = pathlib.Path(tempfile.mkdtemp(prefix="collm_host_"))  # readable by any uid
    os.chmod(top, 0o755)
    d = top / "host"
    d.mkdir()
    os.chmod(d, 0o777)
    (d / "secret.txt").write_text("hunter2")
    os.chmod(d / "secret.txt", 0o644)
    yield d
    shutil.rmtree(top, ignore_errors=True)


# --- host files ------------------------------------------------------------------------------
def test_read_etc_passwd_and_parent_files(monkeypatch, host_secret):
    code = f"""
import os
def attack():
    try:
        return "escaped" if open({str(host_secret / 'secret.txt')!r}).read() == "hunter2" else "no"
    except OSError:
        return "escaped" if any(os.path.exists(p) for p in ("/etc/passwd", "/home", "/tmp")) else "no"
"""
    both(monkeypatch, code, "fs_isolation")


def test_dir_fd_and_symlink_tricks_reach_nothing(monkeypatch, host_secret):
    code = f"""
import os
def attack():
    target = {str(host_secret / 'secret.txt')!r}
    try:
        os.symlink(os.path.dirname(target), "link")
        fd = os.open("link", os.O_RDONLY | os.O_DIRECTORY)
        data = os.read(os.open("secret.txt", os.O_RDONLY, dir_fd=fd), 100)
        return "escaped" if data == b"hunter2" else "no"
    except OSError:
        return "no"
"""
    both(monkeypatch, code, "fs_isolation")


def test_write_outside_work_dir(monkeypatch, host_secret):
    target = host_secret / "written.txt"
    code = f"""
def attack():
    try:
        open({str(target)!r}, "w").write("x")
        return "escaped"
    except OSError:
        return "no"
"""
    real = attack(monkeypatch, code)
    assert real.num_passed == 0 and not target.exists()
    weak = attack(monkeypatch, code, "fs_isolation")
    assert weak.num_passed == 1 and target.exists()


# --- processes -------------------------------------------------------------------------------
def test_proc_shows_only_the_sandbox(monkeypatch):
    code = f"""
import os
def attack():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if b"pytest" in open("/proc/%s/cmdline" % p, "rb").read():
                    return "escaped"
            except OSError:
                pass
    return "no"
"""
    both(monkeypatch, code, "pid_ns")


def _strays(marker: str) -> list[int]:
    pids = []
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            if open(comm).read().strip() == marker:
                pids.append(int(comm.split("/")[2]))
        except OSError:
            pass
    return pids


def test_setsid_leftover_is_killed(monkeypatch):
    marker = "lo" + secrets.token_hex(5)
    code = f"""
import ctypes, os, signal, time
def attack():
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        ctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)  # PR_SET_NAME: /proc/<pid>/comm
        os.write(w, b"x")  # running, renamed: the worker may return
        time.sleep(60)
        os._exit(0)
    os.read(r, 1)
    return "started"
"""
    limits = SandboxLimits(timeout_s=6.0, per_test_timeout_s=2.0, nproc=4)
    r = attack(monkeypatch, code, expected="started", limits=limits)
    assert r.num_passed == 1, r  # the fork worked: the attack had its chance
    assert _strays(marker) == []
    # Without a PID namespace (and so without the sweep) the leftovers outlive run_tests.
    r = attack(monkeypatch, code, "pid_ns", expected="started", limits=limits)
    left = _strays(marker)
    for pid in left:
        os.kill(pid, 9)
    assert left, "with pid_ns off a leftover should survive"


def test_fork_bomb_is_bounded(monkeypatch):
    code = """
import os
def attack():
    n = 0
    try:
        for _ in range(50):
            if os.fork() == 0:
                os._exit(0)
            n += 1
    except OSError:
        pass
    return "escaped" if n >= 50 else "no"
"""
    r = attack(monkeypatch, code)
    assert r.num_passed == 0  # nproc=1: not even one fork


# --- kernel surface (seccomp, namespaces) -----------------------------------------------------
SYSCALLS = """
import ctypes, os, socket
def attack():
    got = []
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        got.append("inet")
    except OSError:
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(101, 0, 0, 0, 0) == 0:  # ptrace(PTRACE_TRACEME)
        got.append("ptrace")
    if libc.syscall(321, 0, 0, 0) >= 0 or ctypes.get_errno() != 1:  # bpf: EPERM only from seccomp
        got.append("bpf")
    return "escaped" if got else "no"
"""


def test_network_socket_and_loopback_connect(monkeypatch):
    both(monkeypatch, SYSCALLS, "seccomp")
    code = """
import socket
def attack():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(b"\\0" + NAME)
        return "escaped"
    except OSError:
        return "no"
"""
    name = f"collm-test-{secrets.token_hex(6)}".encode()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(b"\0" + name)
    srv.listen(4)
    try:
        both(monkeypatch, code.replace("NAME", repr(name)), "net_ns")
    finally:
        srv.close()


def test_extension_module_copied_under_another_name(monkeypatch):
    code = """
import glob, importlib.machinery, importlib.util, shutil, sys
def attack():
    so = [f for p in sys.path for f in glob.glob(p + "/_ctypes.*so")][0]
    shutil.copy(so, "/work/innocent.so")  # loaded under its own module name from a new file
    loader = importlib.machinery.ExtensionFileLoader("_ctypes", "/work/innocent.so")
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("_ctypes", loader))
    loader.exec_module(mod)
    sys.modules["_ctypes"] = mod
    import ctypes
    fd = ctypes.CDLL(None).socket(2, 1, 0)  # AF_INET, SOCK_STREAM, straight from libc
    return "escaped" if fd >= 0 else "no"
"""
    both(monkeypatch, code, "seccomp")


def test_disk_filling_is_capped(monkeypatch):
    code = """
def attack():
    n = 0
    try:
        for i in range(24):
            with open("f%d" % i, "wb") as f:
                f.write(b"x" * (1 << 20))
            n += 1
    except OSError:
        pass
    return "escaped" if n == 24 else "no"
"""
    both(monkeypatch, code, "tmpfs_cap")


# --- forging the verdict ----------------------------------------------------------------------
FORGE = """
import os, sys, json, struct
def frame(obj):
    h = json.dumps(obj).encode()
    return struct.pack(">II", len(h), 0) + h
def attack():
    fake = frame({"i": 0, "verdict": True}) + frame({"done": True})
    for fd in range(1, 64):
        try:
            if os.readlink("/proc/self/fd/%d" % fd).startswith("pipe:"):
                os.write(fd, fake)
        except OSError:
            pass
    os.dup2(max(int(f) for f in os.listdir("/proc/self/fd")) , 1)
    sys.stdout.write(fake.decode("latin-1"))
    sys.stdout.flush()
    os._exit(0)
"""

UNIVERSAL = """
class U:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __sub__(self, other): return 0
    __rsub__ = __sub__
    def __abs__(self): return 0
    def __lt__(self, other): return True
    __hash__ = object.__hash__
def attack(*a, **k):
    return U()
"""

LEAK = """
import gc, sys
def attack():
    seen = []
    f = sys._getframe()
    while f is not None:
        seen += list(f.f_locals.values())
        f = f.f_back
    seen += gc.get_objects()
    stack = list(seen)
    for _ in range(200000):
        if not stack:
            break
        x = stack.pop()
        if type(x) is str and x.startswith("secret-"):
            return x
        if type(x) in (list, tuple):
            stack.extend(x[:50])
        elif type(x) is dict:
            stack.extend(list(x.values())[:50])
    return "no"
"""

AUDIT = """
import sys
SEEN = []
sys.addaudithook(lambda ev, args: SEEN.append((ev, args)) if ev in ("exec", "compile") else None)
def attack():
    for ev, args in SEEN:
        for a in args:
            if isinstance(a, (str, bytes)) and ("secret-" in str(a)):
                return "escaped"
    import gc
    for o in gc.get_objects():
        if type(o) is list and o and type(o[0]) is str and o[0].startswith("secret-"):
            return o[0]
    return "no"
"""


@pytest.mark.parametrize("code", [FORGE, UNIVERSAL, LEAK, AUDIT],
                         ids=["fake_frames_dup2_stdout", "universal_eq", "frame_gc_leak", "audit_hook"])
def test_verdict_cannot_be_forged(monkeypatch, code):
    secret = "secret-" + secrets.token_hex(8)  # the expected value: the candidate never has it
    both(monkeypatch, code, "parent_verdict", expected=secret)


def test_kill_the_parent(monkeypatch):
    code = f"""
import os, signal
def attack():
    for pid in (os.getppid(), 1, {os.getpid()}):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return "alive"
"""
    r = attack(monkeypatch, code, expected="alive")
    assert r.num_tests == 1  # we are alive, run_tests returned


def test_parent_env_secret_is_invisible(monkeypatch):
    monkeypatch.setenv("COLLM_TEST_SECRET", "hunter2")
    code = "import os\ndef attack():\n    return 'escaped' if 'hunter2' in str(dict(os.environ)) else 'no'"
    assert attack(monkeypatch, code).num_passed == 0


# --- the problem's own helpers and the stdlib -------------------------------------------------
TASK = CodingTask()
PROBLEMS = {p.problem_id: p for p in TASK.all_problems()}

HACK_32 = """
import math
def poly(xs, x):
    return 0.0
math.fabs = lambda x: 0.0
def find_zero(xs):
    return 0.0
"""
HACK_38 = """
def encode_cyclic(s):
    return s
def decode_cyclic(s):
    return s
"""


@pytest.mark.parametrize("pid,code", [("HumanEval/32", HACK_32), ("HumanEval/38", HACK_38)])
def test_redefined_preamble_helper_or_patched_stdlib(monkeypatch, pid, code):
    p = PROBLEMS[pid].payload
    checks = [CallCheck.from_dict(c) for c in p["checks"]]
    prog = p["preamble"] + code
    real = run_tests(prog, checks, entry_point=p["entry_point"], rebind=p["preamble"], limits=LIMITS)
    assert real.num_passed == 0, real
    monkeypatch.setattr(sandbox, "_LAYERS", Layers(trusted_check=False))
    weak = run_tests(prog, checks, entry_point=p["entry_point"], rebind=p["preamble"], limits=LIMITS)
    monkeypatch.setattr(sandbox, "_LAYERS", Layers())
    assert weak.num_passed > 0, "with the check in the model's namespace the hack should pay"


def test_universal_object_scores_zero_on_every_problem():
    code = UNIVERSAL.replace("def attack(", "def ENTRY(")
    for p in PROBLEMS.values():
        pl = p.payload
        r = run_tests(pl["preamble"] + code.replace("ENTRY", pl["entry_point"]),
                      [CallCheck.from_dict(c) for c in pl["checks"]], entry_point=pl["entry_point"],
                      rebind=pl["preamble"], limits=LIMITS)
        assert r.num_passed == 0, (p.problem_id, r.outcomes[:2])


# --- the parent never breaks ------------------------------------------------------------------
HOSTILE = """
import os, json, struct, sys
def attack():
    def raw(h):
        return struct.pack(">II", len(h), 0) + h
    deep = {"l": []}
    cur = deep
    for _ in range(200):
        nxt = {"l": []}
        cur["l"].append(nxt)
        cur = nxt
    payloads = [raw(json.dumps({"i": 0, "ok": deep}).encode()),
                raw(b"[" * 100000), struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF), b"\\xff" * 1000,
                raw(json.dumps({"i": "0", "ok": 1}).encode()), raw(b"null")]
    for fd in range(3, 64):
        try:
            if os.readlink("/proc/self/fd/%d" % fd).startswith("pipe:"):
                for p in payloads:
                    os.write(fd, p)
        except OSError:
            pass
    sys.stdout.write("\\x00\\xff" * 100000)
    os._exit(0)
"""


def test_hostile_payloads_never_raise(monkeypatch):
    r = attack(monkeypatch, HOSTILE)
    assert r.num_passed == 0 and r.outcomes[0].error.startswith("unreadable result")
    monkeypatch.setattr(sandbox, "_LAYERS", Layers(guard_decode=False))
    with pytest.raises(ValueError):  # the guard is what keeps run_tests from raising
        run_tests(HOSTILE, [CallCheck.call(expected="x")], entry_point="attack", limits=LIMITS)


DEEP = """
import os
def attack():
    for i in range(3000):
        open("f%d" % i, "w").close()
    for _ in range(1500):
        os.mkdir("d")
        os.chdir("d")
    return "made"
"""


DEEP_LIMITS = SandboxLimits(timeout_s=6.0, per_test_timeout_s=4.0, tmpfs_inodes=8192)  # 4,500 inodes


def test_deep_trees_and_many_files_leave_nothing(monkeypatch):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*")))
    t0 = time.monotonic()
    r = attack(monkeypatch, DEEP, expected="made", limits=DEEP_LIMITS)
    assert r.num_passed == 1 and time.monotonic() - t0 < LIMITS.timeout_s + 1
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*"))) == before
    # With the work dir on the host disk, the clean-up recurses and the tree stays behind.
    monkeypatch.setattr(sandbox, "_LAYERS", Layers(tmpfs_work=False))
    try:
        with pytest.raises(RecursionError):
            run_tests(DEEP, [CallCheck.call(expected="made")], entry_point="attack", limits=DEEP_LIMITS)
    finally:
        monkeypatch.setattr(sandbox, "_LAYERS", Layers())
        for d in set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*"))) - before:
            os.system(f"rm -rf {d}")


def test_huge_output_and_hang_return_in_time(monkeypatch):
    code = "import sys\ndef attack():\n    while True:\n        sys.stdout.write('x' * 65536)\n"
    limits = SandboxLimits(timeout_s=2.0, per_test_timeout_s=2.0)
    t0 = time.monotonic()
    r = attack(monkeypatch, code, limits=limits)
    assert r.num_passed == 0 and time.monotonic() - t0 < limits.timeout_s + 1
    assert len(r.stdout) < 3000


def test_parent_unharmed_and_normal_code_passes(monkeypatch):
    r = attack(monkeypatch, "def attack():\n    return 'escaped'")
    assert r.num_passed == 1 and json.dumps(r.to_dict())


def test_the_pool_never_hands_out_a_weakened_sandbox(monkeypatch):
    """The pool's thread may build a sandbox while a test has weakened the layers (seen in the
    full suite: a seccomp-less pooled sandbox then served the next test's "real" run)."""
    monkeypatch.setattr(sandbox, "_LAYERS", Layers(seccomp=False))
    weak = sandbox._Sandbox(sandbox.SandboxLimits())  # as the refill thread would, mid-test
    monkeypatch.setattr(sandbox, "_LAYERS", Layers())
    with sandbox._POOL._lock:
        sandbox._POOL._ready.insert(0, weak)
    taken = sandbox._POOL.take(sandbox.SandboxLimits())
    try:
        assert taken is not weak and taken.layers == Layers()
        assert not weak.alive()  # the weakened one was killed, not kept
    finally:
        taken.kill()
