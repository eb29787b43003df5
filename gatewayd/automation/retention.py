"""The retention of the automation's records: every so often, the records of files and
firings that no longer guard anything and are older than `daemon.automation_retention`
are purged (`Store.purge_automation`), so that the tables do not grow for ever.

What may go, and why it cannot make a file sent or fetched twice:
- a watched file's record once the watcher saw its path missing, or holding another
  file (`gone`), for longer than the retention: the file taken is not in the folder
  any more, so no scan can match it again (a file that comes back later is new
  anyway: a record whose path is missing is never matched again);
- a poller's record once its looks stopped listing that name with that size and time,
  for longer than the retention: the file is not on the partner any more (a file put
  back with the same name, size and time after the purge is fetched again, as a new
  one: the gateway cannot tell it from a new file);
- a schedule's firings but its newest: missed firings are counted from the newest, so
  an older one can never be fired again;
- a poller's first look of a file that no second look followed (the poller deleted or
  paused, the file refused): at worst the file needs one more look.
In each case only records whose transfers are DONE or CANCELLED (or deleted) go: a
transfer in ERROR may still be retried and keeps its record. Each node purges (the
deletes are the same whoever runs them)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import structlog

from gatewayd.clock import Clock
from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.retention")

# The longest between two purges (a short retention purges more often).
_EVERY = 3600.0


class AutomationRetention:
    """Purges the automation's old records every `min(retention / 4, 1 h)`."""

    def __init__(self, store: Store, clock: Clock, retention: float) -> None:
        self._store = store
        self._clock = clock
        self.retention = retention
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Purges done so far, and what the last one removed (tests, the log).
        self.passes = 0
        self.last: dict[str, int] = {}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="automation-retention")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def purge(self) -> dict[str, int]:
        """Purge now; how many records of each table went."""
        before = self._clock.now() - timedelta(seconds=self.retention)
        counts = await self._store.purge_automation(before)
        self.last = counts
        if any(counts.values()):
            log.info("automation records purged", before=before.isoformat(), **counts)
        return counts

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.purge()
            except Exception as exc:  # the database away: the next pass tries again
                log.warning("automation purge failed", error=f"{type(exc).__name__}: {exc}")
            self.passes += 1
            self._wake.clear()
            await self._clock.wait(self._wake, min(self.retention / 4, _EVERY))
