"""The live feed of this node's running transfers: sampled once a second from the
engine's runs (their progress is what the pipeline records as data moves), with a
rate and an ETA per transfer, the node's throughput over the last minutes and, while
someone listens, the count of transfers per status (from the database, so every node's).

One sampler serves every listener: each has a small queue that keeps only the newest
snapshots, so a slow browser misses samples instead of holding memory or the sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

import structlog

from gatewayd.model import Transfer

log = structlog.get_logger("gatewayd.console")

INTERVAL = 1.0  # seconds between samples
HISTORY = 300  # seconds of throughput kept (one point per sample)
COUNT_EVERY = 5.0  # seconds between counts by status (database queries)
QUEUE = 4  # snapshots a listener may be behind before the oldest are dropped
# Weight of the newest sample in a transfer's smoothed rate.
SMOOTHING = 0.4


@dataclass
class _Seen:
    progress: int
    at: float
    rate: float = 0.0


@dataclass
class LiveFeed:
    """Samples `running()` every `interval` seconds while `run()` runs."""

    running: Callable[[], Iterable[Transfer]]
    node: str
    tz: Callable[[], tzinfo]
    # Transfers per status, from the database (None: no counts).
    counts: Callable[[], Awaitable[Mapping[str, int]]] | None = None
    interval: float = INTERVAL
    monotonic: Callable[[], float] = time.monotonic
    _seen: dict[int, _Seen] = field(default_factory=dict)
    _history: deque[tuple[str, float]] = field(default_factory=deque)
    _listeners: set[asyncio.Queue[dict[str, Any] | None]] = field(default_factory=set)
    _counts: Mapping[str, int] = field(default_factory=dict)
    _counted: float = float("-inf")
    _closed: bool = False
    latest: dict[str, Any] | None = None

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[dict[str, Any] | None]]:
        """A queue of snapshots (the latest one first, if any); None means the feed
        closed (the daemon stops)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        if self._closed:
            queue.put_nowait(None)
        elif self.latest is not None:
            queue.put_nowait(self.latest)
        self._listeners.add(queue)
        self._counted = float("-inf")  # a new page gets fresh counts at the next sample
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    async def run(self) -> None:
        """Sample until cancelled or closed."""
        while not self._closed:
            try:
                await self.sample()
            except Exception:  # a bad sample must not end the feed
                log.exception("live feed sample failed")
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        """Tell every listener the feed ends (they close their streams at once)."""
        self._closed = True
        for queue in self._listeners:
            self._offer(queue, None)

    async def sample(self) -> dict[str, Any]:
        """Take one sample and hand it to every listener."""
        now = self.monotonic()
        tz = self.tz()
        moved = 0.0
        rows = []
        seen: dict[int, _Seen] = {}
        for t in self.running():
            if t.id is None:
                continue
            before = self._seen.get(t.id)
            state = _Seen(t.progress, now)
            if before is not None and now > before.at:
                delta = max(0, t.progress - before.progress)
                moved += delta
                fresh = delta / (now - before.at)
                state.rate = SMOOTHING * fresh + (1 - SMOOTHING) * before.rate
            seen[t.id] = state
            rows.append(_row(t, state.rate, tz))
        self._seen = seen
        wall = datetime.now(tz).isoformat(timespec="seconds")
        self._history.append((wall, moved / self.interval))
        while len(self._history) > HISTORY / self.interval:
            self._history.popleft()
        if self.counts is not None and self._listeners and now - self._counted >= COUNT_EVERY:
            self._counted = now
            self._counts = dict(await self.counts())
        snapshot = {
            "node": self.node,
            "time": wall,
            "running": rows,
            "throughput": list(self._history),
            "counts": dict(self._counts),
        }
        self.latest = snapshot
        for queue in self._listeners:
            self._offer(queue, snapshot)
        return snapshot

    @staticmethod
    def _offer(queue: asyncio.Queue[dict[str, Any] | None], item: dict[str, Any] | None) -> None:
        while queue.full():
            queue.get_nowait()  # the oldest: the newest says more
        queue.put_nowait(item)


def _row(t: Transfer, rate: float, tz: tzinfo) -> dict[str, Any]:
    left = t.filesize - t.progress if t.filesize >= 0 else None
    eta = left / rate if left is not None and rate > 0 else None
    return {
        "id": t.id,
        "rule": t.rule,
        "isSend": t.is_send,
        "isServer": t.is_server,
        "protocol": t.protocol,
        "partner": t.partner,
        "account": t.account,
        "file": t.src_filename or t.dest_filename,
        "status": t.status.value,
        "step": t.step.value,
        "progress": t.progress,
        "filesize": t.filesize if t.filesize >= 0 else None,
        "rate": round(rate),
        "eta": None if eta is None else round(eta, 1),
        "start": None if t.start is None else t.start.astimezone(tz).isoformat(),
    }
