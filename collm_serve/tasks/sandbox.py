"""Run untrusted, model-written Python against test snippets in a child process.

Nothing here ever `exec`s model code in the calling process. `run_tests` writes nothing the
child can read back except its own working directory, starts ONE child interpreter per call,
and reads per-test verdicts from it. It is a plain, thread-safe, synchronous function: the
orchestrator calls it from an executor.

Layers (outermost first). Which kernel layers are active is probed once, on first use, and
reported by `sandbox_isolation()`:

1. Launcher (kernel). Preferred, when running as root: `unshare --net --pid --fork
   --kill-child --setuid 65534 --setgid 65534` -> a new network namespace (no interface but a
   downed loopback: nothing, not even 127.0.0.1, is reachable), a new PID namespace (the parent
   and every other host process are invisible; when the child's init dies the kernel kills every
   process it left behind) and uid/gid `nobody` (no capabilities, cannot write files owned by
   root, `RLIMIT_NPROC` counts against it). The interpreter must be executable by `nobody`:
   `sys.executable` under `/root` is not, so the probe falls back to a system interpreter (any
   CPython >= 3.8; `COLLM_SANDBOX_PYTHON` picks one). Fallbacks, in order: the same as root (no
   uid drop: `RLIMIT_NPROC` is ignored for root; the audit hook and the PID namespace are then
   what stop forks), `unshare --map-root-user` (non-root with user namespaces), and finally a
   plain child process (network guarded by the audit hook only).
2. Process (kernel). New session (`start_new_session`) so the whole process group is killed
   with SIGKILL on the wall-clock deadline and after every run; `close_fds`; an environment of
   only PATH, HOME, TMPDIR (both = the work dir) and LANG; cwd = a fresh work dir, deleted
   afterwards; stdin/stdout/stderr are files in a root-only directory, stdout/stderr opened
   write-only so the child cannot read back what it wrote. Resource limits set by the harness
   before any model code runs: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC
   (default 1 = no new processes or threads for a non-root uid), RLIMIT_NOFILE, RLIMIT_CORE=0.
3. Interpreter (`python -I -S -B`, then a `sys.addaudithook` hook that model code cannot remove).
   Refused: any `socket.*` event; `os.system`, `os.exec*`, `os.spawn*`, `os.posix_spawn`,
   `os.fork`, `os.forkpty`, `subprocess.Popen`; `os.kill`/`os.killpg`; every `ctypes.*` event;
   imports of ctypes/_ctypes/_posixsubprocess/_socket/_ssl/_testcapi/... (also when loaded by
   file path); `resource.setrlimit`/`prlimit`; opening files outside the work dir (reading is also
   allowed for files under the interpreter's stdlib dirs and a few /dev nodes; directories
   outside the work dir cannot be opened, and `os.chdir` is refused, so `dir_fd` tricks cannot
   escape); path-changing `os.*` calls outside the work dir; frame/GC introspection
   (`sys._getframe`, `tb_frame`, `gi_frame`, `sys.settrace`, `gc.get_objects`...) so model code
   cannot reach the harness's state. The hook and the verdict path only use references bound
   before model code runs (and resolve paths with their own realpath on os.lstat/readlink), so
   rebinding builtins or patching os/posixpath from model code changes neither.

Verdicts. Each test snippet runs separately (its own copy of the namespace, its own SIGALRM
timer; it sees pristine builtins, and globals that shadow a builtin are left out), so the
pass fraction is measurable even when one test hangs. The harness reports each
verdict as a line prefixed by a random nonce it read from stdin (stdin is then replaced by
/dev/null); model code that prints fake verdicts, exits early (`os._exit(0)`) or crashes the
interpreter only loses the verdicts not yet reported: a test without a verdict failed. What this
does NOT stop: a candidate returning an object whose `__eq__` is always True (an inherent
weakness of assert-based tests), and CPU-time side channels. Reading world-readable files
(e.g. /etc/passwd) and writing world-writable ones (/tmp) are refused by the audit hook only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

__all__ = [
    "NETWORK_AUDIT_HOOK",
    "NETWORK_NETNS",
    "SandboxIsolation",
    "SandboxLimits",
    "SandboxResult",
    "TestOutcome",
    "run_tests",
    "sandbox_isolation",
]

NETWORK_NETNS = "netns"
NETWORK_AUDIT_HOOK = "audit-hook"

NOBODY_UID = 65534
NOBODY_GID = 65534
EXCERPT_CHARS = 2000  # stdout / stderr excerpt kept in the result
ERROR_CHARS = 300  # one test's error message
# Exit statuses the harness uses to say why it stopped: `unshare --fork` does not forward a
# child's fatal signal reliably, so the harness turns SIGXCPU / EFBIG into these itself.
EXIT_CPU_LIMIT = 128 + 24  # as if killed by SIGXCPU
EXIT_FILE_SIZE_LIMIT = 128 + 25  # as if killed by SIGXFSZ


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one `run_tests` call."""

    timeout_s: float = 10.0
    """Wall-clock limit for the whole child (start-up, code, setup, all tests)."""
    per_test_timeout_s: float = 3.0
    """SIGALRM limit for defining the code, for the setup, and for each test separately."""
    cpu_s: int | None = None
    """RLIMIT_CPU in seconds; None = ceil(timeout_s) + 1."""
    memory_bytes: int = 1 << 30
    """RLIMIT_AS (address space) of the child interpreter."""
    fsize_bytes: int = 4 << 20
    """RLIMIT_FSIZE: largest file the child may write (its stdout/stderr files included)."""
    nproc: int = 1
    """RLIMIT_NPROC; counts every process and thread of the uid; ignored by the kernel for root."""
    nofile: int = 64
    """RLIMIT_NOFILE: open file descriptors."""

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"timeout_s must be a positive finite number, got {self.timeout_s!r}")
        if not self.per_test_timeout_s > 0:
            raise ValueError(f"per_test_timeout_s must be > 0, got {self.per_test_timeout_s!r}")
        if self.cpu_s is not None and self.cpu_s < 1:
            raise ValueError(f"cpu_s must be >= 1 or None, got {self.cpu_s!r}")
        for field in ("memory_bytes", "fsize_bytes", "nproc", "nofile"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)!r}")

    @property
    def effective_cpu_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class TestOutcome:
    index: int
    passed: bool
    error: str  # "" when passed; "ExceptionType: message" (truncated) or "no verdict (...)"

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class SandboxResult:
    outcomes: tuple[TestOutcome, ...]
    code_error: str  # "" when the code defined cleanly; else "ExceptionType: message"
    setup_error: str  # "" when the setup ran cleanly (or there was none)
    stdout: str  # excerpt, verdict lines removed
    stderr: str  # excerpt
    timed_out: bool  # the wall-clock deadline killed the child
    killed_reason: str  # "" | "wall_timeout" | "cpu_limit" | "file_size_limit" | "signal N" | "exit N"
    returncode: int
    duration_s: float
    isolation: str  # SandboxIsolation.describe() of the run

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
class SandboxIsolation:
    """Which isolation layers the probe found working on this machine."""

    launcher: tuple[str, ...]  # argv prefix before the interpreter ("" = plain child)
    python: str  # interpreter the child runs
    network: str  # NETWORK_NETNS | NETWORK_AUDIT_HOOK
    pid_namespace: bool
    uid: int  # uid the model code runs as
    nproc_enforced: bool  # RLIMIT_NPROC applies (uid != 0)

    def describe(self) -> str:
        return (
            f"network={self.network} pid_ns={'yes' if self.pid_namespace else 'no'} "
            f"uid={self.uid} nproc={'enforced' if self.nproc_enforced else 'ignored(root)'} "
            f"audit_hook=yes python={self.python}"
        )


# ---------------------------------------------------------------------------------------------
# The harness: runs inside the child. Pure stdlib, compatible with CPython >= 3.8.
# ---------------------------------------------------------------------------------------------
_HARNESS = r'''
def _collm_main():
    import json, os, signal, sys, resource
    _write, _exit, _repr, _str, _type, _len = os.write, os._exit, repr, str, type, len
    _exec, _compile, _dict, _isinstance, _BaseException = exec, compile, dict, isinstance, BaseException
    _setitimer, _ITIMER_REAL = signal.setitimer, signal.ITIMER_REAL
    EXIT_CPU, EXIT_FSIZE = __EXIT_CPU__, __EXIT_FSIZE__
    raw = sys.stdin.buffer.read()
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    job = json.loads(raw.decode("utf-8"))
    del raw
    nonce = job["nonce"]
    lim = job["limits"]
    R = resource
    for name, value, hard in (("RLIMIT_AS", lim["memory_bytes"], lim["memory_bytes"]),
                              ("RLIMIT_CPU", lim["cpu_s"], lim["cpu_s"] + 1),
                              ("RLIMIT_FSIZE", lim["fsize_bytes"], lim["fsize_bytes"]),
                              ("RLIMIT_NPROC", lim["nproc"], lim["nproc"]),
                              ("RLIMIT_NOFILE", lim["nofile"], lim["nofile"]),
                              ("RLIMIT_CORE", 0, 0)):
        R.setrlimit(getattr(R, name), (value, hard))
    per_test = float(lim["per_test_timeout_s"])

    # Warm common stdlib modules before the hook: faster tests, and their import-time
    # introspection (typing uses sys._getframe) happens while it is still allowed.
    for mod in ("typing", "collections", "re", "math", "itertools", "functools", "heapq",
                "string", "bisect", "hashlib", "random", "copy", "fractions", "decimal",
                "statistics", "operator", "datetime", "array", "enum", "dataclasses"):
        try:
            __import__(mod)
        except Exception:
            pass

    # Everything the hook and the reporting path use after model code starts is bound HERE,
    # as locals: model code can rebind builtins (int, any, enumerate...) and patch stdlib
    # modules (posixpath, os), but not these closure cells. Paths are resolved by our own
    # realpath built on C functions (lstat, readlink, getcwd), never by posixpath.
    _int, _bytes, _tuple, _enumerate = int, bytes, tuple, enumerate
    _str_str, _bytes_decode = str.__str__, bytes.decode  # exact copies of str / bytes subclasses
    _lstat, _stat, _readlink, _getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    _OSError = OSError
    S_IFMT, S_IFLNK, S_IFDIR = 0o170000, 0o120000, 0o040000

    class SandboxViolation(PermissionError):
        pass

    class FrameAccessDenied(ValueError):  # stdlib callers of sys._getframe catch ValueError
        pass

    def realpath(path):
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        todo = path.split("/")
        todo.reverse()  # a stack: next component last
        parts = []
        links = 0
        while todo:
            c = todo.pop()
            if c == "" or c == ".":
                continue
            if c == "..":
                if parts:
                    parts.pop()
                continue
            cand = "/" + "/".join(parts + [c])
            try:
                mode = _lstat(cand).st_mode
            except _OSError:
                parts.append(c)  # does not exist (yet): lexical from here on
                continue
            if (mode & S_IFMT) == S_IFLNK:
                links += 1
                if links > 40:
                    raise SandboxViolation("sandbox: too many symlinks")
                target = _readlink(cand)
                if target.startswith("/"):
                    parts = []
                more = target.split("/")
                more.reverse()
                todo.extend(more)
            else:
                parts.append(c)
        return "/" + "/".join(parts)

    def isdir(path):
        try:
            return (_stat(path).st_mode & S_IFMT) == S_IFDIR
        except _OSError:
            return False

    sep = "/"
    work = realpath(_getcwd())
    read_roots = _tuple(sorted({realpath(p) for p in sys.path if p}))
    read_files = frozenset(("/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"))
    blocked_prefixes = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                        "os.fork", "os.forkpty", "os.system", "os.kill", "os.killpg",
                        "os.startfile", "os.add_dll_directory", "pty.", "ctypes.", "gc.get_",
                        "os.chdir", "os.chroot",
                        "sys._current_frames", "sys._current_exceptions", "sys.settrace",
                        "sys.setprofile", "sys.remote_exec", "resource.setrlimit",
                        "resource.prlimit", "winreg.", "_winapi.", "webbrowser.",
                        "sqlite3.connect", "sqlite3.load_extension", "mmap.")
    blocked_imports = frozenset(("ctypes", "_ctypes", "_ctypes_test", "_posixsubprocess",
                                 "subprocess", "multiprocessing", "_multiprocessing",
                                 "_posixshmem", "_socket", "socket", "_ssl", "ssl", "select",
                                 "selectors", "_testcapi", "_testinternalcapi", "_testbuffer",
                                 "_testmultiphase", "_testimportmultiple", "_testclinic",
                                 "_xxsubinterpreters", "_xxinterpchannels", "_dbm", "_gdbm",
                                 "readline", "_sqlite3", "sqlite3", "cffi", "_cffi_backend",
                                 "_tkinter", "pty", "mmap"))
    write_path_events = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
                         "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (0, 1),
                         "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,),
                         "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,),
                         "os.setxattr": (0,), "os.removexattr": (0,), "os.mkfifo": (0,),
                         "os.mknod": (0,), "shutil.rmtree": (0,), "shutil.copyfile": (0, 1),
                         "shutil.copymode": (0, 1), "shutil.copystat": (0, 1),
                         "shutil.copytree": (0, 1), "shutil.move": (0, 1),
                         "shutil.make_archive": (0,), "shutil.unpack_archive": (0, 1),
                         "tempfile.mkstemp": (0,), "tempfile.mkdtemp": (0,)}
    read_path_events = {"os.listdir": (0,), "os.scandir": (0,), "os.getxattr": (0,),
                        "os.listxattr": (0,), "glob.glob": (0,), "glob.glob/2": (0,)}
    W_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path, roots):
        for root in roots:
            if path == root or path.startswith(root + sep):
                return True
        return False

    def as_text(p):
        """An exact str from str/bytes (subclasses included, by their data); else None."""
        if _isinstance(p, _str):
            return _str_str(p)
        if _isinstance(p, _bytes):
            return _bytes_decode(p, "utf-8", "surrogateescape")
        return None

    def check_path(event, p, write):
        if p is None:
            p = "."
        if _type(p) is _int:  # an already-open descriptor
            return
        text = as_text(p)
        if text is None:  # path-like objects could answer differently on a second __fspath__
            raise SandboxViolation("sandbox: %s with a %s path refused" % (event, _type(p).__name__))
        rp = realpath(text)
        if inside(rp, (work,)):
            return
        # No directory outside the work dir may be opened: with the cwd pinned to the work
        # dir, every dir_fd then lies inside it, and a path that resolves inside the work dir
        # from the cwd also does from any dir_fd (the hook never sees dir_fd).
        if not write and (rp in read_files or inside(rp, read_roots)) and not (
                event == "open" and isdir(rp)):
            return
        if write and rp == "/dev/null":
            return
        raise SandboxViolation("sandbox: %s %r refused" % (event, text))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            write = False
            if mode is None:
                write = (flags or 0) & W_FLAGS != 0
            else:
                m = as_text(mode) or "w"
                for c in "wax+":
                    if c in m:
                        write = True
            check_path(event, path, write)
        elif event == "import":
            name = as_text(args[0]) if args else ""
            fname = as_text(args[1]) if _len(args) > 1 and args[1] is not None else ""
            base = (name or "").split(".")[0]
            if base in blocked_imports:
                raise SandboxViolation("sandbox: import of %r refused" % (name,))
            if fname:
                stem = fname.split("/")[-1].split(".")[0]
                if stem in blocked_imports:
                    raise SandboxViolation("sandbox: import of %r refused" % (fname,))
        elif event == "sys._getframe":
            raise FrameAccessDenied("sandbox: frame introspection refused")
        elif event == "object.__getattr__":
            if _len(args) > 1 and args[1] != "__code__":
                raise SandboxViolation("sandbox: attribute %r refused" % (args[1],))
        elif event.startswith(blocked_prefixes):
            raise SandboxViolation("sandbox: %s refused" % (event,))
        elif event in write_path_events:
            for i in write_path_events[event]:
                if i < _len(args):
                    check_path(event, args[i], True)
        elif event in read_path_events:
            for i in read_path_events[event]:
                if i < _len(args):
                    check_path(event, args[i], False)

    class TestTimeout(_BaseException):
        pass

    armed = [False]

    def on_alarm(signum, frame):
        if armed[0]:
            raise TestTimeout("test exceeded %.1fs" % per_test)

    signal.signal(signal.SIGALRM, on_alarm)

    def on_xcpu(signum, frame):  # soft RLIMIT_CPU reached; the hard limit SIGKILLs 1 s later
        _exit(EXIT_CPU)

    signal.signal(signal.SIGXCPU, on_xcpu)

    def report(kind, index, ok, error):
        line = "\n%s %s %d %d %s\n" % (nonce, kind, index, 1 if ok else 0, _repr(error))
        data = line.encode("utf-8", "backslashreplace")
        try:
            while data:
                data = data[_write(1, data):]
        except _BaseException:  # EFBIG (RLIMIT_FSIZE; Python ignores SIGXFSZ) or a closed fd
            _exit(EXIT_FSIZE)

    def describe(exc):
        try:
            name = "%s" % (_type(exc).__name__,)
        except _BaseException:
            name = "Exception"
        try:
            msg = "%s" % (_str(exc),)
            text = "%s: %s" % (name, msg) if msg else name
        except _BaseException:
            text = name
        return text.replace("\n", " ")[:__ERROR_CHARS__]

    def run_armed(src, filename, ns):
        armed[0] = True
        _setitimer(_ITIMER_REAL, per_test, 0.05)  # re-fires every 50 ms if swallowed
        try:
            _exec(_compile(src, filename, "exec"), ns)
            armed[0] = False
            err = ""
        except _BaseException as exc:
            err = describe(exc) or "error"
            armed[0] = False
        _setitimer(_ITIMER_REAL, 0, 0)
        return err

    def run(src, filename, ns):
        try:
            return run_armed(src, filename, ns)
        except TestTimeout:  # the alarm landed between an exception and the handler's exit
            armed[0] = False
            _setitimer(_ITIMER_REAL, 0, 0)
            return "TestTimeout: test exceeded %.1fs" % per_test

    code, setup, tests = job["code"], job["setup"], job["tests"]
    del job
    sys.stdout.flush()
    sys.addaudithook(hook)
    import builtins
    pristine = _dict(vars(builtins))  # tests see these builtins, whatever the code rebinds
    ns = {"__name__": "__main__", "__builtins__": builtins}
    err = run(code, "<solution>", ns)
    report("code", 0, not err, err)
    if not err and setup:
        err = run(setup, "<setup>", ns)
        report("setup", 0, not err, err)
    for i, test in _enumerate(tests):
        if err:
            break
        tns = {k: v for k, v in ns.items() if _type(k) is _str and k not in pristine}
        tns["__builtins__"] = _dict(pristine)
        terr = run(test, "<test %d>" % i, tns)
        try:
            sys.stdout.flush()
        except _BaseException:
            pass
        report("test", i, not terr, terr)
    report("done", 0, True, "")
    _exit(0)

_collm_main()
'''
for _k, _v in {"__ERROR_CHARS__": ERROR_CHARS, "__EXIT_CPU__": EXIT_CPU_LIMIT,
               "__EXIT_FSIZE__": EXIT_FILE_SIZE_LIMIT}.items():
    _HARNESS = _HARNESS.replace(_k, str(_v))


# ---------------------------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------------------------
_PROBE_CODE = (
    "import json, os, resource, sys; print(json.dumps([sys.version_info[:2], os.getuid()]))"
)
_isolation: SandboxIsolation | None = None
_isolation_lock = threading.Lock()


def _python_candidates() -> list[str]:
    """Interpreters to try, best first (COLLM_SANDBOX_PYTHON overrides)."""
    seen: list[str] = []
    override = os.environ.get("COLLM_SANDBOX_PYTHON")
    cands = [override] if override else []
    cands += [
        sys.executable,
        getattr(sys, "_base_executable", ""),
        os.path.realpath(sys.executable),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
        shutil.which("python3") or "",
    ]
    for c in cands:
        if c and os.path.isfile(c) and c not in seen:
            seen.append(c)
    return seen


def _probe(argv: list[str]) -> tuple[int, int] | None:
    """Run the probe; returns (python minor version, uid) or None when the launcher fails."""
    try:
        cp = subprocess.run(
            [*argv, "-I", "-S", "-B", "-c", _PROBE_CODE],
            capture_output=True,
            timeout=20,
            env=_child_env("/"),
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if cp.returncode != 0:
        return None
    try:
        (major, minor), uid = json.loads(cp.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, TypeError):
        return None
    if (major, minor) < (3, 8):  # audit hooks appeared in 3.8
        return None
    return minor, uid


def _detect_isolation() -> SandboxIsolation:
    pythons = _python_candidates()
    unshare = shutil.which("unshare")
    ns_flags = ["--net", "--pid", "--fork", "--kill-child"]
    if unshare and os.geteuid() == 0:
        drop = ["--setuid", str(NOBODY_UID), "--setgid", str(NOBODY_GID)]
        for py in pythons:  # 1. namespaces + uid nobody
            got = _probe([unshare, *ns_flags, *drop, py])
            if got and got[1] == NOBODY_UID:
                return SandboxIsolation((unshare, *ns_flags, *drop), py, NETWORK_NETNS, True,
                                        NOBODY_UID, True)
        for py in pythons:  # 2. namespaces, still root
            if _probe([unshare, *ns_flags, py]):
                return SandboxIsolation((unshare, *ns_flags), py, NETWORK_NETNS, True, 0, False)
    if unshare and os.geteuid() != 0:
        flags = ["--map-root-user", *ns_flags]  # 3. unprivileged user namespace
        for py in pythons:
            if _probe([unshare, *flags, py]):
                return SandboxIsolation((unshare, *flags), py, NETWORK_NETNS, True,
                                        os.geteuid(), True)
    for py in pythons:  # 4. plain child process
        if _probe([py]):
            uid = os.geteuid()
            return SandboxIsolation((), py, NETWORK_AUDIT_HOOK, False, uid, uid != 0)
    raise RuntimeError(f"sandbox: no usable Python interpreter among {pythons}")


def sandbox_isolation() -> SandboxIsolation:
    """The isolation layers in use (probed once per process, ~0.1-0.5 s, on first call)."""
    global _isolation
    with _isolation_lock:
        if _isolation is None:
            _isolation = _detect_isolation()
        return _isolation


def _child_env(workdir: str) -> dict[str, str]:
    # Nothing of the parent's environment is inherited: no secrets, no PYTHON* variables.
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} chars cut]"


def _parse_verdicts(stdout: str, nonce: str) -> tuple[dict[str, dict[int, tuple[bool, str]]], str]:
    """Splits the child's stdout into verdict lines (those with our nonce) and the rest."""
    import ast

    verdicts: dict[str, dict[int, tuple[bool, str]]] = {}
    rest: list[str] = []
    prefix = nonce + " "
    for line in stdout.split("\n"):
        if not line.startswith(prefix):
            rest.append(line)
            continue
        try:
            kind, index, ok, err = line[len(prefix):].split(" ", 3)
            error = ast.literal_eval(err)
            verdicts.setdefault(kind, {}).setdefault(int(index), (ok == "1", str(error)))
        except (ValueError, SyntaxError):
            continue  # a truncated line (file size limit): no verdict
    return verdicts, "\n".join(line for line in rest if line).strip()


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Waits for `pid` to exit WITHOUT reaping it, so its process group id cannot be recycled
    before we kill the group. True when it exited before the deadline."""
    delay = 0.002
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.05)


def _kill_reason(returncode: int, timed_out: bool, stdout_bytes: int, fsize: int) -> str:
    if timed_out:
        return "wall_timeout"
    if returncode == EXIT_CPU_LIMIT or returncode == -signal.SIGXCPU:
        return "cpu_limit"
    if returncode == EXIT_FILE_SIZE_LIMIT or returncode == -signal.SIGXFSZ or stdout_bytes >= fsize:
        return "file_size_limit"
    if returncode == 0:
        return ""
    if returncode < 0:
        return f"signal {-returncode}"
    return f"exit {returncode}"


def run_tests(
    code: str,
    test_asserts: list[str],
    timeout_s: float = 10.0,
    *,
    setup: str = "",
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Defines `code`, runs `setup` after it, then each snippet of `test_asserts` separately,
    all in one sandboxed child interpreter. A test passes when its snippet raises nothing.

    `timeout_s` is the wall-clock limit of the whole child; `limits` overrides every limit
    (its own `timeout_s` wins over the argument). Thread-safe; blocks the calling thread.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be str, got {type(code).__name__}")
    if isinstance(test_asserts, str) or not all(isinstance(t, str) for t in test_asserts):
        raise TypeError("test_asserts must be a list of str")
    if limits is None:
        limits = SandboxLimits(timeout_s=timeout_s,
                               per_test_timeout_s=min(SandboxLimits.per_test_timeout_s, timeout_s))
    iso = sandbox_isolation()
    nonce = secrets.token_hex(16)
    job = {
        "nonce": nonce,
        "code": code,
        "setup": setup,
        "tests": list(test_asserts),
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_s": limits.effective_cpu_s,
            "fsize_bytes": limits.fsize_bytes,
            "nproc": limits.nproc,
            "nofile": limits.nofile,
            "per_test_timeout_s": limits.per_test_timeout_s,
        },
    }
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="collm_sbx_")
    try:
        # base 0711: the child may traverse it to its work dir but not list it; io/ is root-only.
        os.chmod(base, 0o711)
        workdir = os.path.join(base, "work")
        iodir = os.path.join(base, "io")
        os.mkdir(workdir, 0o700)
        os.mkdir(iodir, 0o700)
        if iso.uid != os.geteuid():
            os.chown(workdir, iso.uid, NOBODY_GID if iso.uid == NOBODY_UID else -1)
        paths = {name: os.path.join(iodir, name) for name in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "w", encoding="utf-8") as f:
            json.dump(job, f)
        # Opened here, before the launch, so the child holds write-only (resp. read-only)
        # descriptors onto files it could never open itself.
        with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, open(
            paths["stderr"], "wb"
        ) as ferr:
            proc = subprocess.Popen(
                [*iso.launcher, iso.python, "-I", "-S", "-B", "-c", _HARNESS],
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=workdir,
                env=_child_env(workdir),
                close_fds=True,
                start_new_session=True,
            )
        try:
            exited = _wait_unreaped(proc.pid, start + limits.timeout_s)
        finally:
            # Kill the whole group (stray children included) before reaping the leader, so the
            # group id is still ours. Harmless when everything already exited.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        timed_out = not exited
        duration = time.monotonic() - start
        with open(paths["stdout"], "rb") as f:
            raw_stdout = f.read(limits.fsize_bytes + 1)
        stdout = raw_stdout.decode("utf-8", "replace")
        with open(paths["stderr"], "rb") as f:
            stderr = f.read(EXCERPT_CHARS * 4).decode("utf-8", "replace")
    finally:
        shutil.rmtree(base, ignore_errors=True)

    verdicts, user_stdout = _parse_verdicts(stdout, nonce)
    code_v = verdicts.get("code", {}).get(0)
    setup_v = verdicts.get("setup", {}).get(0)
    tests_v = verdicts.get("test", {})
    reason = _kill_reason(proc.returncode, timed_out, len(raw_stdout), limits.fsize_bytes)
    if code_v is None:
        code_error = f"no verdict ({reason or 'child exited early'})"
    else:
        code_error = "" if code_v[0] else code_v[1]
    setup_error = ""
    if setup and not code_error:
        if setup_v is None:
            setup_error = f"no verdict ({reason or 'child exited early'})"
        elif not setup_v[0]:
            setup_error = setup_v[1]
    outcomes = []
    for i in range(len(test_asserts)):
        v = tests_v.get(i)
        if v is None:
            if code_v is not None and code_error:
                why = f"not run: the code raised {code_error}"
            elif setup_v is not None and setup_error:
                why = f"not run: the setup raised {setup_error}"
            else:
                why = f"no verdict ({reason or 'child exited early'})"
            outcomes.append(TestOutcome(i, False, why[:ERROR_CHARS]))
        else:
            outcomes.append(TestOutcome(i, v[0], "" if v[0] else v[1]))
    return SandboxResult(
        outcomes=tuple(outcomes),
        code_error=code_error,
        setup_error=setup_error,
        stdout=_excerpt(user_stdout),
        stderr=_excerpt(stderr.strip()),
        timed_out=timed_out,
        killed_reason=reason,
        returncode=proc.returncode,
        duration_s=round(duration, 4),
        isolation=iso.describe(),
    )
