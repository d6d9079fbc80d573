"""The parent's side of a run's bytes: budgeted decoding of the results, and the verdicts.

Why separate: `sandbox.py` is the contract and the run's sequence; this module is everything the
parent does with what came back - decode the worker's frames within a budget (issue 27: a record
flood may cost the parent `read_bytes` / `read_nodes` / DECODE_S, never more), turn statuses into
reasons, and compare plain results with the expected values (which never entered the sandbox).
`_LAYERS` is looked up as `sandbox._LAYERS` at call time (the tests swap it).
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from collm_serve.tasks.sandbox_child import ERROR_CHARS, decode, encode, unpack_frames

if TYPE_CHECKING:
    from collm_serve.tasks.sandbox import CallCheck, SandboxLimits

EXCERPT_CHARS = 2000  # stdout / stderr excerpt kept in the result


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + f"... [{len(text) - EXCERPT_CHARS} chars cut]"


def _status_reason(status: Any, why: Any) -> str:
    if why in ("timeout", "output_limit", "inode_limit"):
        return "per_test_timeout" if why == "timeout" else why
    if type(status) is not int:
        return ""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) != signal.SIGKILL:
        return f"signal {os.WTERMSIG(status)}"
    return ""


class _Budget:
    """What the parent may still spend decoding one run (issue 27): values (`read_nodes`),
    frames (the calls a test makes, + 2) and wall time (until `deadline`). None = the weakened
    `record_budget` layer: no limit."""

    def __init__(self, limits: SandboxLimits, deadline: float) -> None:
        self.nodes = [limits.read_nodes]
        self.deadline = deadline
        self.frames = 0

    def spent(self) -> bool:
        return self.nodes[0] < 0 or time.monotonic() > self.deadline


def _worker_results(blob: bytes, ncalls: int, budget: _Budget | None = None) -> tuple[list, str]:
    """Per-call results from a worker's raw frames: ("ok", value) | ("raise", msg) |
    ("verdict", bool) | None; plus the code error. Hostile bytes give None entries; frames past
    the calls' number, values past the budget and time past its deadline are not decoded."""
    results: list = [None] * ncalls
    code_error = ""
    frames = unpack_frames(blob, ncalls + 2) if budget is not None else unpack_frames(blob)
    for head, _ in frames:
        if budget is not None:
            budget.frames += 1
        if "code_error" in head:
            if not code_error:
                code_error = str(head["code_error"])[:ERROR_CHARS] or "error"
            continue
        i = head.get("i")
        if type(i) is not int or not 0 <= i < ncalls or results[i] is not None:
            continue
        if "ok" in head:
            if budget is not None and budget.spent():
                results[i] = ("raise", "no result (read_budget)")
            elif sandbox._LAYERS.guard_decode:
                try:
                    results[i] = ("ok", decode(head["ok"], budget=budget.nodes if budget else None))
                except (ValueError, TypeError, RecursionError, MemoryError, OverflowError) as e:
                    over = budget is not None and budget.nodes[0] < 0
                    results[i] = ("raise", "no result (read_budget)" if over else
                                  f"unreadable result ({type(e).__name__})")
            else:
                results[i] = ("ok", decode(head["ok"]))
        elif "raise" in head:
            results[i] = ("raise", str(head["raise"])[:ERROR_CHARS])
        elif "verdict" in head and not sandbox._LAYERS.parent_verdict:
            results[i] = ("verdict", head["verdict"] is True)
    return results, code_error


def _judge(check: CallCheck, results: list) -> tuple[bool, str]:
    r = results[0]
    if r is None:
        return False, "no result"
    if r[0] == "raise":
        return False, r[1]
    if r[0] == "verdict":  # weakened parent_verdict only
        return r[1], "" if r[1] else "AssertionError"
    value = r[1]
    try:
        if check.kind == "eq":
            ok = value == check.expected
        elif check.kind == "is":
            ok = value is check.expected
        elif check.kind == "truthy":
            ok = bool(value) == check.expected
        else:  # close
            diff = abs(value - check.expected)
            ok = bool(diff <= check.tol if check.inclusive else diff < check.tol)
    except (TypeError, ValueError, OverflowError, ArithmeticError, RecursionError, MemoryError) as e:
        return False, f"{type(e).__name__}: {e}"[:ERROR_CHARS]
    return (True, "") if ok else (False, "AssertionError")


def _encode_result(r: Any) -> Any:
    if r is None:
        return None
    if r[0] == "ok":
        return {"ok": encode(r[1])}
    return {"raise": r[1] if r[0] == "raise" else "verdict"}


# At the end, so that either module may be imported first (uses `sandbox.*` only when called).
from collm_serve.tasks import sandbox  # noqa: E402
