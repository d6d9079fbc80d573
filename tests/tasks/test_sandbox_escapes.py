"""Sandbox escape suite: every snippet below passes ONLY if it escaped the sandbox.

Each must come back as a failed test, and the test process (the sandbox's parent) must be
unharmed afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from collm_serve.tasks.sandbox import (
    NETWORK_AUDIT_HOOK,
    NETWORK_NETNS,
    SandboxLimits,
    run_tests,
    sandbox_isolation,
)

SECRET = "hunter2-collm-secret"
MARKER = "/tmp/collm_escape_marker"


@pytest.fixture(autouse=True)
def _secret_and_marker(monkeypatch):
    monkeypatch.setenv("COLLM_TEST_SECRET", SECRET)
    for suffix in ("", "_ctypes", "_system", "_subprocess", "_posix", "_loader", "_rename"):
        if os.path.exists(MARKER + suffix):
            os.remove(MARKER + suffix)
    yield
    for suffix in ("", "_ctypes", "_system", "_subprocess", "_posix", "_loader", "_rename"):
        assert not os.path.exists(MARKER + suffix), f"sandbox wrote {MARKER + suffix}"


def contained(snippet: str, timeout_s: float = 5.0, **kw):
    """Runs `snippet` as the single test; asserts it failed; returns the result."""
    result = run_tests("", [snippet], timeout_s=timeout_s, **kw)
    assert result.num_tests == 1
    assert not result.outcomes[0].passed, f"escaped: {snippet!r} -> {result}"
    return result


def test_network_socket_and_loopback_connect():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    try:
        r = contained(
            "import socket\ns = socket.create_connection(('127.0.0.1', %d), timeout=1)\n"
            "s.sendall(b'escaped')\nassert True" % port
        )
        assert "refused" in r.outcomes[0].error or "Error" in r.outcomes[0].error
        with pytest.raises(socket.timeout):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    # The raw _socket module is refused too (not only the `socket` wrapper).
    contained("import _socket\ns = _socket.socket()\nassert s")


def test_read_etc_passwd_and_parent_files():
    r = contained("assert 'root' in open('/etc/passwd').read()")
    assert "refused" in r.outcomes[0].error
    contained(f"assert open({__file__!r}).read()")
    contained("import os\nassert os.listdir('/work') is not None")
    contained("import os\nfd = os.open('/etc/passwd', os.O_RDONLY)\nassert os.read(fd, 10)")
    # a symlink inside the work dir pointing outside is resolved before the check
    contained("import os\nos.symlink('/etc/passwd', 'p')\nassert open('p').read()")


def test_parent_env_secret_is_invisible():
    contained("import os\nassert os.environ.get('COLLM_TEST_SECRET') == %r" % SECRET)
    contained("assert %r in open('/proc/self/environ').read()" % SECRET)
    contained("assert %r in open('/proc/%d/environ').read()" % (SECRET, os.getpid()))
    # what the child does see: only the scrubbed variables
    r = run_tests("import os\nENV = sorted(os.environ)", ["assert ENV == ['HOME', 'LANG', 'PATH', 'TMPDIR']"])
    assert r.outcomes[0].passed, r


def test_write_outside_work_dir():
    contained(f"open({MARKER!r}, 'w').write('x')\nassert True")
    contained(f"import os\nfd = os.open({MARKER!r}, os.O_WRONLY | os.O_CREAT)\nassert fd")
    contained(f"import os\nopen('m', 'w').close()\nos.rename('m', {MARKER + '_rename'!r})\nassert True")
    # writing inside the work dir is fine
    r = run_tests("", ["open('inside.txt', 'w').write('ok')\nassert open('inside.txt').read() == 'ok'"])
    assert r.outcomes[0].passed, r


def test_fork_bomb_is_bounded():
    start = time.monotonic()
    r = contained("import os\nwhile True:\n    os.fork()", timeout_s=5)
    assert time.monotonic() - start < 5
    assert "refused" in r.outcomes[0].error
    contained("import posix\nwhile True:\n    posix.fork()", timeout_s=5)
    # threads count against RLIMIT_NPROC too (non-root uid)
    if sandbox_isolation().nproc_enforced:
        contained("import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nassert True")


def test_allocate_ten_gib():
    r = contained("x = bytearray(10 * 1024 ** 3)\nassert len(x)")
    assert "MemoryError" in r.outcomes[0].error
    contained("x = [0] * (2 * 1024 ** 3)\nassert x")


def test_sleep_forever_per_test_and_wall_timeout():
    start = time.monotonic()
    r = run_tests("", ["import time\ntime.sleep(10 ** 6)", "assert 1 + 1 == 2"], timeout_s=4,
                  limits=SandboxLimits(timeout_s=4, per_test_timeout_s=0.5))
    assert [o.passed for o in r.outcomes] == [False, True]  # the next test still ran
    assert "TestTimeout" in r.outcomes[0].error
    # A loop that swallows the per-test alarm is stopped by the wall clock (process group kill).
    r = contained(
        "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n"
        "        pass",
        limits=SandboxLimits(timeout_s=1.5, per_test_timeout_s=0.3),
    )
    assert r.timed_out and r.killed_reason == "wall_timeout"
    assert time.monotonic() - start < 8


def test_cpu_limit():
    r = contained("while True:\n    try:\n        pass\n    except BaseException:\n        pass",
                  limits=SandboxLimits(timeout_s=5, per_test_timeout_s=30, cpu_s=1))
    assert r.killed_reason in ("cpu_limit", "wall_timeout"), r


def test_kill_the_parent():
    pid, pgid = os.getpid(), os.getpgid(0)
    contained("import os\nos.kill(os.getppid(), 9)\nassert True")
    contained("import os\nos.kill(%d, 9)\nassert True" % pid)
    contained("import os\nos.killpg(%d, 9)\nassert True" % pgid)
    contained("import os\nos.kill(-1, 9)\nassert True")  # every process the uid may signal
    assert os.getpid() == pid  # still here


def test_ctypes_libc_system():
    contained(f"import ctypes\nctypes.CDLL(None).system(b'touch {MARKER}_ctypes')\nassert True")
    contained("import _ctypes\nassert _ctypes")
    # loading the extension by file path goes through the same import audit
    contained(
        "import importlib.util, glob\n"
        "p = [f for f in __import__('os').listdir('/usr/lib/python3.11/lib-dynload') if f.startswith('_ctypes.')]\n"
        "spec = importlib.util.spec_from_file_location('_ctypes', '/usr/lib/python3.11/lib-dynload/' + p[0])\n"
        "m = importlib.util.module_from_spec(spec)\n"
        f"m.dlopen(None)\nassert open({MARKER + '_loader'!r}, 'w')"
    )


def test_subprocess_and_os_system():
    contained(f"import os\nassert os.system('touch {MARKER}_system') == 0")
    contained(f"import subprocess\nsubprocess.run(['touch', '{MARKER}_subprocess'])\nassert True")
    contained(f"import posix\nposix.system(b'touch {MARKER}_posix')\nassert True")
    contained("import os\nos.execv('/bin/true', ['true'])")
    contained("import os\nos.posix_spawn('/bin/true', ['true'], {})\nassert True")
    contained("import _posixsubprocess\nassert _posixsubprocess")


def test_audit_hook_cannot_be_removed_or_bypassed():
    # adding a permissive hook does not remove ours
    contained("import sys, os\nsys.addaudithook(lambda *a: None)\nassert 'root' in open('/etc/passwd').read()")
    # raising the limits back is refused
    contained("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nassert True")
    # frame / GC introspection (the way to the harness's nonce) is refused
    contained("import sys\nassert sys._getframe(1).f_locals")
    contained("import gc\nassert gc.get_objects()")
    contained("import sys\nsys.settrace(lambda *a: None)\nassert True")
    contained("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    assert e.__traceback__.tb_frame.f_back")


def test_forged_verdicts_and_early_exit():
    # printing verdict-looking lines or leaving early does not create passes
    r = run_tests(
        "import os, sys\nprint('0' * 32 + ' test 0 1 \\'\\'')\nsys.stdout.flush()\nos._exit(0)",
        ["assert False", "assert False"],
    )
    assert r.num_passed == 0 and r.code_error.startswith("no verdict"), r
    # the harness stdin (holding the nonce) cannot be re-read
    contained("import os\nos.lseek(0, 0, 0)\nassert os.read(0, 100)")
    # rebinding builtins in the code does not change what the tests see
    r = run_tests("import builtins\nbuiltins.abs = lambda x: 0\nabs = lambda x: 0\n"
                  "def f():\n    return 5", ["assert abs(f() - 1) < 1e-6"])
    assert not r.outcomes[0].passed, r


def test_output_flood_is_capped():
    r = run_tests("", ["while True:\n    print('x' * 10000)"],
                  limits=SandboxLimits(timeout_s=5, per_test_timeout_s=5, fsize_bytes=1 << 20))
    assert not r.outcomes[0].passed
    assert r.killed_reason in ("file_size_limit", "wall_timeout")
    assert len(r.stdout) < 3000


def test_parent_unharmed_and_normal_code_passes():
    code = "from typing import List\n\ndef add(a: List[int]) -> int:\n    return sum(a)\n"
    r = run_tests(code, ["assert add([1, 2]) == 3", "assert add([]) == 0", "assert add([1]) == 2"])
    assert [o.passed for o in r.outcomes] == [True, True, False]
    assert r.pass_fraction == pytest.approx(2 / 3)
    assert not r.timed_out and r.killed_reason == "" and r.code_error == ""
    # common stdlib modules still import under the hook
    r = run_tests("import collections, itertools, hashlib, math, re, random, string, fractions\n"
                  "from collections import namedtuple\nP = namedtuple('P', 'x y')\n",
                  ["assert P(1, 2).x == 1", "assert hashlib.md5(b'a').hexdigest()[:4] == '0cc1'"])
    assert r.num_passed == 2, r
    assert os.environ["COLLM_TEST_SECRET"] == SECRET


def test_isolation_is_reported():
    iso = sandbox_isolation()
    assert iso.network in (NETWORK_NETNS, NETWORK_AUDIT_HOOK)
    assert "audit_hook=yes" in iso.describe()


def test_network_namespace_without_the_hook():
    """The kernel layer alone (launcher + bare interpreter, no harness) has no route out."""
    iso = sandbox_isolation()
    if iso.network != NETWORK_NETNS:
        pytest.skip(f"no network namespace on this machine: {iso.describe()}")
    assert iso.pid_namespace
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        snippet = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=1)\n"
                   "    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', e)\n"
                   "import os\nprint('ppid', os.getppid())" % port)
        cp = subprocess.run([*iso.launcher, iso.python, "-I", "-S", "-c", snippet],
                            capture_output=True, text=True, timeout=20, cwd="/",
                            env={"PATH": "/usr/bin:/bin"})
    finally:
        server.close()
    assert "blocked" in cp.stdout and "CONNECTED" not in cp.stdout, cp
    assert "ppid 0" in cp.stdout  # the parent is outside the PID namespace


def test_dir_fd_and_chdir_tricks():
    # cwd pinned: a path that stays in the work dir from a deep cwd escapes from a shallow dir_fd
    contained("import os\nos.makedirs('a/b/c/d/e/f/g')\nos.chdir('a/b/c/d/e/f/g')\n"
              "assert open('../../../../../../../../../../etc/passwd').read()")
    # no directory outside the work dir can be opened, so no dir_fd points outside it
    contained("import os\nfd = os.open('/usr/lib', os.O_RDONLY)\n"
              "assert os.read(os.open('../../etc/passwd', os.O_RDONLY, dir_fd=fd), 10)")
    contained("import os\nfd = os.open('/', os.O_RDONLY | os.O_DIRECTORY)\nassert fd")
    contained("import os\nassert os.listdir(os.open('/etc', os.O_RDONLY))")


def test_rebinding_builtins_and_patching_stdlib():
    """The hook and the reporting path use only references bound before model code ran."""
    read = "assert 'root' in open('/etc/passwd').read()"
    for code in (
        "import builtins\nbuiltins.int = object\nbuiltins.isinstance = lambda *a: True",
        "import builtins\nbuiltins.any = lambda *a: False\nbuiltins.bool = lambda *a: False",
        "import posixpath, os.path\nposixpath.realpath = os.path.realpath = lambda p, **k: '/tmp'\n"
        "posixpath.abspath = lambda p: '/tmp'\nos.getcwd = lambda: '/'",
    ):
        r = run_tests(code, [read, f"open({MARKER!r}, 'w').write('x')\nassert True"])
        assert r.code_error == "" and r.num_passed == 0, r
    # a str subclass lying about its content does not get a blocked module past the hook
    contained("class S(str):\n    def split(self, *a):\n        return ['math']\n"
              "m = __import__(S('ctypes'))\nassert m.CDLL")
    # a path-like object that answers differently on each __fspath__ call
    for first, second in (("'/etc/passwd'", "'ok.txt'"), ("'ok.txt'", "'/etc/passwd'")):
        contained("open('ok.txt', 'w').write('ok')\n"
                  f"class P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
                  f"        return {first} if P.n % 2 else {second}\n"
                  "assert 'root' in open(P()).read()")
    # rebinding enumerate / exec / str does not forge verdicts
    r = run_tests("import builtins\nbuiltins.enumerate = lambda t: [(i, 'pass') for i in range(len(t))]\n"
                  "builtins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None",
                  ["assert False", "assert False"])
    assert r.code_error == "" and r.num_passed == 0, r
