"""Time as the scheduler and the pipeline see it: real in the daemon, manual in tests.

Everything that asks "what time is it" or "wake me at that time" goes through a `Clock`,
so tests can move time forward at will instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of the current time and of timed waits.

    `wait` takes its timeout as an argument (rather than callers using asyncio.timeout)
    because the timeout is measured on this clock, which is not real time in tests.
    """

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait until `event` is set (True) or `timeout` seconds pass (False).

        `timeout` None waits for the event only; a timeout <= 0 just reports whether the
        event is set.
        """
        ...


class SystemClock:
    """The real clock of the machine."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return event.is_set()
        return True


class ManualClock:
    """A clock that only moves when told to, for deterministic tests.

    Waits never sleep in real time: a wait with a timeout ends when its event is set or
    when `advance` moves the time to or past its deadline.
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        # (deadline, sequence, future): the sequence keeps the heap from comparing futures.
        self._timers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._sequence = itertools.count()

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward and end the waits whose deadline has come."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += timedelta(seconds=seconds)
        while self._timers and self._timers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)

    @property
    def timed_waiters(self) -> int:
        """How many waits with a timeout are in progress."""
        return len(self._timers)

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            await event.wait()
            return True
        if timeout <= 0:
            return False
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now + timedelta(seconds=timeout)
        heapq.heappush(self._timers, (deadline, next(self._sequence), timer))
        event_waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((timer, event_waiter), return_when=asyncio.FIRST_COMPLETED)
        finally:
            event_waiter.cancel()
            if not timer.done():
                # Woken by the event (or cancelled): forget the timer so that waits which
                # never reach their deadline do not pile up.
                timer.cancel()
                self._timers = [entry for entry in self._timers if entry[2] is not timer]
                heapq.heapify(self._timers)
        return event.is_set()
