"""Backpressure: at most N requests in the engine, at most Q waiting; beyond that the service
answers RESOURCE_EXHAUSTED at once instead of queueing without bound (memory stays bounded and
clients can go elsewhere)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from collm_serve.errors import ResourceExhausted, Unavailable


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int, on_change=None):
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._slots = asyncio.Semaphore(max_concurrent)
        self.waiting = 0
        self.running = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_change = on_change or (lambda waiting, running: None)

    def _changed(self) -> None:
        if self.waiting == 0 and self.running == 0:
            self._idle.set()
        else:
            self._idle.clear()
        self._on_change(self.waiting, self.running)

    @asynccontextmanager
    async def slot(self):
        if self.draining:
            raise Unavailable("agent is draining (shutting down); retry on another replica")
        if self.running >= self.max_concurrent and self.waiting >= self.max_queued:
            raise ResourceExhausted(
                f"queue full: {self.running} running, {self.waiting} waiting "
                f"(max_queued_requests={self.max_queued}); retry later"
            )
        self.waiting += 1
        self._changed()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self._changed()
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
            self._changed()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
