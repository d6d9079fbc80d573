"""How parallel is a 2-agent turn? Two agent services in separate processes, same prompts:

    concurrent / slower-alone   wall time of the turn (both requests at once, as the
                                orchestrator sends them) / the slower agent's request alone;
                                1.0 = perfectly parallel
    concurrent / sequential     the same turn / the two requests one after the other;
                                0.5 = perfectly parallel, 1.0 = no gain

    python bench/parallel_turn.py            # the real thing: vLLM engines, SmolLM2-135M
    python bench/parallel_turn.py --quick    # smoke figures: transformers engine, tiny random model

Greedy decoding (temperature 0) so every repetition generates the same tokens; medians over
`--reps` repetitions after one warm-up, the order of the three measurements rotated each time.
On CPU each agent gets `--threads` threads (default: half the cores) pinned to its own cores
(agent i: cores i*threads ... (i+1)*threads-1, every thread of its process group), as two
agents on two machines or GPUs would be; `--no-pin` lets the OS schedule them. Other load on
the machine shows up directly in the ratios: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import print_table, smoke_title  # noqa: E402
from collm_serve.client import AsyncAgentClient  # noqa: E402
from collm_serve.launcher import AgentProcess, start_all  # noqa: E402

AGENTS = ("helper", "main")
PROMPTS = {
    "helper": "Write a Python function aux(xs) that returns the sorted unique values of a list.",
    "main": "Write a Python function has_close_elements(numbers, threshold) that says whether "
            "any two numbers are closer than threshold.",
}


def machine() -> str:
    gpu = ""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True)
        gpu = ", GPU " + "; ".join(out.stdout.split("\n")[:-1]) if out.returncode == 0 else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.platform()} | {platform.processor() or platform.machine()} | "
            f"{os.cpu_count()} CPUs (load {load:.1f}){gpu} | Python {platform.python_version()}")


def agent_cores(i: int, threads: int) -> list[int] | None:
    cores = sorted(os.sched_getaffinity(0))
    mine = cores[i * threads:(i + 1) * threads]
    return mine if len(mine) == threads else None


def pin_group(pgid: int, cores: list[int]) -> int:
    """Pin every thread of every process in the process group to `cores`; returns threads."""
    pinned = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cores)
                pinned += 1
        except (ProcessLookupError, PermissionError, FileNotFoundError, OSError):
            continue
    return pinned


def start_agents(engine: str, model: str, threads: int, tmp: Path, max_tokens: int,
                 pin: bool) -> list[AgentProcess]:
    settings = {"engine": engine, "model": model, "port": 0, "max_model_len": 1024,
                "max_prompt_tokens": 512, "max_tokens_limit": max(64, max_tokens),
                "sampling": {"max_tokens": max_tokens, "temperature": 0.0}}
    procs = []
    for i, name in enumerate(AGENTS):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        cores = agent_cores(i, threads) if pin else None
        if cores:  # vLLM CPU binds its OpenMP threads itself: tell it which cores are its own
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {name: {**settings, "state_dir": str(tmp / name)}}}))
        procs.append(AgentProcess(name, config=cfg, env=env, log_path=tmp / f"{name}.log"))
    try:
        start_all(procs, timeout=900)
    except Exception as e:
        raise SystemExit(f"agents failed to start: {e} (logs in {tmp})") from None
    for i, p in enumerate(procs):
        cores = agent_cores(i, threads) if pin else None
        if cores:
            pin_group(p.proc.pid, cores)  # start_new_session: the group id is the pid
    return procs


async def measure(addresses: dict[str, str], reps: int, max_tokens: int) -> dict:
    clients = {a: AsyncAgentClient(addr, timeout=600, retries=0) for a, addr in addresses.items()}

    async def call(agent: str) -> float:
        t = time.perf_counter()
        out = await clients[agent].generate(messages=[{"role": "user", "content": PROMPTS[agent]}],
                                            max_tokens=max_tokens, temperature=0.0, seed=0)
        tokens[agent] = len(out.token_ids)
        return time.perf_counter() - t

    async def alone() -> dict:
        return {a: await call(a) for a in AGENTS}

    async def concurrent() -> float:
        t = time.perf_counter()
        await asyncio.gather(*(call(a) for a in AGENTS))
        return time.perf_counter() - t

    async def sequential() -> float:
        t = time.perf_counter()
        for a in AGENTS:
            await call(a)
        return time.perf_counter() - t

    tokens: dict[str, int] = {}
    try:
        await alone()  # warm-up (first-call compilation, caches)
        rows = []
        for r in range(reps):
            res = {}
            order = [("alone", alone), ("concurrent", concurrent), ("sequential", sequential)]
            order = order[r % 3:] + order[:r % 3]
            for name, fn in order:
                res[name] = await fn()
            slower = max(res["alone"].values())
            rows.append({"alone": res["alone"], "slower_alone": slower, "concurrent": res["concurrent"],
                         "sequential": res["sequential"], "ratio_vs_slower": res["concurrent"] / slower,
                         "ratio_vs_sequential": res["concurrent"] / res["sequential"]})
    finally:
        await asyncio.gather(*(c.close() for c in clients.values()))
    med = {k: statistics.median(row[k] for row in rows)
           for k in ("slower_alone", "concurrent", "sequential", "ratio_vs_slower", "ratio_vs_sequential")}
    return {"reps": rows, "median": med, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["transformers", "vllm"], default="vllm")
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="torch threads per agent service (CPU)")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin each agent to its own cores (when there are enough)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: transformers engine, tiny random model, 2 reps (figures marked smoke)")
    args = ap.parse_args()
    if args.quick:
        args.engine, args.model, args.reps = "transformers", "embedded:tiny-llama", 2

    with tempfile.TemporaryDirectory(prefix="collm-bench-") as tmp:
        t = time.perf_counter()
        procs = start_agents(args.engine, args.model, args.threads, Path(tmp), args.max_tokens, args.pin)
        started = time.perf_counter() - t
        try:
            result = asyncio.run(measure({p.agent: p.address for p in procs}, args.reps, args.max_tokens))
        finally:
            for p in procs:
                p.stop(timeout=30)
    med = result["median"]
    print(f"machine: {machine()}")
    pinned = "pinned to own cores" if args.pin and agent_cores(1, args.threads) else "not pinned"
    print(f"engine {args.engine}, model {args.model}, {args.threads} thread(s)/agent ({pinned}), "
          f"max_tokens {args.max_tokens} (generated {result['tokens']}), {args.reps} reps, "
          f"agents started in {started:.1f} s")
    print(f"{'rep':>4} {'slower alone s':>15} {'concurrent s':>13} {'sequential s':>13} "
          f"{'conc/slower':>12} {'conc/seq':>9}")
    for i, row in enumerate(result["reps"]):
        print(f"{i:>4} {row['slower_alone']:>15.3f} {row['concurrent']:>13.3f} {row['sequential']:>13.3f} "
              f"{row['ratio_vs_slower']:>12.2f} {row['ratio_vs_sequential']:>9.2f}")
    print(f"{'med':>4} {med['slower_alone']:>15.3f} {med['concurrent']:>13.3f} {med['sequential']:>13.3f} "
          f"{med['ratio_vs_slower']:>12.2f} {med['ratio_vs_sequential']:>9.2f}")
    print("ideal: conc/slower 1.00, conc/seq 0.50")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                         **result}, indent=2))
    spread = lambda k: f"{min(r[k] for r in result['reps']):.2f}–{max(r[k] for r in result['reps']):.2f}"  # noqa: E731
    print_table(smoke_title(f"parallel turn: 2 agents ({args.engine}, {args.model}, {args.max_tokens} tokens, "
                            f"{args.reps} reps, {pinned})", args.quick), [
        ("concurrent ÷ slower alone", f"{med['ratio_vs_slower']:.2f}",
         f"1.00 = perfectly parallel; median, range {spread('ratio_vs_slower')}"),
        ("concurrent ÷ sequential", f"{med['ratio_vs_sequential']:.2f}",
         f"0.50 = perfectly parallel; median, range {spread('ratio_vs_sequential')}"),
    ])


if __name__ == "__main__":
    main()
