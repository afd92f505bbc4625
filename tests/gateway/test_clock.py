"""The injected clock's wait: a deadline on the clock or a wake-up event, whichever first."""

from __future__ import annotations

import asyncio

from gateway.clock import ManualClock, wait_until_or_set

T0 = 1_781_000_000_000


async def test_returns_when_the_clock_reaches_the_deadline() -> None:
    clock, event = ManualClock(T0), asyncio.Event()
    task = asyncio.ensure_future(wait_until_or_set(clock, T0 + 1000, event))
    await clock.advance(999)
    assert not task.done()
    await clock.advance(1)
    assert task.done() and not event.is_set()
    assert clock.pending() == 0


async def test_returns_when_woken_and_leaves_no_sleeper_behind() -> None:
    clock, event = ManualClock(T0), asyncio.Event()
    task = asyncio.ensure_future(wait_until_or_set(clock, T0 + 60_000, event))
    await asyncio.sleep(0)
    event.set()
    await asyncio.wait_for(task, 5)
    assert clock.pending() == 0  # the clock sleeper was cancelled


async def test_without_a_deadline_only_the_event_ends_it() -> None:
    clock, event = ManualClock(T0), asyncio.Event()
    task = asyncio.ensure_future(wait_until_or_set(clock, None, event))
    await clock.advance(10**9)
    assert not task.done()
    event.set()
    await asyncio.wait_for(task, 5)


async def test_a_deadline_already_passed_returns_at_once() -> None:
    clock = ManualClock(T0)
    await asyncio.wait_for(wait_until_or_set(clock, T0 - 1, asyncio.Event()), 5)
