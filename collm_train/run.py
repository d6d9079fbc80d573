"""One training run: run name, hyper-parameters, TensorBoard scalars, metrics.jsonl, checkpoints.

Run name = `task__algo__seed__time` (CleanRL). Everything a run writes lives in
`<runs>/<run name>/`: `hparams.json` (the config plus `provenance`: package versions, git sha,
the traces' fingerprint), `metrics.jsonl` (what `collm-train plot` reads), TensorBoard event
files, `checkpoint.pt` (for `--resume`). Optional trackers (wandb, mlflow) get the same
hyper-parameters and scalars (collm_train/trackers.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path


# what a result depends on beyond our own code (recorded in hparams.json)
PROVENANCE_PACKAGES = ("collm", "torch", "transformers", "peft", "vllm", "pydantic", "grpcio", "numpy")


class ResumeError(ValueError):
    """`--resume NAME` names no run (the message lists those that exist)."""


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders under runs_dir (those with hparams.json), oldest first by last activity."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [d for d in root.iterdir() if (d / "hparams.json").is_file()]

    def activity(d: Path) -> float:
        return max(p.stat().st_mtime for p in (d / "hparams.json", d / "metrics.jsonl") if p.exists())

    return sorted(runs, key=lambda d: (activity(d), d.name))


def resolve_resume(runs_dir: str | Path, resume: str | None, task: str, algo: str) -> str | None:
    """The run name `--resume` means: an existing run's name, or `latest` = the most recently
    active run of this task and algorithm. Unknown names are errors, never a silent fresh run."""
    if resume is None:
        return None
    runs = list_runs(runs_dir)
    if resume == "latest":
        mine = [d for d in runs if d.name.startswith(f"{task}__{algo}__")]
        if not mine:
            have = ", ".join(d.name for d in runs[-5:]) or "none"
            raise ResumeError(f"--resume latest: no run of task {task!r} with --algo {algo} under {runs_dir} "
                              f"(runs there: {have}); drop --resume to start one, or check --runs")
        return mine[-1].name
    if resume in {d.name for d in runs}:
        return resume
    from collm_serve.config_errors import suggest

    names = [d.name for d in runs]
    have = ", ".join(names[-5:]) or "none"
    raise ResumeError(f"--resume {resume}: no such run under {runs_dir}{suggest(resume, names)} (runs there, newest "
                      f"last: {have}); use one of them, `--resume latest`, or drop --resume for a new run")


def traces_fingerprint(episode_ids: Iterable[str]) -> str:
    """sha256 over the sorted episode ids trained on: the same traces give the same fingerprint,
    whatever else the database holds (other tasks, later episodes)."""
    h = hashlib.sha256()
    for eid in sorted(episode_ids):
        h.update(eid.encode() + b"\n")
    return h.hexdigest()


def git_sha(path: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding `path` (default: this package), `+dirty` when tracked
    files changed; None outside a checkout or without git."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(episode_ids: Sequence[str] | None = None, traces: str | None = None) -> dict:
    """What hparams.json records besides the config: package versions, git sha, traces."""
    versions = {}
    for pkg in PROVENANCE_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    out = {"packages": versions, "git_sha": git_sha()}
    if episode_ids is not None:
        out["traces"] = {"path": traces, "episodes": len(episode_ids),
                         "fingerprint": "sha256:" + traces_fingerprint(episode_ids)}
    return out


class RunLog:
    def __init__(self, runs_dir: str | Path, task: str, algo: str, seed: int, hparams: dict,
                 resume: str | None = None, write: bool = True, trackers: Sequence[str] = ()):
        """resume: an existing run's name (resolve it with `resolve_resume` first);
        trackers: names from collm_train.trackers.TRACKERS that also receive hparams and scalars."""
        name = resume or f"{task}__{algo}__{seed}__{int(time.time())}"
        self.dir = Path(runs_dir) / name
        self.write = write  # False on non-zero torchrun ranks: one writer per run
        self._writer = None
        self.trackers = []
        if not write:
            self.name = name
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        if not (self.dir / "hparams.json").exists():
            (self.dir / "hparams.json").write_text(json.dumps(hparams, indent=2, sort_keys=True, default=str))
        from collm_train.trackers import open_trackers

        self.trackers = open_trackers(trackers, name, self.dir, hparams)
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
        for tracker in self.trackers:
            tracker.log(iteration, metrics)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for tracker in self.trackers:
            tracker.close()


