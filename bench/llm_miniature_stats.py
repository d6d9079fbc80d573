"""The LLM miniature's statistics and verdict, exactly as pre-registered in docs/sample-efficiency.md
(Part 1, "Metrics" and "The decision rule"). Kept apart from the runner so the rule's code can be
read (and tested) on its own, and so a report never needs torch.

Only `stage: eval` cells count (tuning cells chose the lr and are never evaluation data).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

from bench.llm_miniature import ALGOS, auc

EQUIV = 0.05  # the refutation-by-equivalence margin on the normalised AUC
THRESHOLD_GAIN = 0.10  # tau_v = base normalised eval return + 0.10
CENSOR_FACTOR = 1.25  # a cell that never reaches tau counts at 1.25 B_v in the CI of medians
REPS = 10_000


def load(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))
            if p.name != "pilot.json"]


def welch_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float]:
    """CI of mean(a) - mean(b), Welch's t (unequal variances); (nan, nan) with < 2 per arm."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    d = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    h = stats.t.ppf(0.5 + level / 2, df) * se
    return d - h, d + h


def welch_one(a: list[float], level: float = 0.95) -> tuple[float, float]:
    """CI of mean(a) (one-sample t)."""
    from scipy import stats

    if len(a) < 2:
        return math.nan, math.nan
    m, se = statistics.fmean(a), statistics.stdev(a) / math.sqrt(len(a))
    h = stats.t.ppf(0.5 + level / 2, len(a) - 1) * se
    return m - h, m + h


def boot_ci(a: list[float], b: list[float], stat=statistics.fmean, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of stat(a) - stat(b), seeds resampled within each arm."""
    rng = random.Random(seed)
    d = sorted(stat(rng.choices(a, k=len(a))) - stat(rng.choices(b, k=len(b))) for _ in range(REPS))
    return d[int(0.025 * (REPS - 1))], d[int(0.975 * (REPS - 1))]


def to_threshold(cell: dict, tau: float) -> float:
    """Joint actions at the first eval point >= tau; +inf when never (censored)."""
    for c in sorted(cell["curve"], key=lambda c: c["fraction"]):
        if c["eval_return"] >= tau:
            return float(c["joint_actions"])
    return math.inf


def summarize(cells: list[dict]) -> dict:
    """Per variant: per algorithm AUCs / gains / joint actions to tau; Deltas with CIs; verdict."""
    out = {}
    ev = [c for c in cells if c.get("stage") == "eval"]
    for v in sorted({c["variant"] for c in ev}):
        vc = [c for c in ev if c["variant"] == v]
        base = statistics.fmean(c["curve"][0]["eval_return"] for c in vc)
        tau = base + THRESHOLD_GAIN
        budget = max(c["budget_joint_actions"] for c in vc)
        algos = {}
        for a in ALGOS:
            ac = [c for c in vc if c["algo"] == a]
            if not ac:
                continue
            aucs = [auc(c["curve"]) for c in ac]
            gains = [c["curve"][-1]["eval_return"] - c["curve"][0]["eval_return"] for c in ac]
            hits = [to_threshold(c, tau) for c in ac]
            algos[a] = {"n": len(ac), "lr": ac[0]["lr"], "seeds": [c["seed"] for c in ac], "auc": aucs,
                        "auc_mean": statistics.fmean(aucs),
                        "auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else math.nan,
                        "gain": gains, "gain_ci": welch_one(gains), "to_tau": hits,
                        "to_tau_median": statistics.median(hits), "reached": sum(not math.isinf(h) for h in hits)}
        row = {"base": base, "tau": tau, "budget": budget, "algos": algos, "deltas": {}}
        for num, den in (("cc", "magrpo"), ("dc", "cc")):
            if num in algos and den in algos:
                A, B = algos[num]["auc"], algos[den]["auc"]
                cens = lambda h: [min(x, CENSOR_FACTOR * budget) for x in h]  # noqa: E731
                row["deltas"][f"{num}-{den}"] = {
                    "delta": statistics.fmean(A) - statistics.fmean(B), "boot": boot_ci(A, B),
                    "welch": welch_ci(A, B),
                    "to_tau_median_diff_boot": boot_ci(cens(algos[num]["to_tau"]), cens(algos[den]["to_tau"]),
                                                       statistics.median)}
        row["learns"] = any(a["gain_ci"][0] > 0 for a in algos.values())
        row["verdict"] = verdict(row)
        out[v] = row
    if "long" in out and "short" in out and "cc-magrpo" in out["long"]["deltas"] and "cc-magrpo" in out["short"]["deltas"]:
        L, S = out["long"]["algos"], out["short"]["algos"]
        rng = random.Random(1)
        m = statistics.fmean
        d = sorted((m(rng.choices(L["cc"]["auc"], k=L["cc"]["n"])) - m(rng.choices(L["magrpo"]["auc"], k=L["magrpo"]["n"])))
                   - (m(rng.choices(S["cc"]["auc"], k=S["cc"]["n"])) - m(rng.choices(S["magrpo"]["auc"], k=S["magrpo"]["n"])))
                   for _ in range(REPS))
        out["interaction"] = {"delta": out["long"]["deltas"]["cc-magrpo"]["delta"] - out["short"]["deltas"]["cc-magrpo"]["delta"],
                              "boot": (d[int(0.025 * (REPS - 1))], d[int(0.975 * (REPS - 1))])}
    return out


def verdict(row: dict) -> str:
    """The pre-registered rule for CC vs Monte Carlo on one variant."""
    if not row["learns"]:
        return "inconclusive (no learning at this budget)"
    d = row["deltas"].get("cc-magrpo")
    if d is None or any(math.isnan(x) for x in d["welch"]):
        return "incomplete (needs >= 2 eval seeds of cc and magrpo)"
    (bl, bh), (wl, wh) = d["boot"], d["welch"]
    al = row["algos"]
    if bl > 0 and wl > 0 and al["cc"]["to_tau_median"] <= al["magrpo"]["to_tau_median"]:
        return "CC better (confirms on this variant)"
    if bh < 0 and wh < 0:
        return "Monte Carlo better (refutes on this variant)"
    if -EQUIV <= bl and bh <= EQUIV and -EQUIV <= wl and wh <= EQUIV:
        return "equivalent within 0.05 (refutes 'substantially fewer samples')"
    return "inconclusive"


def report(out_dir: Path) -> str:
    s = summarize(load(out_dir))
    if not s:
        return f"no evaluation cells under {out_dir} yet"
    lines = []
    for v, row in s.items():
        if not isinstance(row, dict) or "algos" not in row:
            continue
        lines.append(f"\n## {v}: base normalised eval return {row['base']:.3f}, tau {row['tau']:.3f}, "
                     f"budget {row['budget']} joint actions; learning floor passed: {row['learns']}")
        lines.append("| algo | lr | seeds | AUC mean (sd) | final - base (Welch 95%) | joint actions to tau (median; reached) |")
        lines.append("|---|---|---|---|---|---|")
        for a, r in row["algos"].items():
            lo, hi = r["gain_ci"]
            lines.append(f"| {a} | {r['lr']:g} | {r['n']} | {r['auc_mean']:.3f} ({r['auc_sd']:.3f}) | "
                         f"{statistics.fmean(r['gain']):+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                         f"{'> ' + str(row['budget']) if math.isinf(r['to_tau_median']) else int(r['to_tau_median'])}"
                         f"; {r['reached']}/{r['n']} |")
        for k, d in row["deltas"].items():
            lines.append(f"- Delta AUC {k}: {d['delta']:+.3f}, bootstrap [{d['boot'][0]:+.3f}, {d['boot'][1]:+.3f}], "
                         f"Welch [{d['welch'][0]:+.3f}, {d['welch'][1]:+.3f}]; difference of median joint actions "
                         f"to tau, bootstrap [{d['to_tau_median_diff_boot'][0]:+.0f}, {d['to_tau_median_diff_boot'][1]:+.0f}]")
        lines.append(f"- **verdict ({v})**: {row['verdict']}")
    if "interaction" in s:
        i = s["interaction"]
        lines.append(f"\nDelta_long - Delta_short: {i['delta']:+.3f}, bootstrap [{i['boot'][0]:+.3f}, {i['boot'][1]:+.3f}]")
    return "\n".join(lines)


__all__ = ["boot_ci", "load", "report", "summarize", "to_threshold", "verdict", "welch_ci"]
