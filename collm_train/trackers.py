"""Optional experiment trackers: Weights & Biases and MLflow, each only when its package is installed.

`collm-train --tracker wandb --tracker mlflow ...` sends the run's hyper-parameters once and every
iteration's scalars (the same namespaced names as TensorBoard and metrics.jsonl: `losses/actor`,
`charts/return`, ...) to the tracker's own client library. Nothing here is imported unless asked
for; `check_trackers` runs before any model loads so a missing package is a one-line error, not a
crash after training. Settings come from each library's own environment variables
(WANDB_PROJECT, WANDB_MODE, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, ...).
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRACKERS = ("wandb", "mlflow")


class TrackerUnavailable(RuntimeError):
    """A tracker was asked for but its package is not installed."""


def check_trackers(names: Sequence[str]) -> None:
    """Refuse trackers whose package is missing (cheap: no import of the package itself)."""
    from importlib.util import find_spec

    for name in names:
        if name not in TRACKERS:
            raise TrackerUnavailable(f"--tracker {name}: unknown tracker; use one of {', '.join(TRACKERS)}")
        if find_spec(name) is None:
            raise TrackerUnavailable(f"--tracker {name}: the {name} package is not installed; "
                                     f"pip install {name} (or drop --tracker {name})")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


class WandbTracker:
    """wandb.init once per run (resumable: the run name is the wandb id), run.log per iteration."""

    def __init__(self, run_name: str, run_dir: Path, hparams: dict):
        wandb = importlib.import_module("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "collm"), name=run_name, id=run_name,
                              resume="allow", dir=str(run_dir), config=hparams)

    def log(self, iteration: int, metrics: dict[str, Any]) -> None:
        self.run.log(_scalars(metrics), step=iteration)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """One MLflow run tagged `collm.run=<run name>`: params once, metrics per iteration."""

    def __init__(self, run_name: str, run_dir: Path, hparams: dict):
        self.mlflow = importlib.import_module("mlflow")
        self.mlflow.start_run(run_name=run_name, tags={"collm.run": run_name})
        # MLflow params are short strings; long values (paths, lists) are cut, not refused
        self.mlflow.log_params({k: str(v)[:500] for k, v in _flat(hparams).items()})

    def log(self, iteration: int, metrics: dict[str, Any]) -> None:
        self.mlflow.log_metrics(_scalars(metrics), step=iteration)

    def close(self) -> None:
        self.mlflow.end_run()


_CLASSES = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(names: Sequence[str], run_name: str, run_dir: Path, hparams: dict) -> list:
    check_trackers(names)
    return [_CLASSES[n](run_name, Path(run_dir), hparams) for n in dict.fromkeys(names)]
