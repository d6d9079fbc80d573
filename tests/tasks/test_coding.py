"""Cooperative HumanEval: the paper's code reward on hand-computed cases, extraction rules,
feedback, isolation, the paper's split.

Expected values are computed by hand from OpenMLRL/LLM_Collab_Code_Generation
rewards/code_rewards.py @0b914ca `execution_reward_aux` (aux +0.4 :118-119, main +0.6 :130-131,
stop :139-143, syntax +0.5 :159-167, tests x1.0 :278-280, bonus gate :294-296, +0.5 :299-301,
+1.0 :309-311, -0.5 :329-331) and rewards/code_utils.py @11f24c3 (extraction :49-205,
`is_wrapper_function` :350-428, `check_aux_call_without_assignment` :431-473).
"""

from __future__ import annotations

import gzip
import json

import pytest

from collm_serve.tasks import get_task
from collm_serve.tasks.coding import (
    DATA_PATH,
    MAX_REWARD,
    CodeFacts,
    calls_aux,
    clean_functions,
    code_reward,
    extract_function,
    ignored_aux_calls_ast,
    ignored_aux_calls_paper,
    is_thin_wrapper,
    split_humaneval_tests,
)

TASK = get_task("coding")
P0 = TASK.get_problem("HumanEval/0")  # has_close_elements, 7 tests: True False True False True True False
SIG0 = "def has_close_elements(numbers, threshold):\n"
AUX_ID = "def aux(x):\n    return x  # HELPER-SECRET-7f3a\n"


def facts(**kw) -> CodeFacts:
    base = dict(aux_defined=True, main_defined=True, syntax_ok=True, aux_present=True,
                main_calls_aux=True, main_is_wrapper=False, aux_value_ignored=False)
    return CodeFacts(**{**base, **kw})


# code_reward(facts, passed, total) -> (reward, level); every number from code_rewards.py
PURE_CASES = {
    "nothing": (facts(aux_defined=False, main_defined=False, aux_present=False), 0, 0, 0.0, 0),
    "aux_only_stops_at_level1": (facts(main_defined=False), 5, 5, 0.4, 0),  # :139-143, tests ignored
    "main_only_syntax_error": (facts(aux_defined=False, syntax_ok=False), 0, 0, 0.6, 1),
    "no_tests_extracted": (facts(), 0, 0, 1.5, 2),  # :175-178
    "zero_passed_no_bonus": (facts(), 0, 7, 1.5, 3),  # :294
    "partial_wrapper": (facts(main_is_wrapper=True), 4, 7, 1.5 + 4 / 7 + 0.5, 3),
    "full_not_wrapper": (facts(), 7, 7, 4.0, 3),
    "ignored_value": (facts(aux_value_ignored=True), 2, 4, 1.5 + 0.5 + 0.5 + 1.0 - 0.5, 3),
    "wrapper_and_ignored": (facts(main_is_wrapper=True, aux_value_ignored=True), 1, 2, 2.0 + 0.5 - 0.5, 3),
    "no_aux_call": (facts(main_calls_aux=False, aux_value_ignored=True), 3, 3, 2.5, 3),  # :299
    "aux_without_return_still_gates_bonus": (facts(aux_defined=False), 1, 1, 0.6 + 0.5 + 1.0 + 1.5, 3),
    "no_aux_function_no_bonus": (facts(aux_defined=False, aux_present=False), 1, 1, 2.1, 3),  # :295
}


@pytest.mark.parametrize("name", list(PURE_CASES))
def test_code_reward_pure(name):
    f, passed, total, reward, level = PURE_CASES[name]
    r, parts, lvl = code_reward(f, passed, total)
    assert r == pytest.approx(reward) and lvl == level
    assert sum(parts.values()) == pytest.approx(r)
    assert r <= MAX_REWARD == 4.0


def main(body: str) -> str:
    return SIG0 + body


# end to end on HumanEval/0 through the sandbox: (helper, main, reward, parts that are non-zero)
E2E = {
    # aux missing -> no +0.4 and no bonuses; canonical main passes 7/7: 0.6 + 0.5 + 1.0
    "no_aux": ("I cannot help.", None, 2.1),
    # one line `return aux(True)` is a wrapper (code_utils.py:407-410): 0.4+0.6+0.5+4/7+0.5
    "wrapper": (AUX_ID, main("    return aux(True)\n"), 2.0 + 4 / 7),
    # three body lines: not a wrapper, +1.0
    "not_wrapper": (AUX_ID, main("    flag = aux(True)\n    x = 1\n    return flag\n"), 3.0 + 4 / 7),
    # no `return ` in main: only aux's 0.4, stop (code_rewards.py:139-143)
    "main_without_return": (AUX_ID, main("    pass\n"), 0.4),
    # the combined code does not parse: 0.4 + 0.6
    "syntax_error": (AUX_ID, main("    return (\n"), 1.0),
    # `aux (1)` alone on a line: the paper's pattern fires, -0.5; 2 body lines, not a wrapper
    "ignored_paper_pattern": (AUX_ID, main("    aux (1)\n    return True\n"), 3.0 + 4 / 7 - 0.5),
}


@pytest.mark.parametrize("name", list(E2E))
def test_evaluate_end_to_end(name):
    helper, main_code, reward = E2E[name]
    if main_code is None:
        main_code = P0.payload["prompt"] + P0.payload["canonical_solution"]
    r, info = TASK.evaluate(P0, helper, main_code)
    assert r == pytest.approx(reward), info["reward_parts"]
    json.dumps(info)


def test_canonical_with_markdown_and_prose_scores_max():
    helper = "Sure! Here is the helper.\n```python\ndef aux(numbers):\n    return sorted(numbers)\n```"
    body = ("    s = aux(numbers)\n    for i in range(len(s) - 1):\n"
            "        if s[i + 1] - s[i] < threshold:\n            return True\n    return False\n")
    r, info = TASK.evaluate(P0, helper, f"Here you go:\n```python\n{main(body)}```\nDone.")
    assert r == MAX_REWARD and info["tests"]["passed"] == 7 and info["level"] == 3


def test_only_the_named_functions_survive():
    # a second helper function written by main is dropped (extract_specific_function): NameError
    code = "def _impl(a, t):\n    return True\n\n" + main("    return _impl(numbers, threshold)\n")
    r, info = TASK.evaluate(P0, "", code)
    assert r == pytest.approx(1.1) and info["tests"]["passed"] == 0
    assert extract_function(code, "has_close_elements").startswith("def has_close_elements")
    assert "_impl" not in extract_function(code, "has_close_elements").split("\n")[0]


def test_extraction_rules():
    assert clean_functions("no code here") == ""
    text = "Intro line.\n```python\nimport os\n\ndef aux(a):\n    return a\n```\nThat is all."
    assert clean_functions(text) == "def aux(a):\n    return a"  # imports and prose dropped
    # `x = 1` is dropped with the prose, so the two blocks touch and the second `def aux(` restarts
    assert extract_function("def aux(a):\n    return a\nx = 1\ndef aux(b):\n    return b\n", "aux") == \
        "def aux(b):\n    return b"
    assert extract_function("def aux(a):\n    return a\ndef g():\n    return 1\ndef aux(b):\n    return b\n",
                            "aux") == "def aux(a):\n    return a"  # cut at the first unindented line
    doc = 'def f(a):\n    """Doc.\n    >>> f(1)\n    """\n    return a\n'
    assert extract_function(doc, "f") == doc.strip()


@pytest.mark.parametrize("body,wrapper", [
    ("    return aux(x)\n", True),  # :407-410
    ("    r = aux(x)\n    return r\n", True),  # :414-426
    ('    """Doc."""\n    # comment\n    return aux(x) + 1\n', True),  # still one `return ...aux...` line
    ("    r = aux(x)\n    return r + 1\n", False),
    ("    r = aux(x)\n    r += 1\n    return r\n", False),
    ("", True),  # empty body (:398-399)
    ('    """Doc\n    more.\n    """\n    y = aux(x)\n    y += 1\n    return y\n', True),  # lone closing quotes
    ('    """Doc\n    more."""\n    y = aux(x)\n    y += 1\n    return y\n', False),
])
def test_is_thin_wrapper(body, wrapper):
    assert is_thin_wrapper("def f(x):\n" + body) is wrapper


def test_ignored_value_rules():
    standalone = "def f(x):\n    aux(x)\n    return x\n"
    spaced = "def f(x):\n    aux (x)\n    return x\n"
    assert ignored_aux_calls_paper(standalone) == []  # the paper's pattern needs `aux\s(`
    assert ignored_aux_calls_paper(spaced) == ["Line 2: aux (x)"]
    assert ignored_aux_calls_paper("def f(x):\n    aux (xy)\n") == []  # one argument character only
    assert ignored_aux_calls_ast(standalone) == ["Line 2: standalone call (not assigned)"]
    assert ignored_aux_calls_ast("def f(x):\n    y = aux(x)\n    return x\n") == ["Line 2: assigned to y but never used"]
    assert ignored_aux_calls_ast("def f(x):\n    y = aux(x)\n    return y\n") == []
    assert calls_aux("def f(x):\n    # aux(x) would help\n    return x\n")  # text search, comments too
    strict = get_task("coding", ignored_aux_rule="ast")
    sol = P0.payload["canonical_solution"]
    r_paper, _ = TASK.evaluate(P0, AUX_ID, P0.payload["prompt"] + "    aux(numbers)\n" + sol)
    r_ast, _ = strict.evaluate(P0, AUX_ID, P0.payload["prompt"] + "    aux(numbers)\n" + sol)
    # the prompt's docstring closes with a lone triple quote, which the paper's wrapper check
    # reads as a new docstring start (code_utils.py:373-381): the rest is skipped, "wrapper", no +1.0
    assert (r_paper, r_ast) == (3.0, 2.5)
    with pytest.raises(ValueError, match="ignored_aux_rule"):
        get_task("coding", ignored_aux_rule="strict")


def test_timeouts_fail_tests():
    task = get_task("coding", timeout_s=4, per_test_timeout_s=0.2)
    r, info = task.evaluate(P0, AUX_ID, main("    while True:\n        pass\n    return 1\n"))
    assert r == pytest.approx(1.5) and info["tests"]["passed"] == 0
    assert "TestTimeout" in info["tests"]["errors"]["0"]


def test_two_turn_feedback_and_isolation():
    ep = TASK.new_episode(P0)
    main0 = main("    return aux(True)\n")
    r = ep.step({"helper": AUX_ID, "main": main0})
    # the step's reward is shifted by the paper's -4 (raw kept in info); -1.43 is below the
    # early-stop threshold -0.2, so the episode goes on
    assert not r.done and r.reward == pytest.approx(2.0 + 4 / 7 - 4.0)
    assert r.info["raw_reward"] == pytest.approx(2.0 + 4 / 7) and r.info["reward_shift"] == -4.0
    fh, fm = r.feedback["helper"], r.feedback["main"]
    assert fm.startswith("Static and execution diagnostics:\n- Main definition: FOUND")
    assert "- Tests: 1/1 passed" in fm  # the first assert only (sandbox_slice: 1)
    assert "- Aux usage: main calls aux and uses its result" in fm
    assert "- Warning: main appears to be a thin wrapper over aux" in fm
    assert "Aux usage" not in fh
    assert fh.endswith("Revise your aux(...) accordingly. Output ONLY the function code with no extra text.")
    obs_main = ep.observation("main")
    assert [m["role"] for m in obs_main] == ["user", "assistant", "user"] and obs_main[1]["content"] == main0
    assert "HELPER-SECRET-7f3a" not in "\n".join(m["content"] for m in obs_main)
    assert "return aux(True)" not in "\n".join(m["content"] for m in ep.observation("helper"))
    r2 = ep.step({"helper": AUX_ID, "main": main("    return False\n")})
    assert r2.done and "- Tests: 0/1 passed" in r2.feedback["main"]
    assert ("Failed case: assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
            " -> AssertionError") in r2.feedback["main"]
    assert "Revise" not in r2.feedback["helper"]


def test_feedback_without_main_or_with_syntax_error():
    ep = TASK.new_episode(P0)
    r = ep.step({"helper": "nothing", "main": "def helper(a):\n    return a\n"})
    assert r.reward == -4.0 and r.info["raw_reward"] == 0.0  # nothing earned, shifted by the paper's -4
    assert "- Aux definition: MISSING (Aux function not defined)" in r.feedback["helper"]
    assert "- Main definition: MISSING (Main function (has_close_elements) not defined)" in r.feedback["main"]
    assert "NameError: name 'has_close_elements' is not defined" in r.feedback["main"]
    ep = TASK.new_episode(P0)
    r = ep.step({"helper": AUX_ID, "main": main("    return (\n")})
    assert "- Syntax: ERROR (Combined code has syntax error:" in r.feedback["helper"]
    assert "- Tests: no test cases found" in r.feedback["helper"]


def test_determinism_and_clone():
    ep = TASK.new_episode(P0)
    twin = ep.clone()
    a = {"helper": AUX_ID, "main": main("    return aux(True)\n")}
    r1, r2 = ep.step(a), twin.step({"helper": AUX_ID, "main": main("    return False\n")})
    assert r1.reward != r2.reward and ep.turn == twin.turn == 1
    r3 = TASK.new_episode(P0).step(a)
    assert r3.reward == r1.reward and r3.feedback == r1.feedback


def test_prompts_are_the_papers():
    ep = TASK.new_episode(P0)
    h, m = ep.observation("helper")[0]["content"], ep.observation("main")[0]["content"]
    assert h.startswith("Create a helper function for this coding problem.\n\nProblem:\n" + P0.payload["prompt"])
    assert "- Create a helper function named 'aux' that can assist the main function" in h
    assert m.startswith("Solve this coding problem by implementing the required function.")
    assert "You have access to a helper function: aux(...)" in m
    assert m.endswith("def has_close_elements(numbers: List[float], threshold: float):\n"
                      " # your function code here\nreturn result\n")
    assert P0.payload["canonical_solution"].strip() not in h + m


def test_paper_split_and_options():
    train, evl = TASK.problems("train"), TASK.problems("eval")
    assert [p.problem_id for p in train] == [f"HumanEval/{i}" for i in range(33, 163)]  # test[33:163]
    assert [p.problem_id for p in evl] == [f"HumanEval/{i}" for i in range(32)]  # test[:32]
    assert TASK.get_problem("HumanEval/163").split == "none"
    assert (type(TASK).reward_shift, type(TASK).early_stop_threshold) == (-4.0, -0.2)


def test_humaneval_test_split():
    with gzip.open(DATA_PATH, "rt", encoding="utf-8") as f:
        row0 = json.loads(f.readline())
    setup, tests = split_humaneval_tests(row0["test"])
    assert "METADATA" in setup and len(tests) == 7
    assert tests[0] == "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
