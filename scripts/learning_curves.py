#!/usr/bin/env python
"""CPU learning curves of CoLLM-CC vs CoLLM-DC vs MAGRPO on `writing` and `build` (SmolLM2-135M).

For each task: start the two agent services ONCE (separate processes, vLLM CPU engine), then for
each algorithm reset them to the base model (activate base, unload every loaded version), run
`collm_train.online.online_loop` (collect through the orchestrator -> update -> push) with its
own trace store, adapters folder and run name, and finally plot the task's runs with
`collm_train.plot.plot_runs` (the code behind `collm-train plot`). Every algorithm sees the same
problems and seeds at each iteration (`start=(it-1)*episodes`, team seed 0).

    . .venv/bin/activate && export COLLM_HOME=$PWD/.collm
    nice -n 10 python scripts/learning_curves.py --tasks writing build --iterations 4 --episodes 4

Outputs: <workdir>/<task>/runs/<task>__<algo>__<seed>__<time>/metrics.jsonl (+ TensorBoard),
<workdir>/summary.json (mean return per iteration per algorithm, wall times), and
<img-dir>/learning_curves_<task>.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def reset_services(procs) -> None:
    """Back to the base model and no adapter loaded, so the next algorithm starts from scratch."""
    from collm_serve.client import AgentClient

    for p in procs:
        with AgentClient(p.address, timeout=120) as c:
            c.activate_adapter(use_base_model=True)
            for v in [a.version for a in c.list_adapters().adapters]:
                c.unload_adapter(v)
            info = c.info()
            assert info.active_adapter.version == 0, f"{p.agent}: still serving v{info.active_adapter.version}"
            assert not list(c.list_adapters().adapters), f"{p.agent}: adapters still loaded"


def run_task(task: str, args, base_dir, model_id: str, log) -> dict:
    import yaml

    from collm_serve.launcher import AgentProcess
    from collm_serve.tasks import get_task
    from collm_serve.team import TeamConfig
    from collm_train.config import TrainConfig
    from collm_train.demo import agents_yaml
    from collm_train.online import online_loop
    from collm_train.plot import plot_runs
    from collm_train.run import RunLog
    from collm_train.trainer import Trainer

    workdir = Path(args.workdir) / task
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "adapters").mkdir(parents=True)
    agents = list(get_task(task).agents)
    max_tokens = args.writing_max_tokens if task == "writing" else args.build_max_tokens
    turns = args.writing_turns if task == "writing" else args.build_turns
    cfg_path = agents_yaml(workdir, agents, "vllm", args.model, max_tokens)
    procs = [AgentProcess(a, config=cfg_path, log_path=workdir / f"{a}.log") for a in agents]
    result = {"task": task, "turns": turns, "max_tokens": max_tokens, "algos": {}}
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.start(timeout=900), procs))
        result["start_services_s"] = time.monotonic() - t0
        log(f"[{task}] services up in {result['start_services_s']:.0f}s: "
            + ", ".join(f"{p.agent}@{p.address}" for p in procs))
        for algo in args.algos:
            reset_services(procs)
            group_size = args.group_size if algo not in ("cc", "dc") else 1
            team = TeamConfig(
                task=task, turns=turns, group_size=group_size, seed=args.seed,
                traces=str(workdir / f"traces_{algo}.db"),
                agents={p.agent: {"address": p.address, "timeout_s": 600,
                                  "sampling": {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 0.9}}
                        for p in procs},
            )
            (workdir / f"team_{algo}.yaml").write_text(yaml.safe_dump(team.model_dump(mode="json")))
            cfg = TrainConfig(algo=algo, seed=args.seed, lr=args.lr, critic_lr=args.lr, epochs=1,
                              minibatch_size=8, micro_batch_size=args.micro_batch_size)
            run = RunLog(workdir / "runs", task, algo, args.seed,
                         {**cfg.model_dump(), "model": args.model, "task": task, "turns": turns,
                          "group_size": group_size, "max_tokens": max_tokens, "engine": "vllm",
                          "episodes_per_iteration": args.episodes, "iterations": args.iterations})
            ta = time.monotonic()
            trainer = Trainer(cfg, base_dir, agents, base_model_id=model_id)
            hist = online_loop(team, trainer, run, out_dir=workdir / "adapters" / algo,
                               iterations=args.iterations, episodes_per_iteration=args.episodes,
                               traces=team.traces, concurrency=args.concurrency,
                               echo=lambda s, _a=algo: log(f"[{task}/{algo}] {s}"))
            run.close()
            wall = time.monotonic() - ta
            result["algos"][algo] = {
                "run": run.name, "wall_s": wall, "group_size": group_size,
                "rows": [{k: v for k, v in r.items()
                          if k.startswith(("charts/return", "charts/collect_return", "losses/actor",
                                           "losses/critic", "charts/value", "charts/explained_variance",
                                           "charts/episodes", "charts/samples", "charts/ess",
                                           "charts/version", "time/"))} for r in hist],
            }
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            result["algos"][algo]["peak_rss_gib"] = peak
            log(f"[{task}/{algo}] done in {wall:.0f}s (trainer process peak RSS so far {peak:.1f} GiB)")
            del trainer
            gc.collect()
        reset_services(procs)
    finally:
        for p in procs:
            p.stop()
    img = plot_runs(workdir / "runs", Path(args.img_dir) / f"learning_curves_{task}.png")
    result["plot"] = str(img)
    result["wall_s"] = time.monotonic() - t0
    log(f"[{task}] wrote {img}; task wall {result['wall_s']:.0f}s")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["writing", "build"], choices=["writing", "build"])
    ap.add_argument("--algos", nargs="+", default=["cc", "dc", "magrpo"],
                    choices=["cc", "dc", "magrpo", "mareinforce", "marloo", "maremax"])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=4, help="episodes per iteration")
    ap.add_argument("--group-size", type=int, default=2, help="K for the Monte Carlo algorithms (cc/dc use 1)")
    ap.add_argument("--writing-max-tokens", type=int, default=96)
    ap.add_argument("--build-max-tokens", type=int, default=64)
    ap.add_argument("--writing-turns", type=int, default=1)
    ap.add_argument("--build-turns", type=int, default=2, help="task default is 4")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--micro-batch-size", type=int, default=4,
                    help="samples per forward; 1 for build (multi-turn histories: 4 ran out of memory)")
    ap.add_argument("--lr", type=float, default=1e-4, help="actor and critic LR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the trainer (1: the services share the same few cores)")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--workdir", default="runs/learning_curves")
    ap.add_argument("--img-dir", default="docs/img")
    ap.add_argument("--table", action="store_true", help="only print the markdown table of <workdir>/summary.json")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from collm_serve.models import model_id_for, resolve_model

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    logf = open(Path(args.workdir) / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    summary_path = Path(args.workdir) / "summary.json"
    if args.table:
        print(markdown_table(json.loads(summary_path.read_text())))
        return 0
    t0 = time.monotonic()
    base_dir = resolve_model(args.model)
    # one summary per workdir; a later invocation (e.g. another task) adds to it
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"tasks": {}}
    summary["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}
    for task in args.tasks:
        summary["tasks"][task] = {**run_task(task, args, base_dir, model_id_for(args.model), log),
                                  "args": vars(args)}
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
    log(f"all done in {time.monotonic() - t0:.0f}s")
    print(markdown_table(summary))
    return 0


def markdown_table(summary: dict) -> str:
    """Mean return (`charts/return`: tree-averaged undiscounted return of the iteration's batch,
    collected with the policy of the previous iteration) per iteration per algorithm."""
    out = []
    for task, res in summary["tasks"].items():
        algos = res["algos"]
        n = max(len(a["rows"]) for a in algos.values())
        out.append(f"\n**{task}** (turns={res['turns']}, max_tokens={res['max_tokens']})\n")
        out.append("| algo | " + " | ".join(f"it {i + 1}" for i in range(n)) + " | wall (s) |")
        out.append("|---" * (n + 2) + "|")
        for algo, a in algos.items():
            cells = [f"{r.get('charts/return', float('nan')):.3f}" for r in a["rows"]]
            cells += [""] * (n - len(cells))
            out.append(f"| {algo} | " + " | ".join(cells) + f" | {a['wall_s']:.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
