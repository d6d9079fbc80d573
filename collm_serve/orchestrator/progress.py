"""Collection progress: a rich progress bar on a terminal (episodes/s, mean return so far,
failures), one plain line per episode otherwise (logs, CI, subprocesses)."""

from __future__ import annotations

import sys
import time

from collm_serve.orchestrator.events import EpisodeOutcome


class CollectProgress:
    def __init__(self, total: int, label: str, *, enabled: bool = True, live: bool | None = None):
        self.total, self.label, self.enabled = total, label, enabled
        self.done = self.failed = 0
        self.returns: list[float] = []
        self.started = time.monotonic()
        self._progress = None
        self._task_id = None
        if not enabled:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if live is None:
            live = console.is_terminal
        if live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.2f} ep/s"),
                TextColumn("mean return {task.fields[mean]}"),
                TextColumn("[red]{task.fields[failed]} failed"),
                TimeElapsedColumn(), console=console, transient=False,
            )
            self._task_id = self._progress.add_task(label, total=total, rate=0.0, mean="-", failed=0)

    @property
    def mean_return(self) -> float | None:
        return sum(self.returns) / len(self.returns) if self.returns else None

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def __enter__(self) -> CollectProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def update(self, outcome: EpisodeOutcome) -> None:
        self.done += 1
        if outcome.ok and outcome.final_return is not None:
            self.returns.append(outcome.final_return)
        else:
            self.failed += 1
        if not self.enabled:
            return
        mean = "-" if self.mean_return is None else f"{self.mean_return:.3f}"
        if self._progress is not None:
            self._progress.update(self._task_id, advance=1, rate=self.rate, mean=mean, failed=self.failed)
            if not outcome.ok:
                from rich.markup import escape

                self._progress.console.print(f"[red]failed[/red] {escape(outcome.problem_id)} seed={outcome.seed}: "
                                             f"{escape(outcome.failure_reason)}", highlight=False)
            return
        what = (f"ok return={outcome.final_return:.3f}" if outcome.ok
                else f"FAILED ({outcome.failure_reason})")
        print(f"[{self.label}] episode {self.done}/{self.total} {outcome.problem_id} seed={outcome.seed} "
              f"{what} | {self.rate:.2f} ep/s, mean return {mean}, {self.failed} failed",
              file=sys.stderr, flush=True)
