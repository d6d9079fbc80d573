"""Model text never breaks or stalls the parent, and the trace store takes any string
(issue 27, items 3 to 5).

The reward's reading of model code runs in the orchestrator / trainer process, so a hostile
answer must neither raise out of `evaluate` / `step` nor hold the GIL for long; every text a
model, a task or a test produces must be storable. Each guard has a proof that its test can
fail: `test_can_fail_*` below removes that one guard (in-process with monkeypatch, or in a
child process where the unguarded code would run for tens of seconds) and expects the test's
check to fail, as tests/reliability/test_can_fail.py does for the agent service.

Timing bounds are generous (`BOUND_S`, 2 s) against inputs that took 13 s and more without
the guard; nothing here measures anything tight.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collm_serve.tasks import TASKS, get_task
from collm_serve.tasks import coding, coding_checks, voxel
from collm_serve.traces import codec
from collm_serve.traces.records import TurnRecord
from collm_serve.traces.store import TraceStore
from tests.traces.helpers import make_action, make_episode, make_turn

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 2.0
CODING = get_task("coding")
P0 = CODING.get_problem("HumanEval/0")
SIG0 = "def has_close_elements(numbers, threshold):\n"
AUX = "def aux(x):\n    return x\n"
PAPER_WRAPPER_REGEX = r"(\w+)\s*=\s*aux\s*\("  # code_utils.py:410 @11f24c3, quadratic under search
WORD = 60_000  # a 2-line main whose first line is one word: ~30 s under the paper's regex here
DEEP = {  # each raised RecursionError or MemoryError out of evaluate before the guard
    "unary_minus": "-" * 10_000 + "1",
    "not_chain": "not " * 5_000 + "x",
    "subscripts": "x" + "[0]" * 10_000,
}
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=400)  # surrogates too
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def expect_failure(check, *args, match: str = "") -> str:
    """`check(*args)` must fail (AssertionError, or the exception the guard stopped)."""
    with pytest.raises(BaseException) as failed:
        check(*args)
    message = f"{type(failed.value).__name__}: {failed.value}"
    print(f"\n{check.__name__} without its guard failed as it should: {message[:300]}")
    assert match in message, message
    return message


# ---------------------------------------------------------------- the coding reward's analysis

def two_line_main(word: int = WORD) -> str:
    return f"{SIG0}    {'a' * word}\n    return x\n"


def check_wrapper_check_is_linear() -> None:
    start = time.monotonic()
    assert coding_checks.is_thin_wrapper(two_line_main()) is False
    facts, _ = CODING.facts(P0, AUX, two_line_main())
    elapsed = time.monotonic() - start
    assert not facts.main_is_wrapper
    assert elapsed < BOUND_S, f"thin-wrapper check took {elapsed:.1f} s on a {WORD}-char word"


def test_thin_wrapper_check_does_not_backtrack():
    check_wrapper_check_is_linear()


@given(st.text(alphabet="ab_ =aux(\t1é.", max_size=24))
@SETTINGS
def test_linear_wrapper_regex_matches_the_papers(line):
    """The rewritten pattern finds the same assignment, with the same name, as the paper's."""
    theirs = re.search(PAPER_WRAPPER_REGEX, line)
    ours = coding_checks._ASSIGNED_AUX.search(line)
    assert (theirs and theirs.group(1)) == (ours and ours.group(1))


def check_deep_expression(name: str) -> None:
    main = f"{SIG0}    return {DEEP[name]}\n"
    reward, info = CODING.evaluate(P0, AUX, main)  # the sandbox is never reached: syntax stops it
    assert info["level"] == 1 and reward == pytest.approx(1.0), info
    assert re.search(r"RecursionError|MemoryError", info["syntax_error"]["msg"]), info["syntax_error"]
    step = CODING.new_episode(P0).step({"helper": AUX, "main": main})
    assert "Syntax: ERROR" in step.feedback["main"]


@pytest.mark.parametrize("name", sorted(DEEP))
def test_deeply_nested_code_is_a_syntax_level_with_its_reason(name):
    check_deep_expression(name)


OVERSIZE_MAIN = SIG0 + "    return 1\n" + "#" * coding_checks.MAX_ANALYSED_CHARS


def check_oversize_answer() -> None:
    main = OVERSIZE_MAIN
    start = time.monotonic()
    reward, info = CODING.evaluate(P0, AUX, main)
    assert time.monotonic() - start < BOUND_S
    assert info["level"] == 0 and "not analysed" in info.get("analysis_error", ""), info
    assert "not analysed" in info["main_message"]


def test_oversize_answer_is_refused_with_a_reason():
    check_oversize_answer()


def check_analysis_failure_is_a_level(monkeypatch) -> None:
    def broken(main_func):
        raise MemoryError("simulated")

    monkeypatch.setattr(coding, "is_thin_wrapper", broken)
    reward, info = CODING.evaluate(P0, AUX, SIG0 + "    return aux(1)\n")
    assert (reward, info["level"]) == (0.0, 0), info
    assert "MemoryError" in info["analysis_error"]
    step = CODING.new_episode(P0).step({"helper": AUX, "main": SIG0 + "    return aux(1)\n"})
    assert "MemoryError" in step.feedback["main"]


def test_any_analysis_failure_is_reward_level_zero_with_a_reason(monkeypatch):
    check_analysis_failure_is_a_level(monkeypatch)


def check_long_coordinate() -> None:
    line = "/setblock " + "1" * 5_000 + " 0 0 red_wool"
    commands, invalid = voxel.parse_commands(line, frozenset({"red_wool"}), (5, 5, 5))
    assert commands == [] and [i.reason for i in invalid] == ["out_of_bounds"]


def test_build_task_coordinate_too_long_for_int():
    check_long_coordinate()


# ---------------------------------------------------------------- every task, arbitrary text

def _first_problem(task):
    return task.problems("eval")[0]  # coding: HumanEval/0, whose entry point SIG0 defines


@pytest.mark.parametrize("name", TASKS)
def test_every_task_takes_arbitrary_text(name):
    """Whatever each agent writes, a step returns a finite reward, text feedback and a
    JSON-storable info (the store round trip of any text is the test further down)."""
    check_any_text(name)


HOSTILE = [  # always tried, each as every agent's answer, besides the generated texts
    "/setblock 1 2 3 stone\n" * 3, "/fill 0 0 0 " + "9" * 5000 + " 1 1 stone",
    "/setblock " + "1" * 5000 + " 0 0 red_wool", "```python\n" + "(" * 300 + "\n```",
    f"{SIG0}    return {DEEP['unary_minus']}\n", two_line_main(2000), "\x00" * 50, "\ud800\udfff",
]


def check_any_text(name: str) -> None:
    task = get_task(name)
    problem = _first_problem(task)

    @given(st.tuples(*[ANY_TEXT for _ in task.agents]))
    @SETTINGS
    def run(answers):
        episode = task.new_episode(problem)
        result = episode.step(dict(zip(task.agents, answers)))
        assert math.isfinite(result.reward)
        assert all(isinstance(f, str) for f in result.feedback.values())
        json.loads(codec.dumps(result.info, "info"))

    for text in HOSTILE:
        run = example(tuple(text for _ in task.agents))(run)
    if name == "coding":  # arbitrary text reaches the sandbox only with main defined and parsing
        with pytest.MonkeyPatch.context() as mp:
            no_sandbox(mp, "")
            run()
    else:
        run()


# ---------------------------------------------------------------- the trace store

def no_sandbox(mp: pytest.MonkeyPatch, error: str) -> None:
    """The coding task's sandbox call replaced by `fake_run_tests(error)` (under whichever name
    coding.py imports it)."""
    for name in ("run_tests", "run_tests_retried"):
        if hasattr(coding, name):
            mp.setattr(coding, name, fake_run_tests(error))


def fake_run_tests(error: str):
    """run_tests' result shape with every test failing on `error` (the sandbox is not what
    these tests are about: a test error message carrying a lone surrogate is)."""
    def run_tests(program, checks, **kw):
        outcomes = tuple(SimpleNamespace(index=i, passed=False, error=error) for i in range(len(checks)))
        return SimpleNamespace(num_passed=0, num_tests=len(checks), pass_fraction=0.0,
                               outcomes=outcomes, code_error="", setup_error="", timed_out=False,
                               killed_reason="", duration_s=0.01)
    return run_tests


def check_surrogate_through_feedback(tmp_path, monkeypatch) -> None:
    error = "AssertionError: expected 'caf\udce9' got '\ud800'"
    no_sandbox(monkeypatch, error)
    episode = CODING.new_episode(P0)
    main = SIG0 + "    return aux(numbers)\n"
    result = episode.step({"helper": AUX, "main": main})
    assert "\ud800" in result.feedback["main"]
    with TraceStore(tmp_path / "t.db") as store:
        eid = store.begin_episode(make_episode())
        turn = TurnRecord(turn_index=0, actions=[make_action(a, 1) for a in ("helper", "main")],
                          reward=result.reward, feedback=result.feedback, done=result.done,
                          info=result.info)
        turn.actions[1].response_text = main + "# \udce9"
        store.append_turn(eid, turn)
        store.finish_episode(eid, "failed", None, f"episode error: {error}")
        back = store.get_episode(eid)
    assert back.turns[0].feedback == result.feedback
    assert back.turns[0].info["tests"]["errors"]["0"] == error
    assert back.turns[0].actions[1].response_text == main + "# \udce9"
    assert back.failure_reason == f"episode error: {error}"


def test_lone_surrogate_through_feedback_into_the_store(tmp_path, monkeypatch):
    check_surrogate_through_feedback(tmp_path, monkeypatch)


def test_nul_and_a_huge_line_round_trip(tmp_path):
    text = "a\x00b" + "x" * (4 << 20) + "\x00"
    with TraceStore(tmp_path / "t.db") as store:
        eid = store.begin_episode(make_episode())
        turn = make_turn(0, None, 1)
        turn.actions[0].response_text = text
        turn.feedback = {"helper": text, "main": "\x00"}
        store.append_turn(eid, turn)
        back = store.get_episode(eid).turns[0]
    assert back.actions[0].response_text == text and back.feedback == turn.feedback


def test_a_failed_write_keeps_the_earlier_turns(tmp_path):
    """One transaction per turn: a turn the store refuses fails alone; the earlier turns stay,
    and the episode can still be closed with any reason."""
    with TraceStore(tmp_path / "t.db") as store:
        eid = store.begin_episode(make_episode())
        first = make_turn(0, None, 1)
        store.append_turn(eid, first)
        bad = make_turn(1, first.turn_id, 2)
        bad.reward = float("nan")
        with pytest.raises(ValueError, match="finite"):
            store.append_turn(eid, bad)
        store.finish_episode(eid, "failed", None, "store error: \ud800")
        back = store.get_episode(eid)
    assert [t.turn_index for t in back.turns] == [0] and back.failure_reason == "store error: \ud800"


def utf16_normal(text: str) -> str:
    """What JSON gives back: a high surrogate followed by a low one is one character."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")


def check_store_round_trip(tmp_path, text: str, key: str) -> None:
    with TraceStore(tmp_path / "p.db") as store:
        eid = store.begin_episode(make_episode(metadata={key: text}))
        turn = make_turn(0, None, 1)
        turn.actions[0].response_text = text
        turn.actions[0].observation = [{"role": "user", "content": text}]
        turn.feedback = {"helper": text, "main": text}
        turn.info = {key: [text]}
        store.append_turn(eid, turn)
        store.finish_episode(eid, "failed", None, text)
        back = store.get_episode(eid)
    t = back.turns[0]
    assert t.actions[0].response_text == text and back.failure_reason == text  # text: exact
    j = utf16_normal(text)
    assert t.feedback == {"helper": j, "main": j} and t.info == {utf16_normal(key): [j]}
    assert t.actions[0].observation == [{"role": "user", "content": j}]
    assert back.metadata == {utf16_normal(key): j}


@given(ANY_TEXT, ANY_TEXT)
@SETTINGS
def test_store_round_trips_any_text(tmp_path_factory, text, key):
    check_store_round_trip(tmp_path_factory.mktemp("rt"), text, key)


# ---------------------------------------------------------------- each test fails without its guard

def test_can_fail_backtracking_without_the_linear_regex():
    """The paper's pattern back in: the same check runs in a child and is still running when
    killed at 3 x BOUND_S (it needs ~30 s)."""
    code = ("import re\nfrom collm_serve.tasks import coding_checks\n"
            f"coding_checks._ASSIGNED_AUX = re.compile({PAPER_WRAPPER_REGEX!r})\n"
            "from tests.reliability.test_model_text import check_wrapper_check_is_linear\n"
            "check_wrapper_check_is_linear()\n")
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=3 * BOUND_S,
                       capture_output=True, check=False)
    print(f"\nthe wrapper check with the paper's regex was still running after "
          f"{time.monotonic() - start:.1f} s (bound {BOUND_S} s)")


def _unguarded_parse(code: str):
    """parse_code as the reward had it: SyntaxError, ValueError and OverflowError only."""
    import ast
    try:
        return ast.parse(code), None
    except SyntaxError as e:
        return None, {"line": e.lineno, "offset": e.offset, "msg": e.msg, "text": str(e)}
    except (ValueError, OverflowError) as e:
        return None, {"line": None, "offset": None, "msg": str(e), "text": str(e)}


@pytest.mark.parametrize("name", sorted(DEEP))
def test_can_fail_deep_code_without_the_parse_guard(name, monkeypatch):
    monkeypatch.setattr(coding_checks, "parse_code", _unguarded_parse)
    monkeypatch.setattr(coding, "parse_code", _unguarded_parse)
    # with evaluate's floor still in place the answer drops to level 0 (no syntax reason) ...
    expect_failure(check_deep_expression, name, match="AssertionError")
    # ... and without the floor too, the error escapes evaluate as it did before
    monkeypatch.setattr(coding.CodingTask, "safe_facts", coding.CodingTask.facts)
    expect_failure(check_deep_expression, name, match="Error")


def test_can_fail_analysis_failure_without_the_floor(monkeypatch):
    monkeypatch.setattr(coding.CodingTask, "safe_facts", coding.CodingTask.facts)
    expect_failure(check_analysis_failure_is_a_level, monkeypatch, match="MemoryError: simulated")


def test_can_fail_oversize_answer_without_the_size_bound(monkeypatch):
    monkeypatch.setattr(coding_checks, "MAX_ANALYSED_CHARS", 1 << 40)
    no_sandbox(monkeypatch, "AssertionError")
    expect_failure(check_oversize_answer, match="AssertionError")


def test_can_fail_long_coordinate_without_the_guard(monkeypatch):
    monkeypatch.setattr(voxel, "_cell", lambda m: (int(m.group(1)), int(m.group(2)), int(m.group(3))))
    expect_failure(check_long_coordinate, match="Exceeds the limit")


@pytest.mark.parametrize("name", ["build", "coding"])
def test_can_fail_any_text_without_the_parsing_guards(name, monkeypatch):
    """The property test finds the hostile answers once their guards are gone."""
    monkeypatch.setattr(voxel, "_cell", lambda m: (int(m.group(1)), int(m.group(2)), int(m.group(3))))
    monkeypatch.setattr(coding_checks, "parse_code", _unguarded_parse)
    monkeypatch.setattr(coding, "parse_code", _unguarded_parse)
    monkeypatch.setattr(coding.CodingTask, "safe_facts", coding.CodingTask.facts)
    expect_failure(check_any_text, name, match="Error")


def test_can_fail_store_without_surrogate_handling(tmp_path, monkeypatch):
    monkeypatch.setattr(codec, "_SURROGATE", re.compile("(?!)"))  # never matches: no escaping
    expect_failure(check_surrogate_through_feedback, tmp_path, monkeypatch, match="UnicodeEncodeError")
    expect_failure(check_store_round_trip, tmp_path, "\ud800", "k", match="UnicodeEncodeError")
