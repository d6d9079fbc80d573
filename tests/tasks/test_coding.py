"""Cooperative HumanEval: every reward level with exact numbers, feedback, isolation, canonical."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.coding import (
    AUX_NAME,
    COOPERATION_REWARD,
    DATA_PATH,
    MAX_REWARD,
    STRUCTURE_REWARD,
    SYNTAX_REWARD,
    TESTS_REWARD,
    cooperation,
    defines_function,
    extract_code,
    split_humaneval_tests,
)

TASK = get_task("coding")
P0 = TASK.get_problem("HumanEval/0")  # has_close_elements, 7 tests: True False True False True True False

HELPER_ID = "```python\ndef aux(x):\n    return x  # HELPER-SECRET-7f3a\n```"
PROMPT0 = P0.payload["prompt"]


def fence(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\nDone."


def main_returning(expr: str) -> str:
    return fence(PROMPT0 + f"    return {expr}\n")


def canonical_coop(p) -> tuple[str, str]:
    """Helper = identity aux; main = canonical solution renamed, wrapped so its value goes through aux."""
    entry = p.payload["entry_point"]
    impl = p.payload["prompt"].replace(f"def {entry}(", f"def _{entry}_impl(", 1) + p.payload["canonical_solution"]
    main = f"{impl}\n\ndef {entry}(*args, **kwargs):\n    return {AUX_NAME}(_{entry}_impl(*args, **kwargs))\n"
    return HELPER_ID, fence(main)


def test_scale_constants():
    assert (STRUCTURE_REWARD, SYNTAX_REWARD, TESTS_REWARD, COOPERATION_REWARD) == (0.5, 0.5, 2.5, 0.5)
    assert MAX_REWARD == 4.0


def test_level0_structure_missing():
    r, info = TASK.evaluate(P0, "```python\ndef helper(x):\n    return x\n```", main_returning("True"))
    assert r == 0.0 and info["level"] == 0
    assert info["structure"] == {"helper_defines_aux": False, "main_defines_entry": True, "ok": False}
    r, info = TASK.evaluate(P0, HELPER_ID, "I cannot do this.")
    assert r == 0.0 and info["structure"]["main_defines_entry"] is False


def test_level1_syntax_error():
    r, info = TASK.evaluate(P0, "```python\ndef aux(x):\n    return (x\n```", main_returning("True"))
    assert r == 0.5 and info["level"] == 1
    assert info["syntax"]["helper_error"].startswith("line 2:")
    assert info["syntax"]["main_error"] == "" and info["syntax"]["ok"] is False
    assert "tests" not in info


def test_level2_zero_tests():
    # main calls aux and uses it, but every test fails: no cooperation bonus without a passing test
    r, info = TASK.evaluate(P0, HELPER_ID, main_returning("aux(None)"))
    assert r == 1.0 and info["level"] == 2
    assert info["tests"]["passed"] == 0 and info["tests"]["total"] == 7
    assert "cooperation" not in info


def test_level3_partial_tests_without_cooperation():
    r, info = TASK.evaluate(P0, HELPER_ID, main_returning("True"))  # 4 of 7 expected values are True
    assert info["tests"]["passed"] == 4 and info["tests"]["failing"] == [1, 3, 6]
    assert r == pytest.approx(1.0 + 2.5 * 4 / 7)
    assert info["level"] == 3
    assert info["cooperation"] == {"calls_aux": False, "uses_result": False, "redefines_aux": False, "ok": False}
    assert info["tests"]["errors"]["1"] == "AssertionError"


def test_level4_partial_tests_with_cooperation():
    r, info = TASK.evaluate(P0, HELPER_ID, main_returning("aux(True)"))
    assert r == pytest.approx(1.0 + 2.5 * 4 / 7 + 0.5)
    assert info["level"] == 4 and info["cooperation"]["ok"]
    json.dumps(info)


def test_top_levels_for_canonical_solutions():
    ids = ["HumanEval/0", "HumanEval/2", "HumanEval/32", "HumanEval/38", "HumanEval/53", "HumanEval/140", "HumanEval/163"]
    problems = [TASK.get_problem(i) for i in ids]
    with ThreadPoolExecutor(2) as ex:  # also exercises the sandbox from threads
        results = list(ex.map(lambda p: TASK.evaluate(p, *canonical_coop(p)), problems))
    for p, (r, info) in zip(problems, results):
        assert info["tests"]["fraction"] == 1.0, (p.problem_id, info["tests"])
        assert r == MAX_REWARD and info["level"] == 4, p.problem_id
    # main = prompt + canonical solution, helper unused: top test level, no cooperation bonus
    p = TASK.get_problem("HumanEval/32")  # its prompt gives `poly`, used by both solution and tests
    r, info = TASK.evaluate(p, HELPER_ID, fence(p.payload["prompt"] + p.payload["canonical_solution"]))
    assert r == 3.5 and info["tests"]["passed"] == info["tests"]["total"] > 0 and info["level"] == 3


def test_cooperation_rules():
    p = P0
    solution = P0.payload["canonical_solution"]
    ignored = fence(PROMPT0 + "    aux(numbers)\n" + solution)
    r, info = TASK.evaluate(p, HELPER_ID, ignored)
    assert r == 3.5 and info["cooperation"]["calls_aux"] and not info["cooperation"]["uses_result"]
    redefined = fence("def aux(x):\n    return x\n\n" + PROMPT0 + "    numbers = aux(numbers)\n" + solution)
    r, info = TASK.evaluate(p, HELPER_ID, redefined)
    assert r == 3.5 and info["cooperation"]["redefines_aux"]
    assert cooperation("def f(a):\n    for x in aux(a):\n        pass\n", "f")["uses_result"]
    assert cooperation("def f(a):\n    def g():\n        return aux(a)\n    return g()\n", "f")["uses_result"]
    assert not cooperation("def g(a):\n    return aux(a)\n", "f")["calls_aux"]


def test_timeouts_fail_tests():
    task = get_task("coding", timeout_s=4, per_test_timeout_s=0.2)
    r, info = task.evaluate(P0, HELPER_ID, fence(PROMPT0 + "    while True:\n        pass\n"))
    assert r == 1.0 and info["tests"]["passed"] == 0
    assert "TestTimeout" in info["tests"]["errors"]["0"]


def test_two_turn_episode_feedback_and_isolation():
    ep = TASK.new_episode(P0)
    main0 = main_returning("aux(True)")
    r = ep.step({"helper": HELPER_ID, "main": main0})
    assert not r.done and r.reward == pytest.approx(1.0 + 2.5 * 4 / 7 + 0.5)
    fh, fm = r.feedback["helper"], r.feedback["main"]
    assert "- Tests: 4/7 passed." in fm
    assert "FAILED: assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False" in fm
    assert "-> AssertionError" in fm
    assert "- Cooperation: `has_close_elements` calls `aux` and uses its result." in fh
    assert "Revise your function `aux`" in fh and "Revise your function `has_close_elements`" in fm
    obs_main = ep.observation("main")
    assert [m["role"] for m in obs_main] == ["user", "assistant", "user"]
    assert obs_main[1]["content"] == main0  # its own previous answer
    joined_main = "\n".join(m["content"] for m in obs_main)
    assert "HELPER-SECRET-7f3a" not in joined_main and HELPER_ID not in joined_main
    joined_helper = "\n".join(m["content"] for m in ep.observation("helper"))
    assert "return aux(True)" not in joined_helper
    assert "def aux" not in obs_main[0]["content"]
    # turn 2: a syntax error in main's code is reported with details only to main
    r2 = ep.step({"helper": HELPER_ID, "main": fence(PROMPT0 + "    return (\n")})
    assert r2.done and r2.reward == 0.5
    assert "your code does not parse (line" in r2.feedback["main"]
    assert "- Syntax: your partner's code does not parse." in r2.feedback["helper"]
    assert "Revise" not in r2.feedback["helper"]


def test_structure_feedback_per_role():
    ep = TASK.new_episode(P0)
    r = ep.step({"helper": "no code", "main": main_returning("True")})
    assert "your code does NOT define `aux`" in r.feedback["helper"]
    assert "your partner's code does NOT define `aux`" in r.feedback["main"]


def test_determinism_and_clone():
    ep = TASK.new_episode(P0)
    twin = ep.clone()
    a = {"helper": HELPER_ID, "main": main_returning("aux(True)")}
    r1, r2 = ep.step(a), twin.step({"helper": HELPER_ID, "main": main_returning("False")})
    assert r1.reward != r2.reward and ep.turn == twin.turn == 1
    r3 = TASK.new_episode(P0).step(a)
    assert r3.reward == r1.reward and r3.feedback == r1.feedback
    assert r3.info["tests"]["failing"] == r1.info["tests"]["failing"]


def test_prompts():
    ep = TASK.new_episode(P0)
    h, m = ep.observation("helper")[0]["content"], ep.observation("main")[0]["content"]
    assert PROMPT0.rstrip() in h and PROMPT0.rstrip() in m
    assert "def aux(...)" in h and "Do not define `has_close_elements`" in h
    assert "Do not define `aux` yourself" in m
    assert P0.payload["canonical_solution"].strip() not in h + m


def test_extract_code_and_structure_helpers():
    assert extract_code("text\n```python\na = 1\n```\nmore\n```py\nb = 2\n```") == "a = 1\n\nb = 2\n"
    assert extract_code("```python\ndef f():\n    pass\n") == "def f():\n    pass\n"  # unterminated
    assert extract_code("def f():\n    pass") == "def f():\n    pass\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("   ") == ""
    assert defines_function("def aux(a):\n", "aux") and not defines_function("    def aux(a):\n", "aux")
    assert not defines_function("def auxiliary(a):\n", "aux")


def test_humaneval_test_split():
    with gzip.open(DATA_PATH, "rt", encoding="utf-8") as f:
        row0 = json.loads(f.readline())
    setup, tests = split_humaneval_tests(row0["test"])
    assert "METADATA" in setup and len(tests) == 7
    assert tests[0] == "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    src = "def check(candidate):\n    import math\n    assert True\n    x = 3\n    for i in range(2):\n        assert candidate(i) == i\n    assert candidate(x) == 3\n"
    setup, tests = split_humaneval_tests(src)
    assert setup == "" and tests == [
        "import math\nx = 3\nfor i in range(2):\n    assert candidate(i) == i",
        "import math\nx = 3\nassert candidate(x) == 3",
    ]
    assert sum(len(p.payload["tests"]) for p in TASK.problems("train") + TASK.problems("eval")) == 1133


def test_splits_by_position():
    train, evl = TASK.problems("train"), TASK.problems("eval")
    assert [p.problem_id for p in train] == [f"HumanEval/{i}" for i in range(132)]
    assert [p.problem_id for p in evl] == [f"HumanEval/{i}" for i in range(132, 164)]
