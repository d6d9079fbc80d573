"""Sandbox behaviour on ordinary code (the hostile cases are in test_sandbox_escapes.py)."""

from __future__ import annotations

import glob
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from collm_serve.tasks.sandbox import SandboxLimits, run_tests, sandbox_isolation


def test_per_test_verdicts_and_output_excerpts():
    code = "import sys\nprint('hello from code')\nprint('to stderr', file=sys.stderr)\ndef sq(x):\n    return x * x\n"
    r = run_tests(code, ["assert sq(3) == 9", "assert sq(3) == 8, 'bad square'", "raise KeyError('k')", "sq(1)"])
    assert [o.passed for o in r.outcomes] == [True, False, False, True]
    assert [o.error for o in r.outcomes] == ["", "AssertionError: bad square", "KeyError: 'k'", ""]
    assert r.num_passed == 2 and r.num_tests == 4 and r.pass_fraction == 0.5
    assert r.stdout == "hello from code" and "to stderr" in r.stderr
    assert r.code_error == "" and r.setup_error == "" and not r.timed_out and r.killed_reason == ""
    assert r.returncode == 0 and r.isolation == sandbox_isolation().describe()
    assert set(r.to_dict()) >= {"outcomes", "code_error", "timed_out", "killed_reason"}


def test_tests_do_not_leak_into_each_other():
    r = run_tests("x = 1", ["x = 2\nassert x == 2", "assert x == 1", "y = 5", "assert 'y' not in globals()"])
    assert [o.passed for o in r.outcomes] == [True, True, True, True]


def test_code_and_setup_errors():
    r = run_tests("def f(:\n    pass", ["assert True"])
    assert r.code_error.startswith("SyntaxError") and r.outcomes[0].error.startswith("not run: the code raised")
    r = run_tests("raise ValueError('boom')", ["assert True", "assert True"])
    assert r.code_error == "ValueError: boom" and r.num_passed == 0
    r = run_tests("def f():\n    return 1", ["assert candidate() == 1"], setup="candidate = g")
    assert r.setup_error == "NameError: name 'g' is not defined" and r.num_passed == 0
    r = run_tests("def f():\n    return 1", ["assert candidate() == 1"], setup="candidate = f")
    assert r.num_passed == 1
    r = run_tests("", [])
    assert r.num_tests == 0 and r.pass_fraction == 0.0


def test_thread_safe_parallel_runs():
    def job(i):
        return run_tests(f"def f():\n    return {i}", [f"assert f() == {i}", f"assert f() == {i + 1}"])

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(job, range(8)))
    assert all([o.passed for o in r.outcomes] == [True, False] for r in results)


def test_work_dir_is_fresh_and_removed():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*")))
    r = run_tests("import os\nFILES = os.listdir('.')\nCWD = os.getcwd()\nopen('left.txt', 'w').write('x')",
                  ["assert FILES == []", "assert CWD.endswith('/work')", "assert os.environ['HOME'] == CWD"])
    assert r.num_passed == 3, r
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "collm_sbx_*"))) == before


def test_limits_validation():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=0)
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=0)
    assert SandboxLimits(timeout_s=2.5).effective_cpu_s == 4
    with pytest.raises(TypeError):
        run_tests("x = 1", "assert x")
    with pytest.raises(TypeError):
        run_tests(b"x = 1", ["assert x"])
