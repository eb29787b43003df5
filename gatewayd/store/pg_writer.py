"""The PostgreSQL store's writer: row writes queued in memory, one batch at a time, each
batch one transaction on one pooled connection.

One batch in flight keeps the order of saves: two saves of a row issued one after the
other can never commit in the other order (as they could on two pooled connections),
and saves of the same row queued together coalesce into one write of the newest state.
A batch that fails is written again entry by entry, each in its own transaction, so
that a bad entry (a foreign key that does not hold) fails its own callers only. A
deadlock (rows locked in another order by another node) is retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

log = logging.getLogger("gatewayd.store")

Params = tuple[Any, ...]
# Tries of a batch that met a deadlock or a serialization failure.
_TRIES = 3


@dataclass
class _Entry:
    """One submission: its rows (several for a multi-row insert, all or none) and the
    futures of every caller waiting for it (several when saves coalesced)."""

    rows: list[Params]
    order: Any
    futures: list[asyncio.Future[None]] = field(default_factory=list)


def _retrieved(future: asyncio.Future[None]) -> None:
    # A caller cancelled while waiting never reads a failure: do not report it as lost.
    if not future.cancelled():
        future.exception()


class PgWriter:
    """Writes `statements` (in this order within a batch: inserts before the updates
    that may follow them) for the store."""

    def __init__(self, pool: asyncpg.Pool, statements: Sequence[str]) -> None:
        self._pool = pool
        self._statements = tuple(statements)
        self._pending = self._empty()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._serial = 0
        self.commit_count = 0
        """Transactions committed so far."""
        self.on_commit: Callable[[float], None] | None = None
        """Told the seconds each committed batch took to write (metrics)."""
        self.may_write: Callable[[], None] | None = None
        """Called before each batch is written: raises to refuse it (the node's lease
        ran out, its rows may be another node's)."""

    def _empty(self) -> dict[str, dict[Hashable, _Entry]]:
        return {sql: {} for sql in self._statements}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gatewayd-store-writer")

    def submit(
        self, sql: str, rows: list[Params], key: Hashable | None = None, order: Any = 0
    ) -> asyncio.Future[None]:
        """Queue `rows` of `sql`; the future resolves once they are committed. A pending
        entry with the same `key` (and statement) is replaced by this one. Rows of a
        statement are written sorted by `order` (ids: every node locks rows in the same
        order). Await the future through `asyncio.shield`."""
        if self._closing:
            raise RuntimeError("the store is closed")
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._serial += 1
        entries = self._pending[sql]
        slot: Hashable = (object(), self._serial) if key is None else key
        entry = entries.get(slot)
        if entry is None:
            entries[slot] = _Entry(rows, order, [future])
        else:
            entry.rows, entry.order = rows, order
            entry.futures.append(future)
        self._idle.clear()
        self._wake.set()
        return future

    async def flush(self) -> None:
        """Until everything submitted so far is written (or has failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Write everything pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def _has_pending(self) -> bool:
        return any(self._pending.values())

    async def _run(self) -> None:
        while True:
            if not self._has_pending():
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending, self._empty()
            work = [
                (sql, sorted(batch[sql].values(), key=lambda e: e.order))
                for sql in self._statements
                if batch[sql]
            ]
            try:
                await self._write_batch(work)
            except asyncio.CancelledError:
                for _sql, entries in work:
                    for entry in entries:
                        for future in entry.futures:
                            future.cancel()
                raise

    async def _write_batch(self, work: list[tuple[str, list[_Entry]]]) -> None:
        entries = [entry for _sql, group in work for entry in group]
        try:
            await self._write(work)
        except Exception as exc:
            if len(entries) == 1:
                _settle(entries, exc)
                return
            log.warning(
                "store: a batch of %d writes failed (%s); writing them one by one",
                len(entries),
                exc,
            )
            for sql, group in work:
                for entry in group:
                    try:
                        await self._write([(sql, [entry])])
                    except Exception as one:
                        _settle([entry], one)
                    else:
                        _settle([entry], None)
            return
        _settle(entries, None)

    async def _write(self, work: list[tuple[str, list[_Entry]]]) -> None:
        began = time.perf_counter()
        if self.may_write is not None:
            self.may_write()
        for attempt in range(1, _TRIES + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    for sql, group in work:
                        await conn.executemany(sql, [row for e in group for row in e.rows])
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _TRIES:
                    raise
                continue
            break
        self.commit_count += 1
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)


def _settle(entries: list[_Entry], exc: BaseException | None) -> None:
    for entry in entries:
        for future in entry.futures:
            if future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)
