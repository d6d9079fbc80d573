"""Sandbox cost: joint answers evaluated per second on the 164 canonical HumanEval solutions,
the bubblewrap sandbox (issue 11) ÷ the harness it replaced, in one run.

The old harness (unshare + audit hook, verdicts written by the child) is read from git history
(`OLD_COMMIT`), not kept in the tree: it is the insecure design, only a yardstick here. Each
problem is evaluated by both, interleaved (old, new, old, new...), so machine load hits both
alike. An "answer" = the problem's prompt + canonical solution against all its tests.

    python bench/sandbox.py [--rounds 1]     (bench/run_all.py records its rows)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table  # noqa: E402
from collm_serve.tasks.coding import CodingTask  # noqa: E402
from collm_serve.tasks.sandbox import CallCheck, run_tests  # noqa: E402

OLD_COMMIT = "555daae9511f1144df64e440180d2721f1447d29"  # last commit with the old harness


def load_old_harness():
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:collm_serve/tasks/sandbox.py"],
                             capture_output=True, check=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"bench/sandbox.py needs the git history (commit {OLD_COMMIT[:10]}): {e}")
    path = Path(tempfile.mkdtemp(prefix="collm_bench_")) / "old_sandbox.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        path.unlink()
        path.parent.rmdir()
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    old = load_old_harness()
    task = CodingTask()
    problems = task.all_problems()
    load = os.getloadavg()[0]
    t_old, t_new, fails_old, fails_new = [], [], 0, 0
    run_tests("def f():\n    return 1", [CallCheck.call(expected=1)], entry_point="f")  # probe + pool
    old.run_tests("x = 1", ["assert x == 1"])
    for _ in range(args.rounds):
        for p in problems:
            pl = p.payload
            prog = pl["prompt"] + pl["canonical_solution"]
            t0 = time.perf_counter()
            r = old.run_tests(prog, pl["tests"], setup=f"{pl['test_setup']}\ncandidate = {pl['entry_point']}\n",
                              limits=old.SandboxLimits(timeout_s=10, per_test_timeout_s=3))
            t_old.append(time.perf_counter() - t0)
            fails_old += r.num_passed != r.num_tests
            t0 = time.perf_counter()
            r = run_tests(prog, [CallCheck.from_dict(c) for c in pl["checks"]], entry_point=pl["entry_point"],
                          rebind=pl["preamble"], limits=task.limits)
            t_new.append(time.perf_counter() - t0)
            fails_new += r.num_passed != r.num_tests
    load_after = os.getloadavg()[0]
    rate_old, rate_new = len(t_old) / sum(t_old), len(t_new) / sum(t_new)
    median_new = statistics.median(t_new)
    # through bench.common.print_table, so bench/run_all.py records these rows in latest.md
    print_table(f"sandbox: {len(problems)} canonical HumanEval solutions x {args.rounds} round(s), "
                f"old and new harness interleaved", [
        ("new ÷ old answers/s", f"{rate_new / rate_old:.2f}", "bwrap + seccomp, parent verdict ÷ unshare + audit hook "
                                                             f"({OLD_COMMIT[:7]}); > 1: new faster"),
        ("new: median s per answer", f"{median_new:.3f}",
         f"goal <= 1 s ({'met' if median_new <= 1.0 else 'NOT met'}); p90 {sorted(t_new)[int(0.9 * len(t_new))]:.3f}; "
         f"{rate_new:.2f} answers/s"),
        ("old: median s per answer", f"{statistics.median(t_old):.3f}",
         f"p90 {sorted(t_old)[int(0.9 * len(t_old))]:.3f}; {rate_old:.2f} answers/s"),
        ("answers not fully passing, old and new", f"{fails_old}, {fails_new}", "canonical solutions: 0 expected"),
        ("1-min load average before and after", f"{load:.1f}, {load_after:.1f}",
         "a trailing average: under run_all it still holds the benchmark that ran just before"),
    ])


if __name__ == "__main__":
    main()
