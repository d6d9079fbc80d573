"""Packing: two agents on ONE engine vs each on its own engine (collm_serve/agent/packing.py).

    episodes/hour packed ÷ separate   collection throughput of the same team, same episodes
                                      (goal >= 1.8: both agents' requests share one batch)
    memory packed ÷ separate          sum of the RSS of the agent processes and their engine
                                      processes (goal <= 0.6: one copy of the model, one KV cache)

    python bench/packing.py                  # toy task, vLLM, SmolLM2, 16 episodes per side
    python bench/packing.py --quick          # 4 episodes per side: checks it works

Each side starts its agents fresh (`collm_serve.launcher.AgentProcess`; packed = one process
running `start --agents helper,main`), runs `collect` on the same planned episodes, samples the
memory of every process of the agents' process groups every 0.2 s (peak of the sum), then stops
them. Fair hardware: separate agents each get their own half of the cores (`cpu_affinity`, as
two agents on two GPUs would), the packed engine gets all of them; every engine has the same
`--kv-cache-mib`. RSS counts pages shared between processes once per process; PSS (shared pages
split between their users) is printed beside it. On a shared machine the figures are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import print_table  # noqa: E402
from collm_serve.launcher import AgentProcess, start_all  # noqa: E402

AGENTS = ("helper", "main")


def _kib(pid: int, path: str, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_memory(pgids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes of every process in these process groups (agents + engine cores)."""
    rss = pss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) not in pgids:
                continue
        except OSError:
            continue
        rss += _kib(int(entry), "status", "VmRSS")
        pss += _kib(int(entry), "smaps_rollup", "Pss")
    return rss << 10, pss << 10


class PeakMemory:
    """Peak of the summed RSS/PSS, sampled in a thread while the side runs."""

    def __init__(self, pgids: list[int]):
        self.pgids, self.rss, self.pss = pgids, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = group_memory(self.pgids)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._stop.wait(0.2)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def agents_file(tmp: Path, args, packed: bool) -> Path:
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    agents = {}
    for i, name in enumerate(AGENTS):
        own = cores if packed or len(cores) < 2 else cores[i * half:(i + 1) * half]
        agents[name] = {
            "engine": args.engine, "model": args.model, "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512,
            "kv_cache_bytes": args.kv_cache_mib << 20, "keep_versions": 2, "cpu_affinity": own,
            "state_dir": str(tmp / f"state-{name}"), "max_concurrent_requests": 16,
        }
    path = tmp / ("packed.yaml" if packed else "separate.yaml")
    path.write_text(yaml.safe_dump({"agents": agents}))
    return path


def start(tmp: Path, args, packed: bool) -> list[AgentProcess]:
    cfg = agents_file(tmp, args, packed)
    if packed:
        return [AgentProcess(list(AGENTS), config=cfg, log_path=tmp / "packed.log").start(timeout=900)]
    procs = [AgentProcess(a, config=cfg, log_path=tmp / f"{a}.log") for a in AGENTS]
    try:
        return start_all(procs, timeout=900)
    except Exception as e:
        raise SystemExit(f"agents failed to start: {e} (logs in {tmp})") from None


def run_side(tmp: Path, args, packed: bool) -> dict:
    from collm_serve.orchestrator.collector import collect
    from collm_serve.team import TeamConfig

    label = "packed" if packed else "separate"
    procs = start(tmp, args, packed)
    try:
        addresses = ({a: procs[0].endpoint(a).address for a in AGENTS} if packed
                     else {p.agent: p.address for p in procs})
        sampling = {"max_tokens": args.max_tokens, "temperature": 0.7}
        team = TeamConfig(task=args.task, agents={a: {"address": addresses[a], "sampling": sampling} for a in AGENTS},
                          traces=str(tmp / f"{label}.db"), seed=args.seed)
        with PeakMemory([p.proc.pid for p in procs]) as mem:
            summary = asyncio.run(collect(team, args.episodes, "train", concurrency=args.concurrency))
    finally:
        for p in procs:
            p.stop()
    if summary.failed:
        raise SystemExit(f"{label}: {summary.failed} episode(s) failed: {summary.failure_report()[:3]}")
    per_hour = summary.ok / summary.elapsed_s * 3600
    print(f"{label}: {summary.ok} episodes in {summary.elapsed_s:.1f} s = {per_hour:.0f}/h; "
          f"peak RSS {mem.rss / 2**20:.0f} MiB, PSS {mem.pss / 2**20:.0f} MiB", flush=True)
    return {"per_hour": per_hour, "rss": mem.rss, "pss": mem.pss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="toy", help="team task (toy: helper + main, 1 turn)")
    ap.add_argument("--episodes", type=int, default=16, help="episodes per side")
    ap.add_argument("--concurrency", type=int, default=4, help="episodes in flight")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "transformers"])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--kv-cache-mib", type=int, default=128, help="KV cache of EACH engine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 episodes per side, 24 tokens")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.max_tokens = 4, 24
    with tempfile.TemporaryDirectory(prefix="collm-bench-packing-") as tmp:
        separate = run_side(Path(tmp), args, packed=False)
        packed = run_side(Path(tmp), args, packed=True)
    mib = 2**20
    print_table(f"packing: 2 agents, {args.task}, {args.engine} {args.model}, {args.episodes} episodes per side", [
        ("episodes/hour packed ÷ separate", f"{packed['per_hour'] / separate['per_hour']:.2f}",
         "same cores; goal >= 1.8"),
        ("episodes/hour per engine packed ÷ separate", f"{2 * packed['per_hour'] / separate['per_hour']:.2f}",
         "2 x the above: one packed device vs one device per agent (derived, not measured)"),
        ("memory (RSS) packed ÷ separate", f"{packed['rss'] / separate['rss']:.2f}", "goal <= 0.6"),
        ("memory (PSS) packed ÷ separate", f"{packed['pss'] / separate['pss']:.2f}", "shared pages split"),
        ("episodes/hour separate | packed", f"{separate['per_hour']:.0f} | {packed['per_hour']:.0f}", ""),
        ("peak RSS MiB separate | packed", f"{separate['rss'] / mib:.0f} | {packed['rss'] / mib:.0f}",
         "agents + engine processes"),
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
