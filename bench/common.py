"""Shared bits of the benchmarks: machine description and a ratio table."""

from __future__ import annotations

import asyncio
import os
import platform
import time

# Long answers: every request runs to max_tokens, so each round of a throughput benchmark is the
# same fixed work on every side (with short answers a round's time is decided by whichever
# sequence happens to run longest: ±10% noise).
LONG_PROMPTS = [f"Write a long story, at least 300 words, about the number {i}." for i in range(8)]


async def timed_round(one, n: int) -> tuple[float, list[list[int]]]:
    """Run `one(i)` for i < n concurrently; (seconds, each request's sampled token ids)."""
    start = time.perf_counter()
    outs = await asyncio.gather(*[one(i) for i in range(n)])
    return time.perf_counter() - start, list(outs)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {gpu}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def smoke_title(title: str, quick: bool) -> str:
    """Mark a table made with `--quick` (tiny sizes) as smoke figures, never to be quoted."""
    return f"{title} [smoke: --quick, not for the record]" if quick else title


def print_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    """rows: (metric, value, note)"""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=machine())
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
