"""Injected time. Every gateway component reads time from a ``Clock`` so that tests and the demo
can drive days of operation in seconds."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Unix time in milliseconds."""
        ...

    async def sleep_until(self, ms: int) -> None:
        """Return once ``now_ms() >= ms``."""
        ...


class SystemClock:
    """Wall-clock time for production."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep_until(self, ms: int) -> None:
        while True:
            delay = (ms - self.now_ms()) / 1000
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now_ms() + int(seconds * 1000))


class ManualClock:
    """A clock that only moves when ``advance`` or ``set`` is called. Sleepers wake in time order
    as the clock passes their deadline."""

    def __init__(self, start_ms: int = 0) -> None:
        self._now = start_ms
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return self._now

    async def sleep_until(self, ms: int) -> None:
        if ms <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (ms, next(self._seq), fut))
        await fut

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + int(seconds * 1000))

    def pending(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    def next_deadline(self) -> int | None:
        live = [ms for ms, _, f in self._waiters if not f.done()]
        return min(live) if live else None

    async def advance(self, ms: int) -> None:
        """Move time forward by ``ms``, waking each sleeper at its deadline in order and letting
        the woken tasks run before time moves on."""
        await self.set(self._now + ms)

    async def set(self, target_ms: int) -> None:
        while self._waiters and self._waiters[0][0] <= target_ms:
            deadline, _, fut = heapq.heappop(self._waiters)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = max(self._now, target_ms)
        for _ in range(5):
            await asyncio.sleep(0)


async def wait_until_or_set(clock: Clock, until_ms: int | None, event: asyncio.Event) -> None:
    """Return once ``event`` is set or, if ``until_ms`` is given, once ``clock`` reaches it,
    whichever comes first (a loop that has work due at a time, or sooner when woken)."""
    waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(event.wait())}
    if until_ms is not None:
        waiters.add(asyncio.ensure_future(clock.sleep_until(until_ms)))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
