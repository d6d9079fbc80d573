"""gRPC serving overhead, measured side by side in one run: the agent service vs its engine in-process.

For unary (`Generate`) and streaming (`GenerateStream`) requests at concurrency 1, 8 and 32:
tokens/s through gRPC (agent in its own process, the asyncio client here) ÷ tokens/s calling the
same engine in-process with the same prompt ids, sampling and seeds (goal >= 0.97, on the overall
rate and on the median of the per-round ratios). Every request generates exactly `--max-tokens`
tokens (`min_tokens = max_tokens`), so each round is the same fixed work on both sides.
Each cell also gets the geometric mean of its per-round ratios with a 95% bootstrap interval, and a
last row pools every cell's rounds: whether this run can tell the service's cost from 3% at all.

Both sides stay up for the whole run and take turns round by round, the order alternating, so
machine-load drift hits each side alike; each timed round starts after `SETTLE_S` of rest, once
the engine that ran before has stopped spinning (an idle engine then costs ~0 CPU). Beside the
rates it reports CPU seconds per 1000 generated tokens of: the agent process (gRPC side: service +
engine front end), the in-process front end (this process during in-process rounds), the engine
core process of each side, and the client (this process during gRPC rounds) — on a CPU machine that
front-end time is taken from the engine's cores; on a GPU box it is what stands between the engine
and its next batch.
Same seeds → the same sampled tokens on both sides; the run reports how many matched. Streaming
uses the agent's default `stream_interval` (collm_serve.config.STREAM_INTERVAL tokens per message) on
both sides — the in-process engine gets the same per-request `stream_interval` — or `--stream-interval`.

    python bench/serve_overhead.py                       # the real thing: vLLM + SmolLM2-135M
    python bench/serve_overhead.py --quick               # smoke figures (1 round, 16 tokens)
    python bench/serve_overhead.py --with-transformers   # also vLLM-CPU ÷ transformers engine
    python bench/serve_overhead.py --stream-interval 1   # a stream message per token
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("COLLM_HOME", str(Path(__file__).resolve().parents[1] / ".collm"))

from bench.common import print_table, smoke_title  # noqa: E402
from collm_serve.config import STREAM_INTERVAL  # noqa: E402
from collm_train.evaluate import Estimate, mean_ci  # noqa: E402

PROMPTS = [f"Write a long story, at least 300 words, about the number {i}." for i in range(32)]
SAMPLING = {"temperature": 0.7, "top_p": 0.9}
CONCURRENCY = (1, 8, 32)
MODES = ("unary", "stream")
# Requests per round: concurrency 1 runs a few one after another so a round is not one request long.
REQUESTS = {1: 3, 8: 8, 32: 32}
GOAL = 0.97  # gRPC ÷ in-process, overall and median of rounds, in every cell (issue 17)
COST = f"{1 - GOAL:.0%}"  # the service cost the goal allows
# Seconds of rest before each timed round. vLLM's shared-memory queue readers (the worker and the
# engine core) keep busy-looping with sched_yield for 1 s after their last read (vllm/distributed/
# device_communicators/shm_broadcast.py, SpinCondition busy_loop_s=1), so the engine that just ran
# keeps spinning on the cores the other side is about to be timed on. Measured without the rest
# (stream, concurrency 1, 60 alternating single requests): the first request after a switch took
# 0.50 s (gRPC) / 0.29 s (in-process) longer than one after the same side, of ~2.5 s; with 1.5 s
# of rest the two were equal and the per-pair ratios' spread fell from 0.19 to 0.07 (sd of log).
# Both sides rest alike, so a cost the service pays after an idle moment still counts.
SETTLE_S = 1.5


def cpu_seconds(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class CpuMeter:
    """CPU seconds of a process and, separately, of its child processes (the engine core),
    leaving out the process trees of `exclude` (this process's children include the agent)."""

    def __init__(self, pid: int, exclude: tuple[int, ...] = ()):
        import psutil

        self.proc = psutil.Process(pid)
        self.exclude = exclude

    def read(self) -> tuple[float, float]:
        own = cpu_seconds(self.proc)
        skip = set(self.exclude)
        for pid in self.exclude:
            try:
                skip.update(c.pid for c in type(self.proc)(pid).children(recursive=True))
            except Exception:
                pass
        kids = 0.0
        for child in self.proc.children(recursive=True):
            if child.pid in skip:
                continue
            try:
                kids += cpu_seconds(child)
            except Exception:  # a child that just ended
                pass
        return own, kids


class InProcess:
    """The engine called directly, as a library user would (no gRPC, no service), built from the
    agent's own config by the agent's own `engine_for`: the same engine options (LoRA slots, KV
    cache, seed) on both sides, so the ratio is the service's cost and nothing else."""

    def __init__(self, config):
        self.config = config
        self.stream_interval = config.stream_interval

    async def start(self):
        from transformers import AutoTokenizer

        from collm_serve.agent.server import engine_for
        from collm_serve.models import chat_prompt_ids, model_id_for, resolve_model

        path = resolve_model(self.config.model)
        tok = AutoTokenizer.from_pretrained(path)
        self.prompts = [chat_prompt_ids(tok, [{"role": "user", "content": text}]) for text in PROMPTS]
        self.engine = engine_for(self.config, path, model_id_for(self.config.model))
        await self.engine.start()
        return self

    async def one(self, i: int, tag: str, max_tokens: int, mode: str) -> list[int]:
        from collm_serve.engines.base import EngineRequest, SamplingParams

        req = EngineRequest(f"{tag}-{i}", self.prompts[i],
                            SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, seed=100 + i, **SAMPLING),
                            stream=mode == "stream", stream_interval=self.stream_interval)
        return [t async for d in self.engine.generate(req) for t in d.token_ids]

    async def close(self):
        await self.engine.shutdown()


class ThroughGrpc:
    """The same engine behind the agent service, in its own process, via the asyncio client."""

    def __init__(self, client):
        self.client = client

    async def one(self, i: int, tag: str, max_tokens: int, mode: str) -> list[int]:
        kw = dict(messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens, min_tokens=max_tokens,
                  seed=100 + i, **SAMPLING)
        if mode == "unary":
            return list((await self.client.generate(**kw)).token_ids)
        return [t async for chunk in self.client.generate_stream(**kw) for t in chunk.token_ids]


async def one_round(side, tag: str, max_tokens: int, mode: str, concurrency: int) -> tuple[float, list[list[int]]]:
    """`REQUESTS[concurrency]` requests, at most `concurrency` at a time; (seconds, token ids)."""
    n = REQUESTS.get(concurrency, concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def gated(i: int) -> list[int]:
        async with gate:
            return await side.one(i, tag, max_tokens, mode)

    start = time.perf_counter()
    outs = await asyncio.gather(*[gated(i) for i in range(n)])
    return time.perf_counter() - start, list(outs)


async def measure(model: str, max_tokens: int, rounds: int, concurrencies, modes, with_transformers: bool,
                  stream_interval: int) -> dict:
    import yaml

    from collm_serve.client import AsyncAgentClient
    from collm_serve.config import AgentConfig
    from collm_serve.launcher import AgentProcess

    with tempfile.TemporaryDirectory() as tmp:
        settings = {
            "engine": "vllm", "model": model, "port": 0, "max_model_len": 1024, "max_prompt_tokens": 512,
            "kv_cache_bytes": 256 << 20, "keep_versions": 2, "max_concurrent_requests": max(concurrencies),
            "stream_interval": stream_interval, "state_dir": str(Path(tmp) / "state")}
        config = AgentConfig(name="coder", **settings)
        cfg = Path(tmp) / "agents.yaml"
        cfg.write_text(yaml.safe_dump({"agents": {"coder": settings}}))
        with AgentProcess("coder", config=cfg) as agent:
            async with AsyncAgentClient(agent.address) as client:
                inproc = await InProcess(config).start()
                sides = {"inproc": inproc, "grpc": ThroughGrpc(client)}
                meters = {"inproc": CpuMeter(os.getpid(), exclude=(agent.proc.pid,)), "grpc": CpuMeter(agent.proc.pid)}
                me = CpuMeter(os.getpid())
                cells = [(m, c) for m in modes for c in concurrencies]
                for name, side in sides.items():  # kernel compile, caches, every batch shape once
                    for mode, c in cells:
                        await one_round(side, f"warm-{name}-{mode}-{c}", max_tokens, mode, c)
                res = {cell: {"seconds": {s: [] for s in sides}, "tokens": {s: [] for s in sides},
                              "front_cpu": {s: 0.0 for s in sides}, "core_cpu": {s: 0.0 for s in sides},
                              "client_cpu": 0.0, "same": 0, "requests": 0} for cell in cells}
                for r in range(rounds):
                    for mode, c in cells:
                        cell, outs = res[(mode, c)], {}
                        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                        for name in order:
                            await asyncio.sleep(SETTLE_S)  # the other side's engine stops spinning
                            before, client_before = meters[name].read(), me.read()[0]
                            seconds, outs[name] = await one_round(sides[name], f"r{r}-{name}-{mode}-{c}",
                                                                  max_tokens, mode, c)
                            after = meters[name].read()
                            cell["seconds"][name].append(seconds)
                            cell["tokens"][name].append(sum(map(len, outs[name])))
                            cell["front_cpu"][name] += after[0] - before[0]
                            cell["core_cpu"][name] += after[1] - before[1]
                            if name == "grpc":
                                cell["client_cpu"] += me.read()[0] - client_before
                        cell["same"] += sum(a == b for a, b in zip(outs["inproc"], outs["grpc"]))
                        cell["requests"] += len(outs["grpc"])
                await inproc.close()
                transformers = None
                if with_transformers:
                    tf = await InProcess(config.model_copy(update={"engine": "transformers"})).start()
                    await one_round(tf, "warm-tf", max_tokens, "unary", 8)
                    seconds, outs = await one_round(tf, "tf", max_tokens, "unary", 8)
                    transformers = sum(map(len, outs)) / seconds
                    await tf.close()
    return {"cells": res, "transformers": transformers}


def geometric_mean_ci(ratios: list[float]) -> Estimate:
    """The geometric mean of per-round ratios with its 95% bootstrap interval (collm_train.evaluate,
    the same intervals the learning results use): a ratio's noise is multiplicative, so the mean is
    taken over log ratios. An interval that holds 0.97 says this many rounds cannot tell the cell
    from the goal on this machine; one wholly below it is a real cost."""
    e = mean_ci([math.log(r) for r in ratios])
    return Estimate(math.exp(e.mean), math.exp(e.low), math.exp(e.high), e.n)


def rows_of(m: dict, rounds: int) -> list[tuple[str, str, str]]:
    rows = []
    all_ok = True
    pooled: list[float] = []
    for (mode, c), cell in m["cells"].items():
        rate = {s: sum(cell["tokens"][s]) / sum(cell["seconds"][s]) for s in cell["seconds"]}
        per_round = [(tg / sg) / (ti / si) for tg, sg, ti, si in zip(cell["tokens"]["grpc"], cell["seconds"]["grpc"],
                                                                      cell["tokens"]["inproc"], cell["seconds"]["inproc"])]
        pooled += per_round
        overall, median = rate["grpc"] / rate["inproc"], statistics.median(per_round)
        all_ok &= min(overall, median) >= GOAL
        mean = geometric_mean_ci(per_round)
        tokens = {s: sum(cell["tokens"][s]) / 1000 for s in rate}
        label = f"{mode}, concurrency {c}"
        rows += [
            (f"gRPC ÷ in-process ({label})", f"{overall:.3f}",
             f"goal >= {GOAL}; median of {rounds} rounds {median:.3f} (range {min(per_round):.3f}–{max(per_round):.3f}); "
             f"geometric mean {mean.mean:.3f}, 95% CI [{mean.low:.3f}, {mean.high:.3f}]; "
             f"{rate['grpc']:.1f} vs {rate['inproc']:.1f} tokens/s"),
            (f"CPU s per 1000 tokens ({label}): agent process / in-process front end",
             f"{cell['front_cpu']['grpc'] / tokens['grpc']:.2f} / {cell['front_cpu']['inproc'] / tokens['inproc']:.2f}",
             f"engine core {cell['core_cpu']['grpc'] / tokens['grpc']:.2f} / {cell['core_cpu']['inproc'] / tokens['inproc']:.2f}; "
             f"gRPC client {cell['client_cpu'] / tokens['grpc']:.2f}"),
            (f"same sampled tokens ({label})", f"{cell['same']}/{cell['requests']}", "gRPC vs in-process, same seeds"),
        ]
    rows.append((f"all cells meet gRPC ÷ in-process >= {GOAL}", "yes" if all_ok else "no",
                 "overall rate and median of rounds, every mode and concurrency"))
    if len(m["cells"]) > 1:
        every = geometric_mean_ci(pooled)
        verdict = (f"the service costs less than {COST}" if every.low >= GOAL else f"the service costs more than {COST}"
                   if every.high < GOAL else f"this run cannot tell the cost from {COST}")
        rows.append(("gRPC ÷ in-process, every cell's rounds pooled", f"{every.mean:.3f}",
                     f"geometric mean of {every.n} round ratios, 95% CI [{every.low:.3f}, {every.high:.3f}]: {verdict}"))
    if m["transformers"]:
        vllm8 = m["cells"].get(("unary", 8))
        if vllm8:
            v = sum(vllm8["tokens"]["inproc"]) / sum(vllm8["seconds"]["inproc"])
            rows.append(("vLLM-CPU ÷ transformers", f"{v / m['transformers']:.2f}",
                         f"unary, concurrency 8; transformers {m['transformers']:.1f} tokens/s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=64)
    # 9: single rounds on the 2-core VM spread 0.8-1.2 (neighbours, OpenMP preemption); with 5 the
    # median of one cell moved by ~0.05 between runs of the same code (docs/benchmarks.md)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma-separated")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: unary,stream")
    ap.add_argument("--with-transformers", action="store_true", help="also time the transformers engine (slow)")
    ap.add_argument("--stream-interval", type=int, default=STREAM_INTERVAL,
                    help=f"tokens per stream message, both sides (default: the agent's, {STREAM_INTERVAL})")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 16 tokens (figures marked smoke)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.max_tokens = 1, 16
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if any(c < 1 or c > len(PROMPTS) for c in concurrencies):
        ap.error(f"--concurrency: each value must be 1..{len(PROMPTS)}")
    if args.stream_interval < 1:
        ap.error("--stream-interval: must be >= 1 (tokens per stream message)")
    m = asyncio.run(measure(args.model, args.max_tokens, args.rounds, concurrencies, modes, args.with_transformers,
                            args.stream_interval))
    title = (f"serve overhead: gRPC service vs in-process vLLM, {args.model}, {args.max_tokens} tokens, "
             f"{args.rounds} rounds, streams of {args.stream_interval} tokens per message")
    print_table(smoke_title(title, args.quick), rows_of(m, args.rounds))


if __name__ == "__main__":
    main()
