"""One training run: run name, hyper-parameters, TensorBoard scalars, metrics.jsonl, checkpoints.

Run name = `task__algo__seed__time` (CleanRL). Everything a run writes lives in
`<runs>/<run name>/`: `hparams.json`, `metrics.jsonl` (what `collm-train plot` reads),
TensorBoard event files, `checkpoint.pt` (for `--resume`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from collm_serve.adapters.manifest import next_version  # noqa: F401  (one definition, re-exported)


class RunLog:
    def __init__(self, runs_dir: str | Path, task: str, algo: str, seed: int, hparams: dict,
                 resume: str | None = None, write: bool = True):
        name = resume or f"{task}__{algo}__{seed}__{int(time.time())}"
        self.dir = Path(runs_dir) / name
        self.write = write  # False on non-zero torchrun ranks: one writer per run
        self._writer = None
        if not write:
            self.name = name
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if not (self.dir / "hparams.json").exists():
            (self.dir / "hparams.json").write_text(json.dumps(hparams, indent=2, sort_keys=True, default=str))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.dir))
            self._writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
                f"|{k}|{v}|" for k, v in sorted(hparams.items())))
        except ImportError:  # tensorboard is optional; metrics.jsonl always exists
            pass

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint.pt"

    def last_iteration(self) -> int:
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return 0
        lines = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
        return max((int(ln.get("iteration", 0)) for ln in lines), default=0)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        if not self.write:
            return
        row = {"iteration": iteration, "time": time.time(), **metrics}
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._writer.add_scalar(k, v, iteration)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


