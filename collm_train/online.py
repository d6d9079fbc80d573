"""The online loop: collect on the live team → update → push, with a staleness bound.

Episodes are collected through the orchestrator (each agent in its own service, pinned to the
adapter version it started on); actions more than `max_staleness` versions away from the
learner are dropped by the trainer and counted (`charts/dropped_stale`), the rest corrected
by the importance ratio against their logged behaviour log-probs.

This loop runs the three in turn, so agents and trainer idle while the other works;
`online_async.py` (`collm-train online --async`) overlaps them, and with `ahead=0` reduces to
exactly this loop (tests/train/test_online_async.py).
"""

from __future__ import annotations

import asyncio
import time

from collm_train.push import publish


def online_loop(team, trainer, run, *, out_dir, iterations, episodes_per_iteration, traces, concurrency=4,
                echo=print, split="train", on_step=None) -> list[dict]:
    """Returns one metrics row per iteration that updated; an iteration without a complete
    episode is skipped (its first failure reasons echoed), so an empty list means nothing was
    trained and the CLI exits non-zero. on_step: Trainer.update's per-minibatch callback (progress)."""
    from collm_serve.orchestrator.collector import collect
    from collm_serve.traces import TraceStore

    history = []
    store = TraceStore(traces)
    try:
        start_it = run.last_iteration() + 1
        for it in range(start_it, start_it + iterations):
            t0 = time.monotonic()
            summary = asyncio.run(collect(team, episodes_per_iteration, split, traces=store,
                                          concurrency=concurrency, progress=True,
                                          start=(it - 1) * episodes_per_iteration))
            t1 = time.monotonic()
            episodes = [store.get_episode(e) for e in summary.episode_ids]
            if not episodes:
                echo(f"iteration {it}: no complete episodes ({summary.failed} failed); skipping update")
                for line in summary.failure_report(limit=2):
                    echo(line)
                continue
            metrics = trainer.update(episodes, on_step=on_step)
            t2 = time.monotonic()
            agents = list(team.agents)
            version, _, results = publish(trainer, out_dir, agents, metrics, team=team,
                                          addresses={a: team.agents[a].address for a in agents})
            t3 = time.monotonic()
            row = {**metrics, "charts/collect_return": summary.mean_return or 0.0,
                   "charts/episodes_failed": summary.failed, "charts/version": version,
                   "time/collect_s": t1 - t0, "time/update_s": t2 - t1, "time/push_s": t3 - t2}
            run.log(it, row)
            trainer.save_checkpoint(run.checkpoint)
            history.append(row)
            echo(f"iteration {it}: return {summary.mean_return or 0:.3f} over {summary.ok} episodes, "
                 f"pushed v{version} ({', '.join(f'{r.agent}={r.sha256[:8]}' for r in results)})")
    finally:
        store.close()
    return history
