"""`coding`: cooperative HumanEval (the paper's CoopHumanEval/HumanEval setting), 2 turns.

Data: `data/HumanEval.jsonl.gz` (OpenAI HumanEval, 164 problems, MIT licence in
`data/HumanEval.LICENSE`; Chen et al. 2021, https://github.com/openai/human-eval).
Split by position: HumanEval/0..131 -> "train" (132), HumanEval/132..163 -> "eval" (32).

Agents and protocol:
- `helper` writes ONE auxiliary function named `aux` (AUX_NAME) and must not write the entry point.
- `main` writes the entry-point function named by the problem (e.g. `has_close_elements`) and
  may call `aux`; it must not define `aux` itself. Neither sees the other's code, ever: turn-2
  feedback reports the JOINT outcome (structure, which part failed to parse - with line and
  message only for the agent's own code -, which dataset asserts failed with a short
  exception message, whether main used aux) plus the agent's own previous answer (its history).
  Exception messages come from running the joint program and are cut to ERROR_SHOWN_CHARS.
- Code is extracted from ```python fenced blocks (all of them, joined), else from an
  unterminated fence, else the raw response.
- The joint program = the problem prompt's preamble (its imports and any functions it gives,
  everything before `def <entry_point>`) + helper code + main code. It runs ONLY in the sandbox
  (`sandbox.run_tests`): each top-level statement of the dataset's `check(candidate)` that
  contains an assert and uses `candidate` is one test (preceded by the check's plain setup
  statements); `assert True` lines are dropped.

Reward (joint, in [0, 4], gated levels - a level is only scored when the previous one passed):
  1. structure  +STRUCTURE_REWARD (0.5): helper defines `aux` and main defines the entry point
                 (top-level `def`, checked on the text).
  2. syntax     +SYNTAX_REWARD (0.5): each part and the joint program compile.
  3. tests      +TESTS_REWARD (2.5) x fraction of tests passing.
  4. cooperation +COOPERATION_REWARD (0.5): at least one test passes, main does not redefine
                 `aux`, and the entry-point function calls `aux(...)` and uses its value (the
                 call is not a bare expression statement).
Maximum 4.0. `info` records every level; `info["level"]` is the highest level passed (0..4).
"""

from __future__ import annotations

import ast
import gzip
import json
import re
import threading
from pathlib import Path
from typing import Any

from collm_serve.tasks.base import Problem, Task, TaskEpisode, check_split
from collm_serve.tasks.sandbox import CallCheck, SandboxLimits, run_tests
from collm_serve.tasks.sandbox_checks import prepare_checks

DATA_PATH = Path(__file__).parent / "data" / "HumanEval.jsonl.gz"
AUX_NAME = "aux"
NUM_TRAIN = 132  # HumanEval/0..131 train, the remaining 32 eval

STRUCTURE_REWARD = 0.5
SYNTAX_REWARD = 0.5
TESTS_REWARD = 2.5
COOPERATION_REWARD = 0.5
MAX_REWARD = STRUCTURE_REWARD + SYNTAX_REWARD + TESTS_REWARD + COOPERATION_REWARD

FAILING_SHOWN = 3  # failing tests listed in the feedback
TEST_SHOWN_CHARS = 160  # per failing assert shown
ERROR_SHOWN_CHARS = 120  # per exception message shown

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.S | re.I)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.S | re.I)


def extract_code(response: str) -> str:
    """Code of a model response: fenced python blocks, else an unterminated fence, else raw."""
    blocks = _FENCE.findall(response)
    if blocks:
        return "\n\n".join(b.strip("\n") for b in blocks).strip("\n") + "\n"
    m = _OPEN_FENCE.search(response)
    if m:
        return m.group(1).strip("\n") + "\n"
    return response.strip("\n") + "\n" if response.strip() else ""


def defines_function(code: str, name: str) -> bool:
    """A top-level `def name(` in the text (checked before parsing, so it works on bad code)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def split_humaneval_tests(test_src: str) -> tuple[str, list[str]]:
    """(setup, tests) from a HumanEval `test` field: setup = everything outside `check`; each test
    = the check's non-assert statements seen so far + one top-level statement that asserts on
    `candidate`."""
    mod = ast.parse(test_src)
    check = next(n for n in mod.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    setup = "\n".join(ast.unparse(n) for n in mod.body if n is not check)
    prefix: list[str] = []
    tests: list[str] = []
    for stmt in check.body:
        has_assert = any(isinstance(x, ast.Assert) for x in ast.walk(stmt))
        uses_candidate = any(isinstance(x, ast.Name) and x.id == "candidate" for x in ast.walk(stmt))
        if not has_assert:
            prefix.append(ast.unparse(stmt))
        elif uses_candidate:
            tests.append("\n".join([*prefix, ast.unparse(stmt)]))
    return setup, tests


def _prompt_preamble(prompt: str, entry_point: str) -> str:
    m = re.search(rf"^def[ \t]+{re.escape(entry_point)}[ \t]*\(", prompt, re.M)
    return prompt[: m.start()] if m else ""


def _syntax_error(code: str, label: str) -> str:
    """'' when `code` compiles, else 'line N: message' (never the offending source text)."""
    try:
        compile(code, label, "exec")
        return ""
    except SyntaxError as e:
        return f"line {e.lineno}: {e.msg}"
    except (ValueError, OverflowError) as e:  # e.g. null bytes
        return f"{type(e).__name__}: {e}"[:ERROR_SHOWN_CHARS]


def cooperation(main_code: str, entry_point: str) -> dict[str, bool]:
    """Does the entry point call aux(...) and use the value? Does main redefine aux?"""
    info = {"calls_aux": False, "uses_result": False, "redefines_aux": False}
    try:
        tree = ast.parse(main_code)
    except (SyntaxError, ValueError):
        return info
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    info["redefines_aux"] = any(f.name == AUX_NAME for f in funcs)
    entries = [f for f in funcs if f.name == entry_point]
    if not entries:
        return info
    entry = entries[-1]  # the definition that wins
    parents: dict[ast.AST, ast.AST] = {}
    for node in ast.walk(entry):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    for node in ast.walk(entry):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == AUX_NAME:
            info["calls_aux"] = True
            if not isinstance(parents.get(node), ast.Expr):
                info["uses_result"] = True
    return info


class CodingTask(Task):
    name = "coding"

    def __init__(self, num_turns: int = 2, timeout_s: float = 10.0, per_test_timeout_s: float = 3.0):
        if num_turns < 1:
            raise ValueError(f"num_turns must be >= 1, got {num_turns}")
        self.agents = ("helper", "main")
        self.num_turns = num_turns
        self.limits = SandboxLimits(timeout_s=timeout_s, per_test_timeout_s=per_test_timeout_s)
        self._problems: dict[str, list[Problem]] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list[Problem]]:
        with self._lock:
            if self._problems is None:
                out: dict[str, list[Problem]] = {"train": [], "eval": []}
                with gzip.open(DATA_PATH, "rt", encoding="utf-8") as f:
                    rows = [json.loads(line) for line in f if line.strip()]
                for i, row in enumerate(rows):
                    split = "train" if i < NUM_TRAIN else "eval"
                    setup, tests = split_humaneval_tests(row["test"])
                    preamble = _prompt_preamble(row["prompt"], row["entry_point"])
                    payload = {
                        "task_id": row["task_id"],
                        "prompt": row["prompt"],
                        "entry_point": row["entry_point"],
                        "canonical_solution": row["canonical_solution"],
                        "preamble": preamble,
                        "test_setup": setup,
                        "tests": tests,
                        # what the sandbox runs: calls + expected values, judged outside it
                        "checks": [c.to_dict() for c in prepare_checks(
                            tests, prelude=f"{preamble}\n{setup}\n", entry_point=row["entry_point"],
                            reference=row["prompt"] + row["canonical_solution"])],
                    }
                    out[split].append(Problem(row["task_id"], split, payload))
                self._problems = out
            return self._problems

    def problems(self, split: str) -> list[Problem]:
        return list(self._load()[check_split(split)])

    def new_episode(self, problem: Problem) -> CodingEpisode:
        return CodingEpisode(self, problem)

    def evaluate(
        self, problem: Problem, helper_response: str, main_response: str
    ) -> tuple[float, dict[str, Any]]:
        """Reward and level info of one joint answer (stateless; what `step` uses)."""
        p = problem.payload
        entry = p["entry_point"]
        helper_code = extract_code(helper_response)
        main_code = extract_code(main_response)
        info: dict[str, Any] = {"level": 0, "max_reward": MAX_REWARD}
        parts = {"structure": 0.0, "syntax": 0.0, "tests": 0.0, "cooperation": 0.0}
        info["reward_parts"] = parts

        structure = {"helper_defines_aux": defines_function(helper_code, AUX_NAME),
                     "main_defines_entry": defines_function(main_code, entry)}
        structure["ok"] = all(structure.values())
        info["structure"] = structure
        if not structure["ok"]:
            return 0.0, info
        parts["structure"] = STRUCTURE_REWARD
        info["level"] = 1

        program = f"{p['preamble'].rstrip()}\n\n\n{helper_code.rstrip()}\n\n\n{main_code.rstrip()}\n"
        syntax = {"helper_error": _syntax_error(helper_code, "<helper>"),
                  "main_error": _syntax_error(main_code, "<main>")}
        syntax["joint_error"] = "" if any(syntax.values()) else _syntax_error(program, "<joint>")
        syntax["ok"] = not any(syntax.values())
        info["syntax"] = syntax
        if not syntax["ok"]:
            return sum(parts.values()), info
        parts["syntax"] = SYNTAX_REWARD
        info["level"] = 2

        checks = [CallCheck.from_dict(c) for c in p["checks"]]
        result = run_tests(program, checks, entry_point=entry, rebind=p["preamble"],
                           limits=self.limits)
        tests = {
            "passed": result.num_passed,
            "total": result.num_tests,
            "fraction": result.pass_fraction,
            "failing": [o.index for o in result.outcomes if not o.passed],
            "errors": {str(o.index): o.error for o in result.outcomes if not o.passed},
            "code_error": result.code_error,
            "setup_error": result.setup_error,
            "timed_out": result.timed_out,
            "killed_reason": result.killed_reason,
            "duration_s": result.duration_s,
        }
        info["tests"] = tests
        parts["tests"] = TESTS_REWARD * result.pass_fraction
        if result.num_passed == 0:
            return sum(parts.values()), info
        info["level"] = 3

        coop = cooperation(main_code, entry)
        coop["ok"] = coop["calls_aux"] and coop["uses_result"] and not coop["redefines_aux"]
        info["cooperation"] = coop
        if coop["ok"]:
            parts["cooperation"] = COOPERATION_REWARD
            info["level"] = 4
        return sum(parts.values()), info


def _role_prompt(agent: str, payload: dict[str, Any]) -> str:
    entry = payload["entry_point"]
    problem = f"Problem:\n```python\n{payload['prompt'].rstrip()}\n```\n"
    if agent == "helper":
        return (
            "You are HELPER in a two-agent Python coding team. Your partner, MAIN, writes the "
            f"function `{entry}`. You write ONE auxiliary function named `{AUX_NAME}` that MAIN "
            "can call to do part of the work.\n\n"
            f"{problem}\n"
            "Rules:\n"
            f"- Define `def {AUX_NAME}(...)`; you may import standard-library modules.\n"
            f"- Do not define `{entry}`.\n"
            "- Reply with a single ```python code block."
        )
    return (
        "You are MAIN in a two-agent Python coding team. Your partner, HELPER, writes an auxiliary "
        f"function `{AUX_NAME}` that is defined before your code runs (you do not see it).\n\n"
        f"{problem}\n"
        "Rules:\n"
        f"- Define `{entry}` with exactly the signature above.\n"
        f"- Call `{AUX_NAME}(...)` and use its return value where it helps (a bonus is given for "
        "it when tests pass).\n"
        f"- Do not define `{AUX_NAME}` yourself.\n"
        "- Reply with a single ```python code block."
    )


def _feedback(agent: str, payload: dict[str, Any], reward: float, info: dict[str, Any], last: bool) -> str:
    entry = payload["entry_point"]
    me, partner = ("helper", "main") if agent == "helper" else ("main", "helper")
    lines = [f"Feedback on your team's answer (reward {reward:.2f} / {MAX_REWARD:.1f}):"]
    s = info["structure"]
    if not s["ok"]:
        own_ok = s["helper_defines_aux"] if me == "helper" else s["main_defines_entry"]
        partner_ok = s["main_defines_entry"] if me == "helper" else s["helper_defines_aux"]
        own_name = AUX_NAME if me == "helper" else entry
        partner_name = entry if me == "helper" else AUX_NAME
        own_says = "defines" if own_ok else "does NOT define"
        partner_says = "defines" if partner_ok else "does NOT define"
        lines.append(f"- Structure: your code {own_says} `{own_name}`; "
                     f"your partner's code {partner_says} `{partner_name}`.")
    else:
        lines.append("- Structure: ok.")
        syn = info["syntax"]
        if not syn["ok"]:
            own_err, partner_err = syn[f"{me}_error"], syn[f"{partner}_error"]
            if own_err:
                lines.append(f"- Syntax: your code does not parse ({own_err}).")
            if partner_err:
                lines.append("- Syntax: your partner's code does not parse.")
            if syn["joint_error"]:
                lines.append(f"- Syntax: the joint program does not parse ({syn['joint_error']}).")
        else:
            lines.append("- Syntax: ok.")
            t = info["tests"]
            lines.append(f"- Tests: {t['passed']}/{t['total']} passed.")
            if t["code_error"]:
                lines.append(f"  Defining the code raised: {t['code_error'][:ERROR_SHOWN_CHARS]}")
            elif t["setup_error"]:
                lines.append(f"  Preparing the tests raised: {t['setup_error'][:ERROR_SHOWN_CHARS]}")
            else:
                for i in t["failing"][:FAILING_SHOWN]:
                    src = re.sub(r"\bcandidate\b", entry, payload["tests"][i])
                    src = src if len(src) <= TEST_SHOWN_CHARS else src[:TEST_SHOWN_CHARS] + "..."
                    err = t["errors"][str(i)][:ERROR_SHOWN_CHARS]
                    lines.append(f"  FAILED: {src}\n    -> {err}")
                if len(t["failing"]) > FAILING_SHOWN:
                    lines.append(f"  ... and {len(t['failing']) - FAILING_SHOWN} more failing tests.")
            if "cooperation" in info:
                c = info["cooperation"]
                if c["ok"]:
                    lines.append(f"- Cooperation: `{entry}` calls `{AUX_NAME}` and uses its result.")
                elif c["redefines_aux"]:
                    lines.append(f"- Cooperation: MAIN redefines `{AUX_NAME}` instead of using HELPER's.")
                elif c["calls_aux"]:
                    lines.append(f"- Cooperation: `{entry}` calls `{AUX_NAME}` but ignores its result.")
                else:
                    lines.append(f"- Cooperation: `{entry}` does not call `{AUX_NAME}`.")
    if not last:
        own = f"`{AUX_NAME}`" if me == "helper" else f"`{entry}`"
        lines.append(f"\nRevise your function {own} using this feedback. "
                     "Reply with a single ```python code block.")
    return "\n".join(lines)


class CodingEpisode(TaskEpisode):
    task: CodingTask

    def _initial_prompt(self, agent: str) -> str:
        return _role_prompt(agent, self.problem.payload)

    def _evaluate(self, joint_action: dict[str, str]) -> tuple[float, dict[str, str], dict[str, Any]]:
        reward, info = self.task.evaluate(self.problem, joint_action["helper"], joint_action["main"])
        last = self.is_last_turn
        feedback = {a: _feedback(a, self.problem.payload, reward, info, last) for a in self.agents}
        return reward, feedback, info
