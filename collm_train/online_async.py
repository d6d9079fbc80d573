"""The asynchronous online loop (`collm-train online --async`): collection and updates overlap.

Why: the sync loop (online.py) runs collect → update → push in turn, so the agents idle while the
trainer updates and the trainer idles while the agents collect. Here a collector thread runs the
orchestrator's `collect` batch after batch while the trainer updates on each batch as soon as it
is in the store and pushes the new version at once: the shape of verl's fully-async trainer,
AReaL's bounded off-policyness and PipelineRL's in-flight weight updates, built from what this
toolkit already has: adapters pinned per episode (an episode that is running when a version is
pushed finishes on the versions it started with, collm_serve/orchestrator/agents.py
AdapterPins), behaviour log-probs logged with every action, and the trainer's staleness drop and
truncated importance weight (TrainConfig.max_staleness, truncated_is / clip_eps).

Batches. Batch b is the collector's plan slice b: planned episodes b*E .. b*E+E-1 (E episodes
per iteration, teams.py plan_episodes), the slice the sync loop's iteration b+1 collects. The
trainer takes it once the collector has finished the slice: its ok episodes created since the
run started, in the order they started. A slice without one ok episode trains nothing and
pushes nothing (its failures are echoed), as a skipped sync iteration.

Bounded lag (AReaL's max_head_offpolicyness). The collector starts slice c only when
c - (slices trained and pushed) <= `ahead`, so every episode of slice c starts on a version at
most `ahead` pushes older than the learner that trains on it: its actions are at most `ahead`
versions stale. `ahead` defaults to max_staleness (1 when that is None). ahead 0 IS the sync
loop: slice b+1 starts only when the version trained on slice b is active, so the same episodes
train in the same order with the same updates (tests/train/test_online_async.py). Actions staler
than max_staleness anyway (a version lost to a crash, agents that served another run's version)
are dropped by the trainer and counted (charts/dropped_stale); the rest get the truncated
importance weight against their logged behaviour log-probs.

Crash safety (kill -9 of the trainer process, or of an agent, then `--resume`). Which episodes
were consumed is stored IN the trainer checkpoint (key `online_async`: next slice, the episode
ids trained per slice, the last metrics row), written by the same atomic rename as the weights,
so the weights and the episodes that made them never disagree: an update whose checkpoint was
not written is redone from the same state; one whose checkpoint was written is never redone (no
episode trains twice). The run's start time and plan shape are in `online_async.json` in the
run folder, written before collection starts, so after a crash this run's episodes are found in
the store (nothing lost): running episodes left behind are marked interrupted
(TraceStore.mark_interrupted), each slice collects only its planned episodes that have no ok
episode of this run yet, and the checkpoint's version is pushed again (loading a version already
loaded is a no-op) in case the crash fell between checkpoint and push. Per update: update →
write adapters → checkpoint → push → log (a row lost between push and log is written on resume).

Threads: the collector is a thread of the trainer process with its own event loop and store
connection (SQLite WAL: one writer, readers alongside); torch runs in the main thread. The
trainer's cpu_affinity (TrainConfig) holds both; the agents run in their own processes on theirs.
One collector per store (as `collect --resume`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collm_train.push import publish, push_team

SIDECAR = "online_async.json"  # in the run folder: what ties store episodes to this run
STATE_KEY = "online_async"  # the trainer checkpoint's entry: what was consumed


class AsyncLoopError(ValueError):
    """A run that cannot go on as asked; the message names the fix."""


def default_ahead(max_staleness: int | None) -> int:
    """Slices the collector may run ahead of the trainer: max_staleness (its actions are then
    never too stale to train on), or one (one-step off-policy) when staleness is unbounded."""
    return 1 if max_staleness is None else max_staleness


@dataclass(frozen=True)
class RunPlan:
    """This run's plan shape and start (the sidecar file, written once)."""

    started_at: float  # episodes created before it belong to earlier runs
    episodes_per_iteration: int
    split: str
    first_slice: int  # plan slice of the run's first update (after a sync run's iterations)

    @classmethod
    def open(cls, run_dir: Path, episodes_per_iteration: int, split: str, first_slice: int) -> tuple[RunPlan, bool]:
        """(plan, resumed): the run's sidecar, or a new one written now."""
        path = Path(run_dir) / SIDECAR
        if path.exists():
            plan = cls(**json.loads(path.read_text()))
            if (plan.episodes_per_iteration, plan.split) != (episodes_per_iteration, split):
                raise AsyncLoopError(
                    f"run {Path(run_dir).name} collected {plan.episodes_per_iteration} {plan.split!r} episodes per "
                    f"iteration, this call asks {episodes_per_iteration} {split!r}; resume with "
                    f"--episodes-per-iteration {plan.episodes_per_iteration}, or drop --resume for a new run")
            return plan, True
        plan = cls(time.time(), episodes_per_iteration, split, first_slice)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(plan)))
        os.replace(tmp, path)
        return plan, False


@dataclass
class Consumed:
    """What the checkpoint says was trained: the next slice, episode ids per slice, last row."""

    next_slice: int
    episodes: dict[str, list[str]] = field(default_factory=dict)  # str(slice) -> ids trained on
    last_row: dict = field(default_factory=dict)
    step: int = 0  # Trainer.step when written: the weights this record belongs to

    def ids(self) -> set[str]:
        return {e for ids in self.episodes.values() for e in ids}


def save_checkpoint(trainer, path: Path, consumed: Consumed) -> None:
    """Trainer.state_dict() plus `consumed`, one atomic rename (rank 0): weights and the record
    of what trained them are one file, so a crash can never leave one without the other."""
    import torch

    if not trainer.dist.is_main:
        return
    state = trainer.state_dict()
    state[STATE_KEY] = asdict(consumed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_consumed(trainer, path: Path, first_slice: int) -> Consumed:
    """The checkpoint's record; a fresh one starting at `first_slice` (the run's logged
    iterations) without a checkpoint or when the sync loop wrote it last (its iteration i trained
    slice i-1). The trainer must hold that checkpoint's weights (the CLI's --resume loads them)."""
    if not path.exists():
        return Consumed(first_slice, step=trainer.step)
    import torch

    raw = torch.load(path, map_location="cpu", weights_only=True).get(STATE_KEY)
    if raw is None:
        return Consumed(first_slice, step=trainer.step)
    consumed = Consumed(**raw)
    if consumed.step != trainer.step:
        raise AsyncLoopError(f"{path} was written at trainer step {consumed.step}, the trainer is at step "
                             f"{trainer.step}; load that checkpoint first (trainer.load_checkpoint)")
    return consumed


class _Gate:
    """The bounded lag: slice c may start once c - done <= ahead (done: slices trained + pushed)."""

    def __init__(self, done: int, ahead: int):
        self.done, self.ahead, self.stopped = done, ahead, False
        self._cv = threading.Condition()

    def wait_turn(self, c: int) -> bool:
        with self._cv:
            self._cv.wait_for(lambda: self.stopped or c - self.done <= self.ahead)
            return not self.stopped

    def advance(self, done: int) -> None:
        with self._cv:
            self.done = done
            self._cv.notify_all()

    def stop(self) -> None:
        with self._cv:
            self.stopped = True
            self._cv.notify_all()


@dataclass
class SliceCollected:
    index: int
    collect_s: float
    failures: list = field(default_factory=list)  # collector.EpisodeFailure of this run's calls
    interrupted: str | None = None


class Collector(threading.Thread):
    """Runs `collect` slice after slice (as far as the gate lets it) and reports each slice done
    on `self.done` (a SliceCollected, or the exception that stopped it; None when it ended)."""

    def __init__(self, team, traces: str, plan: RunPlan, slices: range, gate: _Gate, *, concurrency: int):
        super().__init__(name="collm-collector", daemon=True)
        self.team, self.traces, self.plan, self.slices, self.gate = team, traces, plan, slices, gate
        self.concurrency = concurrency
        self.done: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopped = False

    def stop(self) -> None:
        """Drain: no new episode starts, those in flight finish and are stored (collect's `stop`)."""
        with self._lock:
            self._stopped = True
            if self._loop is not None and self._stop_event is not None:
                self._loop.call_soon_threadsafe(self._stop_event.set)
        self.gate.stop()

    def run(self) -> None:
        from collm_serve.traces import TraceStore

        store = None
        try:
            store = TraceStore(self.traces)
            for c in self.slices:
                if not self.gate.wait_turn(c):
                    return
                t0 = time.monotonic()
                got = SliceCollected(c, 0.0)
                for start, n in _runs(missing_indices(self.team, store, self.plan, c)):
                    summary = asyncio.run(self._collect(store, start, n))
                    if summary is None:
                        return
                    got.failures += summary.failures
                    got.interrupted = summary.interrupted
                got.collect_s = time.monotonic() - t0
                if got.interrupted:
                    return
                self.done.put(got)
        except BaseException as e:  # the trainer re-raises it
            self.done.put(e)
        finally:
            self.done.put(None)  # ended: a trainer still waiting must not wait forever
            if store is not None:
                store.close()

    async def _collect(self, store, start: int, n: int):
        from collm_serve.orchestrator.collector import collect

        with self._lock:
            if self._stopped:
                return None
            self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
        try:
            return await collect(self.team, n, self.plan.split, traces=store, concurrency=self.concurrency,
                                 start=start, stop=self._stop_event)
        finally:
            with self._lock:
                self._loop = self._stop_event = None


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted plan indices as (start, count) runs of consecutive ones (one collect call each)."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def slice_plan(team, plan: RunPlan, c: int) -> list:
    """The planned episodes of slice c (teams.py plan_episodes: the sync loop's iteration c+1)."""
    from collm_serve.orchestrator.teams import build_task, plan_episodes

    e = plan.episodes_per_iteration
    return plan_episodes(build_task(team), plan.split, e, team.seed, c * e)


def _this_run(store, team, plan: RunPlan, status: str | None) -> list[dict]:
    """Heads of this run's episodes (created since it started), oldest first."""
    heads = store.list_episodes(status=status, task=team.task, split=plan.split, since=plan.started_at)
    return sorted(heads, key=lambda h: (h["created_at"], h["episode_id"]))


def missing_indices(team, store, plan: RunPlan, c: int) -> list[int]:
    """Plan indices of slice c without an ok episode in this run (all of them on a first pass)."""
    have = {(h["problem_id"], int(h["seed"])) for h in _this_run(store, team, plan, "ok")}
    return [p.index for p in slice_plan(team, plan, c) if p.key not in have]


def slice_episodes(team, store, plan: RunPlan, c: int, consumed: set[str]) -> tuple[list, int]:
    """(ok episodes of slice c in this run, not yet trained on, in start order; failed count)."""
    keys = {p.key for p in slice_plan(team, plan, c)}
    heads = [h for h in _this_run(store, team, plan, None) if (h["problem_id"], int(h["seed"])) in keys]
    ok, seen = [], set()
    for h in heads:
        key = (h["problem_id"], int(h["seed"]))
        if h["status"] == "ok" and key not in seen and h["episode_id"] not in consumed:
            seen.add(key)
            ok.append(store.get_episode(h["episode_id"]))
    failed = sum(1 for h in heads if h["status"] == "failed" and (h["problem_id"], int(h["seed"])) not in seen)
    return ok, failed


def _repush(trainer, team, out_dir, agents, echo) -> None:
    """After a crash the agents may still serve the version before the checkpoint's: push it."""
    if trainer.version < 1:
        return
    dirs = {a: Path(out_dir) / a / f"v{trainer.version}" for a in agents}
    missing = [str(d) for d in dirs.values() if not d.is_dir()]
    if missing:
        raise AsyncLoopError(f"the checkpoint's version v{trainer.version} is gone ({', '.join(missing)}); "
                             "restore it under --out, or drop --resume for a new run")
    push_team(dirs, {a: team.agents[a].address for a in agents}, team)
    echo(f"resume: the team serves v{trainer.version} again (the checkpoint's)")


def async_online_loop(team, trainer, run, *, out_dir, iterations, episodes_per_iteration, traces,
                      concurrency=4, ahead: int | None = None, echo=print, split="train", on_step=None,
                      on_update: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `iterations` more slices with collection running alongside; one metrics row per
    slice that updated (an empty list: nothing trained, as online_loop). ahead: the bounded lag
    (default_ahead(max_staleness)). on_update(row): after each push (a bench's clock).
    The trainer must hold the run's checkpoint when resuming (the CLI's --resume loads it)."""
    from collm_serve.traces import TraceStore

    if trainer.dist.world_size > 1:
        raise AsyncLoopError("the async loop runs in one process; drop torchrun (or --async)")
    ahead = default_ahead(trainer.config.max_staleness) if ahead is None else ahead
    if ahead < 0:
        raise AsyncLoopError(f"ahead {ahead}: use 0 (the sync loop) or more")
    plan, resumed = RunPlan.open(run.dir, episodes_per_iteration, split, run.last_iteration())
    consumed = load_consumed(trainer, run.checkpoint, run.last_iteration())
    agents = list(team.agents)
    store = TraceStore(traces)
    slices = range(consumed.next_slice, consumed.next_slice + iterations)
    gate = _Gate(consumed.next_slice, ahead)
    collector = Collector(team, traces, plan, slices, gate, concurrency=concurrency)
    history: list[dict] = []
    try:
        if resumed:
            left = store.mark_interrupted(before=time.time())
            if left:
                echo(f"resume: {left} episode(s) a dead collector left running are now failed/interrupted")
            if consumed.last_row and run.last_iteration() < consumed.next_slice:  # killed between push and log
                run.log(consumed.next_slice, consumed.last_row)
            _repush(trainer, team, out_dir, agents, echo)
        collector.start()
        for c in slices:
            t0 = time.monotonic()
            got = collector.done.get()
            if isinstance(got, BaseException):
                raise got
            if got is None:
                raise AsyncLoopError(f"the collector stopped before slice {c} (see the lines above); rerun with --resume")
            t1 = time.monotonic()
            episodes, failed = slice_episodes(team, store, plan, c, consumed.ids())
            if not episodes:
                echo(f"iteration {c + 1}: no complete episodes ({failed} failed); skipping update")
                _echo_failures(got, echo)
                consumed.next_slice, consumed.last_row = c + 1, {}
                save_checkpoint(trainer, run.checkpoint, consumed)
                gate.advance(c + 1)
                continue
            metrics = trainer.update(episodes, on_step=on_step)
            t2 = time.monotonic()
            version, dirs, _ = publish(trainer, out_dir, agents, metrics)  # files only; pushed below
            returns = [e.final_return for e in episodes if e.final_return is not None]
            row = {**metrics, "charts/collect_return": sum(returns) / len(returns) if returns else math.nan,
                   "charts/episodes_failed": failed, "charts/version": version,
                   "time/collect_s": got.collect_s, "time/wait_s": t1 - t0, "time/update_s": t2 - t1}
            consumed.episodes[str(c)] = [e.episode_id for e in episodes]
            consumed.next_slice, consumed.last_row, consumed.step = c + 1, row, trainer.step
            save_checkpoint(trainer, run.checkpoint, consumed)
            results = push_team(dirs, {a: team.agents[a].address for a in agents}, team)
            gate.advance(c + 1)  # after the push: slices it lets start run on the new version
            row["time/push_s"] = time.monotonic() - t2
            run.log(c + 1, row)
            history.append(row)
            if on_update is not None:
                on_update(row)
            echo(f"iteration {c + 1}: return {row['charts/collect_return']:.3f} over {len(episodes)} episodes, "
                 f"pushed v{version} ({', '.join(f'{r.agent}={r.sha256[:8]}' for r in results)}), "
                 f"waited {t1 - t0:.1f}s for data")
    finally:
        if collector.is_alive():
            collector.stop()
            collector.join()
        store.close()
    return history


def _echo_failures(got: SliceCollected, echo) -> None:
    from collm_serve.orchestrator.collector import CollectSummary

    summary = CollectSummary("", "", "", requested=0, failures=got.failures)
    for line in summary.failure_report(limit=2):
        echo(line)
