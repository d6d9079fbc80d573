"""Load: 2000 requests at concurrency 64 against one agent whose admission bound is small
(4 in the engine, 8 waiting). Overload must show up only as RESOURCE_EXHAUSTED, every accepted
request must complete with its tokens, the server's memory must stay bounded and its admission
counters must come back to zero."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from collm_serve.client import AsyncAgentClient, ResourceExhaustedError
from tests.conftest import gauge
from tests.reliability.helpers import FAST_AGENT, PROMPT, assert_serves, rss_bytes

REQUESTS, CONCURRENCY, MAX_TOKENS = 2000, 64, 2
WARM_UP = 200  # requests before the memory baseline: first calls allocate caches and pools
# Bound on RSS growth over the 2000 requests. Measured growth on the tiny model is a few MiB
# (allocator noise); a leak of ~16 KiB per request, or the queue holding rejected requests,
# exceeds it.
RSS_GROWTH_BOUND = 32 << 20


async def hammer(address: str, n_requests: int, concurrency: int, seed: int = 0):
    """`concurrency` clients sharing one channel send `n_requests` in all; a quarter streamed.

    A refused client backs off 0.1-0.5 s, as a real one would, so the run takes a few seconds
    and a fair number of requests get in. Returns (outcomes, failures, bad outputs)."""
    outcomes: Counter[str] = Counter()
    failures: list[BaseException] = []
    bad_outputs: list[str] = []
    budget = iter(range(n_requests))
    rng = random.Random(seed)

    async with AsyncAgentClient(address, retries=0, timeout=120) as c:
        async def one(i: int) -> None:
            kw = dict(messages=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=i)
            if i % 4 == 3:
                chunks = [ch async for ch in c.generate_stream(**kw)]
                ids = [t for ch in chunks for t in ch.token_ids]
                lps = [x for ch in chunks for x in ch.logprobs]
                if not (chunks[0].prompt_token_ids and 0 < len(ids) == len(lps) <= MAX_TOKENS
                        and chunks[-1].usage.completion_tokens == len(ids)):
                    bad_outputs.append(f"stream {i}: {len(ids)} tokens, {len(lps)} log-probs")
            else:
                out = await c.generate(**kw)
                if not (0 < len(out.token_ids) == len(out.logprobs) <= MAX_TOKENS
                        and out.finish_reason in ("stop", "length")):
                    bad_outputs.append(f"unary {i}: {out}")

        async def client() -> None:
            for i in budget:
                try:
                    await one(i)
                    outcomes["ok"] += 1
                except ResourceExhaustedError:
                    outcomes["resource_exhausted"] += 1
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
                except Exception as e:  # noqa: BLE001 - every other failure counts
                    failures.append(e)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes, failures, bad_outputs


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_bytes(pid))
        await asyncio.sleep(0.25)


def check_load(agent, n_requests: int = REQUESTS, concurrency: int = CONCURRENCY) -> dict:
    """The whole check (also run against a leaking server in test_can_fail.py)."""
    pid = agent.proc.pid
    asyncio.run(hammer(agent.address, WARM_UP, concurrency, seed=1))
    before = rss_bytes(pid)
    samples: list[int] = []

    async def run():
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, samples, stop))
        try:
            return await hammer(agent.address, n_requests, concurrency)
        finally:
            stop.set()
            await sampler

    start = time.monotonic()
    outcomes, failures, bad_outputs = asyncio.run(run())
    seconds = time.monotonic() - start
    after = rss_bytes(pid)
    report = dict(outcomes, seconds=round(seconds, 1), rss_before_mib=before >> 20, rss_after_mib=after >> 20,
                  rss_peak_mib=max(samples + [after]) >> 20)
    print(f"load: {report}")

    assert not failures, f"errors other than RESOURCE_EXHAUSTED: {failures[:5]}"
    assert not bad_outputs, bad_outputs[:5]
    assert outcomes["ok"] + outcomes["resource_exhausted"] == n_requests, outcomes
    assert outcomes["resource_exhausted"] > 0, "the admission bound was never reached: the test proves nothing"
    assert outcomes["ok"] >= FAST_AGENT["max_concurrent_requests"] + FAST_AGENT["max_queued_requests"], outcomes
    assert max(samples + [after]) - before < RSS_GROWTH_BOUND, (
        f"server RSS grew from {before >> 20} to {max(samples + [after]) >> 20} MiB (bound +{RSS_GROWTH_BOUND >> 20})")
    # nothing is left holding an engine slot or a queue place
    assert gauge(agent, "collm_requests_in_flight") == 0 and gauge(agent, "collm_queue_depth") == 0
    assert_serves(agent.address)
    return report


def test_2000_requests_at_concurrency_64_only_resource_exhausted(fast_agent):
    check_load(fast_agent)
