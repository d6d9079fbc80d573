"""The main job, end to end on the embedded default (SmolLM2-135M-Instruct, vLLM CPU engine):

serve (two agent services, separate processes) → collect cooperative-coding episodes through
the orchestrator into SQLite → train CoLLM-CC → hot-swap the new adapters into the running
services → collect again → print a table (reward before/after, the adapter version and sha256
each service reports, time per phase) and write a PNG learning curve. Services are always shut
down (SIGTERM, then their process groups are reaped), so nothing is left running.

    python -m collm_train.demo [--task coding] [--episodes 6] [--iterations 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def _agents_yaml(workdir: Path, agents: list[str], engine: str, model: str, max_tokens: int) -> Path:
    settings = {
        "engine": engine, "model": model, "port": 0, "max_model_len": 2048, "max_prompt_tokens": 1536,
        "max_tokens_limit": 512, "kv_cache_bytes": 256 << 20, "keep_versions": 3,
        "adapter_root": str((workdir / "adapters").resolve()),
        "sampling": {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9},
    }
    from collm_serve.config import load_agents_file

    builtin, _ = load_agents_file()
    data = {"agents": {a: {**settings, "system_prompt": builtin[a]["system_prompt"],
                           "state_dir": str((workdir / "state" / a).resolve())} for a in agents}}
    path = workdir / "agents.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="coding", choices=["coding", "build", "writing", "toy"])
    ap.add_argument("--episodes", type=int, default=4, help="episodes per collection")
    ap.add_argument("--iterations", type=int, default=2, help="CoLLM-CC updates on the collected batch")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--workdir", default="runs/demo")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from collm_serve.launcher import AgentProcess
    from collm_serve.models import model_id_for, resolve_model
    from collm_serve.orchestrator.collector import collect
    from collm_serve.tasks import get_task
    from collm_serve.team import TeamConfig
    from collm_serve.traces import TraceStore
    from collm_train.config import TrainConfig
    from collm_train.plot import CURVES, plot_runs
    from collm_train.push import publish
    from collm_train.run import RunLog
    from collm_train.trainer import Trainer

    console = Console()
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # a demo run starts from scratch
    (workdir / "adapters").mkdir(parents=True)
    agents = list(get_task(args.task).agents)
    times: dict[str, float] = {}

    def phase(name):
        class _Timer:
            def __enter__(self):
                console.rule(f"[bold]{name}")
                self.t = time.monotonic()

            def __exit__(self, *exc):
                times[name] = time.monotonic() - self.t
        return _Timer()

    with phase("prepare model"):
        base_dir = resolve_model(args.model)  # converts the packaged GGUF once
    cfg_path = _agents_yaml(workdir, agents, args.engine, args.model, args.max_tokens)
    procs = [AgentProcess(a, config=cfg_path, log_path=workdir / f"{a}.log") for a in agents]
    try:
        with phase("start agent services"):
            with ThreadPoolExecutor(len(procs)) as pool:
                list(pool.map(lambda p: p.start(timeout=900), procs))
            for p in procs:
                console.print(f"{p.agent}: serving on {p.address} ({p.serving_event['engine']})")
        team = TeamConfig(
            task=args.task, traces=str(workdir / "traces.db"), seed=0,
            agents={p.agent: {"address": p.address, "timeout_s": 600,
                              "sampling": {"max_tokens": args.max_tokens, "temperature": 0.7, "top_p": 0.9}}
                    for p in procs},
        )
        (workdir / "team.yaml").write_text(yaml.safe_dump(team.model_dump(mode="json")))
        store = TraceStore(team.traces)
        with phase("collect (before)"):
            before = asyncio.run(collect(team, args.episodes, "train", traces=store, concurrency=2, progress=True))
        if not before.episode_ids:
            console.print(f"[red]no episode completed: {[f.reason for f in before.failures][:3]}")
            return 1
        episodes = [store.get_episode(e) for e in before.episode_ids]
        config = TrainConfig(algo="cc", lr=1e-4, critic_lr=1e-4, epochs=1, minibatch_size=8, seed=0,
                             micro_batch_size=1)  # peak memory: 2 agents + trainer on 24 GB
        run = RunLog(workdir / "runs", args.task, "cc", 0, {**config.model_dump(), "model": args.model})
        run.log(0, {"charts/collect_return": before.mean_return})  # the reward curve: before ...
        with phase("train CoLLM-CC"):
            trainer = Trainer(config, base_dir, agents, base_model_id=model_id_for(args.model))
            for it in range(1, args.iterations + 1):
                metrics = trainer.update(episodes)
                run.log(it, metrics)
                console.print(f"iteration {it}: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in metrics.items()
                    if k.startswith(("losses/", "charts/return", "charts/ess")) and v == v))  # v == v: not NaN
        with phase("hot-swap into live services"):
            version, _, pushed = publish(trainer, workdir / "adapters", agents, metrics,
                                         addresses={p.agent: p.address for p in procs})
        with phase("collect (after)"):
            after = asyncio.run(collect(team, args.episodes, "train", traces=store,
                                        concurrency=2, progress=True, start=args.episodes))
        run.log(args.iterations + 1, {"charts/collect_return": after.mean_return or 0.0})  # ... and after
        run.close()
        store.close()
        curve = plot_runs(workdir / "runs", workdir / "learning_curve.png", curves=("charts/collect_return", *CURVES))

        from collm_serve.client import AgentClient

        table = Table(title=f"CoLLM demo: {args.task}, CoLLM-CC, {args.model}, {args.engine}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("mean return before (base model)", f"{before.mean_return:.3f}  ({before.ok} ok, {before.failed} failed)")
        table.add_row("mean return after (v%d)" % version,
                      f"{(after.mean_return or 0):.3f}  ({after.ok} ok, {after.failed} failed)")
        for p, r in zip(procs, pushed):
            with AgentClient(p.address) as c:
                active = c.info().active_adapter
            table.add_row(f"{p.agent} serves", f"v{active.version} sha256={active.sha256[:16]}… (push load {r.load_ms:.0f} ms)")
        for name, seconds in times.items():
            table.add_row(f"time: {name}", f"{seconds:.1f} s")
        table.add_row("learning curve", str(curve))
        table.add_row("traces", f"{team.traces}  (collm-traces stats {team.traces})")
        console.print(table)
        return 0
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
