"""`collm-train plot`: learning curves per algorithm from the runs' metrics.jsonl files."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

CURVES = ("charts/return", "losses/actor", "losses/critic", "charts/value")


def load_runs(runs_dir: str | Path) -> dict[str, list[dict]]:
    runs = {}
    for path in sorted(Path(runs_dir).rglob("metrics.jsonl")):
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        if rows:
            runs[path.parent.name] = rows
    return runs


def plot_runs(runs_dir: str | Path, out: str | Path, curves: tuple[str, ...] = CURVES) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_runs(runs_dir)
    if not runs:
        raise FileNotFoundError(f"no metrics.jsonl under {runs_dir}")
    present = [c for c in curves if any(c in r for rows in runs.values() for r in rows)]
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.6), squeeze=False)
    by_algo = defaultdict(list)
    for name, rows in runs.items():
        parts = name.split("__")
        by_algo[parts[1] if len(parts) > 1 else name].append((name, rows))
    for ax, curve in zip(axes[0], present):
        for algo, items in sorted(by_algo.items()):
            for i, (name, rows) in enumerate(items):
                xs = [r["iteration"] for r in rows if curve in r]
                ys = [r[curve] for r in rows if curve in r]
                if xs:
                    ax.plot(xs, ys, marker="o", ms=3, label=algo if i == 0 else None)
        ax.set_title(curve)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
