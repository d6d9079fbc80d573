"""The demo under both log-prob rules (issue 28, item 2): which one learns more on held-out problems.

    for seed in 0 1; do for rule in sampled paper; do
      ./scripts/demo --logprob-rule $rule --seed $seed --workdir runs/logprob-$rule-s$seed
    done; done
    python bench/demo_logprob_rules.py runs/logprob-*-s*     # this table

`sampled`: the actor's log-prob under the distribution actually sampled from (temperature 0.7,
top-p 0.9; ratios against the logged behaviour log-probs). `paper`: the paper's temperature-1
log-softmax of the raw logits (maac.py:818-830), pi_old recomputed by the learner. Everything
else is the demo's default (CoLLM-CC, 5 iterations x 8 train episodes, lr 1e-4, 32 eval episodes
before and after, the same (problem, seed) pairs). Reads each run's summary.json and eval.db
(the first 32 eval episodes are the "before" pass, the next 32 the "after" pass) and prints:
each run's gain with its paired 95% CI, each rule's gain pooled over its runs (paired over every
eval episode of every run), and paper minus sampled on the AFTER returns, paired per (run seed,
problem, episode seed): the two rules start from the same base model and eval plan.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collm_train.evaluate import paired_comparison  # noqa: E402


def eval_passes(run: Path) -> tuple[dict, dict]:
    """(before, after): return per (problem_id, seed), from the run's eval store in created order."""
    with sqlite3.connect(run / "eval.db") as db:
        rows = db.execute("SELECT problem_id, seed, final_return FROM episodes WHERE status = 'ok' "
                          "ORDER BY created_at").fetchall()
    half = len(rows) // 2
    before = {(p, s): r for p, s, r in rows[:half]}
    after = {(p, s): r for p, s, r in rows[half:]}
    return before, after


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv if (Path(a) / "summary.json").is_file()]
    if not runs:
        print("usage: python bench/demo_logprob_rules.py RUN_DIR ...  (each with summary.json and eval.db)")
        return 2
    per_rule: dict[str, tuple[dict, dict]] = {}
    print("| run | rule | seed | before | after | after − before (paired 95% CI) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for run in sorted(runs):
        s = json.loads((run / "summary.json").read_text())
        before, after = eval_passes(run)
        cmp = paired_comparison(before, after)
        rule, seed = s.get("logprob_rule", "sampled"), s.get("seed", run.name.rsplit("-s", 1)[-1])
        wall = sum(s.get("time_s", {}).values())
        print(f"| {run.name} | {rule} | {seed} | {cmp.before.mean:.3f} | {cmp.after.mean:.3f} | "
              f"{cmp.delta.mean:+.3f} [{cmp.delta.low:+.3f}, {cmp.delta.high:+.3f}] | {wall:.0f} |")
        b, a = per_rule.setdefault(rule, ({}, {}))
        b.update({(seed, *k): v for k, v in before.items()})
        a.update({(seed, *k): v for k, v in after.items()})
    print()
    for rule, (b, a) in sorted(per_rule.items()):
        cmp = paired_comparison(b, a)
        print(f"{rule}: pooled gain {cmp.delta}")
    if {"sampled", "paper"} <= set(per_rule):
        diff = paired_comparison(per_rule["sampled"][1], per_rule["paper"][1])
        print(f"paper − sampled, after training (paired): {diff.delta}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
