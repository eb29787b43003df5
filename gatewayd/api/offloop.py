"""Blocking work on what a client sent, off the event loop and bounded in time.

Parsing and checking an uploaded rule is CPU work whose cost the client chooses. It runs
in a thread of its own, so that the loop keeps serving the API, the protocol servers and
the signals meanwhile. At most `limit` such threads run at once: a slot is freed when its
thread really ends, not when its caller gave up waiting, so that hostile requests cannot
pile up threads. The caller waits at most `timeout` seconds, waiting for a slot
included. A thread cannot be stopped from outside: one that overruns finishes on its
own and its result is dropped; being a daemon thread, it never holds up the exit of the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class OverTime(Exception):
    """The work did not finish (or could not start) within its time."""


class OffLoop:
    """Runs blocking calls in daemon threads, `limit` at a time."""

    def __init__(self, limit: int, name: str) -> None:
        self.limit = limit
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(limit)

    def _slots_of(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        # An asyncio semaphore belongs to one loop (tests run one loop after another).
        if loop is not self._loop:
            self._loop, self._slots = loop, asyncio.Semaphore(self.limit)
        return self._slots

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """`fn(*args)` in a thread; its result or its exception. Raises OverTime when it
        takes longer than `timeout` seconds (the thread is left to finish)."""
        loop = asyncio.get_running_loop()
        slots = self._slots_of(loop)
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                await slots.acquire()
                future: asyncio.Future[T] = loop.create_future()

                def finish(ok: bool, value: Any) -> None:
                    slots.release()
                    if future.done():  # the caller gave up
                        return
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)

                def work() -> None:
                    try:
                        outcome: tuple[bool, Any] = (True, fn(*args))
                    except BaseException as exc:  # handed to the caller
                        outcome = (False, exc)
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        loop.call_soon_threadsafe(finish, *outcome)

                threading.Thread(target=work, name=self.name, daemon=True).start()
                return await future
        except TimeoutError:
            if not scope.expired():
                raise  # raised by `fn` itself
            raise OverTime(f"{self.name}: not done within {timeout:g} s") from None
