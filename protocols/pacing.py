"""Bandwidth limits for protocol clients (`max_rate` partner settings)."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Keeps a copy loop under `rate` bytes per second (0: no limit): call `pace(n)`
    after moving n bytes; it sleeps while the loop is ahead of the allowed rate."""

    def __init__(self, rate: int) -> None:
        self.rate, self.start, self.sent = rate, time.monotonic(), 0

    async def pace(self, nbytes: int) -> None:
        if not self.rate:
            return
        self.sent += nbytes
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)
