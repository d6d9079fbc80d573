"""ArrivalGate (collm_serve/engines/base.py): requests sent together reach the engine together.

Without it a CPU engine starts a step on the first request of a burst and prefills the rest a step
later; bench/serve_overhead.py measures the effect. These tests pin the gate's contract on a real
event loop: a burst goes on in one turn, a lone request waits only the quiet period, a steady
trickle is capped, and one cancelled caller leaves the others waiting normally."""

from __future__ import annotations

import asyncio

import pytest

from collm_serve.engines.base import ArrivalGate


async def _through(gate: ArrivalGate, released: list, name, delay: float = 0.0) -> None:
    await asyncio.sleep(delay)
    await gate.wait()
    released.append((name, asyncio.get_running_loop().time()))


def test_a_burst_goes_on_together_after_the_quiet_period():
    async def main():
        gate, released = ArrivalGate(0.05), []
        t0 = asyncio.get_running_loop().time()
        # arrivals 0, 20, 40 ms apart: each within the quiet period of the one before
        await asyncio.gather(*[_through(gate, released, i, 0.02 * i) for i in range(3)])
        times = [t for _, t in released]
        assert sorted(n for n, _ in released) == [0, 1, 2]
        assert max(times) - min(times) < 0.005  # one release for all three
        assert min(times) - t0 >= 0.04 + 0.05 - 0.005  # quiet period after the LAST arrival
    asyncio.run(main())


def test_a_lone_request_waits_only_the_quiet_period_and_zero_is_off():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ArrivalGate(0.03).wait()
        assert 0.025 <= loop.time() - t0 < 0.2
        t0 = loop.time()
        await ArrivalGate(0.0).wait()
        assert loop.time() - t0 < 0.005
    asyncio.run(main())


def test_a_steady_trickle_is_released_at_the_cap():
    async def main():
        gate, released = ArrivalGate(0.03, max_wait_s=0.1), []
        t0 = asyncio.get_running_loop().time()
        # one arrival every 20 ms for 300 ms: never quiet for 30 ms, so the cap must release
        await asyncio.gather(*[_through(gate, released, i, 0.02 * i) for i in range(15)])
        first_release = min(t for _, t in released) - t0
        assert first_release < 0.1 + 0.05  # the first group did not wait for the trickle to end
        assert len({round(t, 2) for _, t in released}) >= 2  # released in several groups
    asyncio.run(main())


def test_a_cancelled_caller_does_not_cancel_the_others():
    async def main():
        gate, released = ArrivalGate(0.05), []
        doomed = asyncio.create_task(gate.wait())
        others = [asyncio.create_task(_through(gate, released, i)) for i in range(3)]
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.gather(*others)
        assert sorted(n for n, _ in released) == [0, 1, 2]
        with pytest.raises(asyncio.CancelledError):
            await doomed
    asyncio.run(main())
