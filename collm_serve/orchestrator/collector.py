"""`collect`: run N episodes of a team's task into the trace store, a few at a time.

    summary = await collect(team, episodes=64, split="train", concurrency=4, resume=True)
    summary.mean_return, summary.episode_ids, summary.failures, summary.elapsed_s

- Bounded concurrency: `concurrency` episodes in flight; each agent service additionally sees
  at most `max_in_flight` requests from this collector (branching nodes share that bound).
- Resume: running episodes a dead collector left behind become failed/"interrupted"
  (`TraceStore.mark_interrupted`, so nothing half-written ever counts as complete), then every
  planned (problem_id, seed) that already has an ok episode is skipped (teams.py: the plan).
  Only ONE collector may write a store while resuming (mark_interrupted would fail the other
  collector's running episodes).
- Failures: an episode whose agent stays unavailable is stored as failed with the reason and
  reported in `failures`; collection goes on with the next episode.
- Stop (SIGINT/SIGTERM with `handle_signals`, or the `stop` event): the first request drains —
  no new episodes start, the turns in flight finish and are stored, then the unfinished
  episodes are stored as failed/"interrupted"; a second SIGINT/SIGTERM stops at once — the
  requests in flight are cancelled and their turns never written (rolled back). Either way the
  store is consistent, `interrupted` names the cause, and `--resume` picks up from there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from collm_serve.orchestrator.agents import DEFAULT_MAX_IN_FLIGHT, AgentPool
from collm_serve.orchestrator.episode import MAX_TREE_TURNS, EpisodeRunner, check_tree
from collm_serve.orchestrator.events import EpisodeFinished, EpisodeOutcome
from collm_serve.orchestrator.progress import CollectProgress
from collm_serve.orchestrator.teams import build_task, plan_episodes
from collm_serve.team import TeamConfig
from collm_serve.traces.store import TraceStore


@dataclass(frozen=True)
class EpisodeFailure:
    episode_id: str
    problem_id: str
    seed: int
    reason: str
    fix: str = ""


@dataclass
class CollectSummary:
    """What one `collect` call did. Returns are per-episode (summed turn rewards, tree-averaged)."""

    task: str
    split: str
    traces: str  # the store's path
    requested: int  # episodes planned
    skipped: int = 0  # already complete in the store (resume)
    episode_ids: list[str] = field(default_factory=list)  # ok episodes, in completion order
    returns: list[float] = field(default_factory=list)  # their final returns, same order
    failures: list[EpisodeFailure] = field(default_factory=list)
    not_started: int = 0  # planned but never started (stopped early)
    marked_interrupted: int = 0  # running leftovers of a dead collector, now failed (resume)
    elapsed_s: float = 0.0
    interrupted: str | None = None  # "SIGINT", "SIGTERM" or "stop" when stopped early

    @property
    def ok(self) -> int:
        return len(self.episode_ids)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def mean_return(self) -> float | None:
        """Mean final return of the ok episodes of this call (None if there are none)."""
        return sum(self.returns) / len(self.returns) if self.returns else None

    @property
    def episodes_per_s(self) -> float:
        return (self.ok + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def add(self, outcome: EpisodeOutcome) -> None:
        if outcome.ok and outcome.final_return is not None:
            self.episode_ids.append(outcome.episode_id)
            self.returns.append(outcome.final_return)
        else:
            self.failures.append(EpisodeFailure(outcome.episode_id, outcome.problem_id, outcome.seed,
                                                outcome.failure_reason, outcome.fix))

    def failure_report(self, limit: int = 3, width: int = 200) -> list[str]:
        """The first `limit` distinct failure reasons, each cut to `width` characters and
        followed by its fix when known: what `collect` and `online` print when nothing worked."""
        lines: list[str] = []
        seen: set[tuple[str, str]] = set()
        for f in self.failures:
            if (f.reason, f.fix) in seen:
                continue
            seen.add((f.reason, f.fix))
            if len(seen) > limit:
                break
            reason = " ".join(f.reason.split())
            reason = reason if len(reason) <= width else reason[: width - 1] + "…"
            lines.append(f"  {reason}" + (f"\n    fix: {f.fix}" if f.fix else ""))
        return lines

    @property
    def all_failed(self) -> bool:
        """Episodes ran and not one completed (a reason to exit non-zero)."""
        return self.failed > 0 and self.ok == 0


def _with_overrides(team: TeamConfig, task: str | None, group_size: int | None) -> TeamConfig:
    if task is None and group_size is None:
        return team
    data = team.model_dump()
    if task is not None and task != team.task:
        data.update(task=task, task_options={}, turns=None)
    if group_size is not None:
        data["group_size"] = group_size
    return TeamConfig(**data)  # validated again (group size bounds)


def open_store(traces: TraceStore | str | os.PathLike[str]) -> TraceStore:
    if isinstance(traces, TraceStore):
        return traces
    text = str(traces)
    if text != ":memory:" and "://" not in text:
        Path(text).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return TraceStore(text)


async def collect(
    team: TeamConfig,
    episodes: int,
    split: str = "train",
    *,
    traces: TraceStore | str | os.PathLike[str] | None = None,
    task: str | None = None,
    group_size: int | None = None,
    concurrency: int = 4,
    resume: bool = False,
    start: int = 0,
    max_tree_turns: int = MAX_TREE_TURNS,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    pin_adapters: bool = True,
    progress: bool = False,
    handle_signals: bool = False,
    stop: asyncio.Event | None = None,
) -> CollectSummary:
    """Run `episodes` episodes (plan: teams.py) of the team's task and store them.

    traces: a TraceStore (left open) or a path/URL (default `team.traces`; opened and closed).
    task / group_size: override the team's. start: index of the first planned episode.
    progress: show a progress bar (terminal) or one line per episode (stderr).
    handle_signals: SIGINT/SIGTERM stop collection cleanly (see the module docstring).
    stop: set it to stop like a first SIGINT.
    Raises ConfigError (collm_serve.config) when the team does not fit its task.
    """
    if episodes < 0:
        raise ValueError(f"episodes must be >= 0, got {episodes}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    team = _with_overrides(team, task, group_size)
    the_task = build_task(team)
    check_tree(team.group_size, the_task.num_turns, max_tree_turns)  # before touching the store
    plan = plan_episodes(the_task, split, episodes, team.seed, start)
    store = open_store(traces if traces is not None else team.traces)
    own_store = not isinstance(traces, TraceStore)
    summary = CollectSummary(team.task, split, store.path, requested=len(plan))
    started = time.monotonic()
    try:
        if resume:
            summary.marked_interrupted = store.mark_interrupted()
            done_keys = store.completed_keys(team.task, split)
            todo = [p for p in plan if p.key not in done_keys]
            summary.skipped = len(plan) - len(todo)
        else:
            todo = list(plan)
        async with AgentPool(team, max_in_flight=max_in_flight) as pool:
            runner = EpisodeRunner(the_task, team.task, pool, store, group_size=team.group_size,
                                   max_tree_turns=max_tree_turns, pin_adapters=pin_adapters)
            with CollectProgress(len(todo), f"{team.task}/{split}", enabled=progress) as bar:
                if summary.skipped or summary.marked_interrupted:
                    bar.note(f"resume: {summary.skipped} episode(s) already complete, "
                             f"{summary.marked_interrupted} interrupted one(s) marked failed")
                await _run_all(runner, todo, concurrency, summary, bar, handle_signals, stop)
    finally:
        summary.elapsed_s = time.monotonic() - started
        if own_store:
            store.close()
    return summary


async def _run_all(runner: EpisodeRunner, todo, concurrency: int, summary: CollectSummary,
                   bar: CollectProgress, handle_signals: bool, stop: asyncio.Event | None) -> None:
    drain = asyncio.Event()
    pending = iter(todo)
    started = 0

    def finished(event) -> None:
        if isinstance(event, EpisodeFinished):
            summary.add(event.outcome)
            bar.update(event.outcome)

    async def worker() -> None:
        nonlocal started
        while not drain.is_set():
            planned = next(pending, None)
            if planned is None:
                return
            started += 1
            await runner.run(planned.problem, planned.seed, on_event=finished, drain=drain)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(todo)))]

    def request_stop(cause: str) -> None:
        if not drain.is_set():
            summary.interrupted = cause
            drain.set()
            bar.note(f"{cause}: finishing the turns in flight (again to stop at once)")
        else:
            for w in workers:
                w.cancel(cause)

    loop = asyncio.get_running_loop()
    installed = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, request_stop, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
    watcher = None
    if stop is not None:
        async def watch() -> None:
            await stop.wait()
            request_stop("stop")

        watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(*workers, return_exceptions=True)
        for w in workers:  # surface bugs (a worker that died of anything but a stop request)
            if not w.cancelled() and w.exception() is not None:
                raise w.exception()
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if watcher is not None:
            watcher.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        summary.not_started = len(todo) - started
