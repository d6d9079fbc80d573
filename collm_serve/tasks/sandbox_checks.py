"""Turn a dataset's assert-based test statements into `CallCheck`s, at load time, here.

Why: a test that runs inside the model's process can be forged (an object whose `__eq__` is
always True, a patched stdlib, an audit hook that reads the test...). So the test statements
never enter the sandbox. Each statement is prepared ONCE, in this (trusted) process, with the
problem's preamble and test setup (dataset code) defined:

1. Pairs. `[prefix statements]` + `assert <shape>` where the prefix does not call `candidate`
   and the shape is one of
       candidate(A) == E        E == candidate(A)
       candidate(A) is True / False / None
       candidate(A)             not candidate(A)
       abs(candidate(A) - E) < tol    (also <=, and E - candidate(A))
   -> A and E are evaluated here (after the prefix) and must be plain data; the sandbox gets A,
   the parent keeps E and compares (`sandbox._judge`).
2. Programs. Anything else that calls `candidate` (loops, random inputs, checks through a
   preamble helper like HumanEval/32's `poly`): the statement is run here once with
   `random.seed(seed)` in RECORD mode - every `assert X` is replaced by an evaluation of X whose
   failure is ignored, and `candidate(...)` records its (plain) arguments and returns an inert
   value - which gives the list of calls. The sandbox makes those calls; then the ORIGINAL
   statement runs in a fresh sandbox without the model's code (`sandbox_child._run_checks`),
   `candidate` replaying the plain results and checking that the same calls are made.
   A statement whose calls depend on earlier results cannot be recorded this way: it fails
   loudly at load time (none of HumanEval's 164 problems does).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import random
from typing import Any

from collm_serve.tasks.sandbox import CallCheck
from collm_serve.tasks.sandbox_child import NotPlainData, encode

__all__ = ["prepare_checks", "PROGRAM_SEED"]

PROGRAM_SEED = 1234


class _Inert:
    """What `candidate` returns in record mode: equal to nothing, usable for nothing."""

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]


class _Recorder:
    """`candidate` in record mode: records the plain arguments, then answers with the
    reference solution when there is one (so calls that depend on earlier results are recorded
    as an honest solution would see them), else with an inert value."""

    def __init__(self, reference: Any = None) -> None:
        self.calls: list[tuple] = []
        self.reference = reference

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((encode(args), encode(kwargs)))
        return self.reference(*args, **kwargs) if self.reference is not None else _Inert()


class _SoftAsserts(ast.NodeTransformer):
    """`assert X, msg` -> `__collm_soft(lambda: X)` (evaluated now, failures ignored)."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        lam = ast.Lambda(args=ast.arguments(posonlyargs=[], args=[], vararg=None, kwonlyargs=[],
                                            kw_defaults=[], kwarg=None, defaults=[]),
                         body=self.visit(node.test))
        call = ast.Call(func=ast.Name("__collm_soft", ast.Load()), args=[lam], keywords=[])
        return ast.copy_location(ast.Expr(call), node)


def _soft(fn: Any) -> None:
    try:
        fn()
    except Exception:
        pass


def _is_candidate_call(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "candidate")


def _calls_candidate(node: ast.AST) -> bool:
    return any(_is_candidate_call(n) for n in ast.walk(node))


def _eval(node: ast.AST, ns: dict) -> Any:
    return eval(compile(ast.Expression(node), "<test>", "eval"), ns)  # dataset code, trusted


def _plain(value: Any) -> Any:
    encode(value)  # raises NotPlainData
    return copy.deepcopy(value)


def _call_of(call: ast.Call, ns: dict) -> tuple:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise NotPlainData("starred arguments")
    args = tuple(_eval(a, ns) for a in call.args)
    kwargs = {k.arg: _eval(k.value, ns) for k in call.keywords}
    return (encode(args), encode(kwargs))


def _call_and_other(a: ast.expr, b: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """(the candidate call, the other side) of a two-sided test, either way round; None unless
    exactly one side is a candidate call and the other does not call the candidate."""
    if _is_candidate_call(a) and not _calls_candidate(b):
        return a, b
    if _is_candidate_call(b) and not _calls_candidate(a):
        return b, a
    return None


def _pair(test: ast.expr, ns: dict) -> CallCheck | None:
    """A CallCheck for the shapes of the module docstring, or None."""
    if _is_candidate_call(test):
        return CallCheck((_call_of(test, ns),), "truthy", True)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_candidate_call(test.operand):
        return CallCheck((_call_of(test.operand, ns),), "truthy", False)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(op, ast.Eq):
        sides = _call_and_other(left, right)
        if sides is None:
            return None
        call, other = sides
        return CallCheck((_call_of(call, ns),), "eq", _plain(_eval(other, ns)))
    if isinstance(op, ast.Is) and _is_candidate_call(left) and isinstance(right, ast.Constant) \
            and right.value in (True, False, None) and type(right.value) in (bool, type(None)):
        return CallCheck((_call_of(left, ns),), "is", right.value)
    if isinstance(op, (ast.Lt, ast.LtE)) and isinstance(left, ast.Call) and isinstance(left.func, ast.Name) \
            and left.func.id == "abs" and len(left.args) == 1 and not left.keywords \
            and isinstance(left.args[0], ast.BinOp) and isinstance(left.args[0].op, ast.Sub) \
            and not _calls_candidate(right):
        sides = _call_and_other(left.args[0].left, left.args[0].right)
        if sides is None:
            return None
        call, other = sides
        tol = _eval(right, ns)
        expected = _eval(other, ns)
        if type(tol) not in (int, float) or type(expected) not in (int, float):
            return None
        return CallCheck((_call_of(call, ns),), "close", expected, float(tol),
                         isinstance(op, ast.LtE))
    return None


def _record(source: str, ns: dict, reference: Any) -> tuple:
    tree = _SoftAsserts().visit(ast.parse(source))
    ast.fix_missing_locations(tree)
    rec = _Recorder(reference)
    run_ns = dict(ns, candidate=rec, __collm_soft=_soft)
    random.seed(PROGRAM_SEED)
    exec(compile(tree, "<record>", "exec"), run_ns)  # dataset code, trusted
    return tuple(rec.calls)


def prepare_checks(tests: list[str], prelude: str, entry_point: str = "",
                   reference: str = "") -> list[CallCheck]:
    """One CallCheck per test statement (each a prefix + an assert on `candidate`).

    A program check also binds `entry_point` to `candidate` (HumanEval/33's check calls
    `sort_third` by name, which the original harness resolved to the model's function).
    `reference` (dataset code: the prompt + canonical solution) answers the calls while a
    program check is recorded.

    `prelude` (the problem's preamble + the test file's code outside `check`) is dataset code,
    run here. Raises ValueError naming the statement when one cannot be prepared."""
    base: dict = {"__name__": "__collm_check__"}
    exec(compile(prelude, "<prelude>", "exec"), base)  # dataset code, trusted
    ref_fn = None
    if reference and entry_point:
        ref_ns: dict = {"__name__": "__collm_reference__"}
        exec(compile(reference, "<reference>", "exec"), ref_ns)  # dataset code, trusted
        ref_fn = ref_ns[entry_point]
    out: list[CallCheck] = []
    for src in tests:
        body = ast.parse(src).body
        check = None
        *prefix, last = body
        if isinstance(last, ast.Assert) and not any(_calls_candidate(s) for s in prefix):
            ns = dict(base)
            try:
                exec(compile(ast.Module(prefix, []), "<test>", "exec"), ns)
                check = _pair(last.test, ns)
            except (NotPlainData, Exception):
                check = None
        if check is None:
            if entry_point:
                src = f"{entry_point} = candidate\n{src}"
            try:
                calls = _record(src, base, ref_fn)
            except Exception as e:
                raise ValueError(f"cannot prepare test {src[:120]!r}: {type(e).__name__}: {e}") from e
            if not calls:
                raise ValueError(f"test {src[:120]!r} makes no call of candidate")
            check = CallCheck(calls, "program", source=src, prelude=prelude, seed=PROGRAM_SEED)
        if check.kind != "program":
            check = dataclasses.replace(check, source=src)  # for logs; never sent anywhere
        out.append(check)
    return out
