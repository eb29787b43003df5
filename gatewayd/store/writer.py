"""The one writer: batches every pending row write into one transaction.

aiosqlite runs each call on the connection's thread, and the thread hop, not SQLite,
bounds a call-per-save design (about 3,200 execute+commit per second on the reference
machine against 26,000 in one thread). So writes are queued in memory and one task
writes everything queued with one `executemany` per statement and one commit. Writes
queued while a commit is in flight go into the next batch; a newer write of the same key
replaces the older one before it reaches the database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

log = logging.getLogger("gatewayd.store")

Params = tuple[Any, ...]


def _mark_retrieved(future: asyncio.Future[None]) -> None:
    # Every submitter gets the outcome through a shield; if all of them were cancelled,
    # nobody reads a failure, and asyncio would report it as never retrieved.
    if not future.cancelled():
        future.exception()


class BatchWriter:
    """Owns the write side of one connection.

    `statements` are the parameterised statements writes may use; within a batch they run
    in this order (e.g. inserts before the updates that may follow them).
    """

    def __init__(self, conn: aiosqlite.Connection, statements: Sequence[str]) -> None:
        self._conn = conn
        self._statements = tuple(statements)
        self._pending = self._empty_batch()
        self._next: asyncio.Future[None] | None = None  # resolves when _pending commits
        self._inflight: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # held while the connection has a transaction open
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commit_count = 0
        """Transactions committed so far (batches and exclusive transactions)."""
        self.on_commit: Callable[[float], None] | None = None
        """Told the seconds each committed batch took to write (metrics)."""

    def _empty_batch(self) -> dict[str, dict[Hashable, Params]]:
        return {sql: {} for sql in self._statements}

    def _has_pending(self) -> bool:
        return any(self._pending.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gatewayd-store-writer")

    def submit(self, sql: str, params: Params, key: Hashable | None = None) -> asyncio.Future[None]:
        """Queue one execution of `sql`; the future resolves when it is committed.

        A pending write with the same `key` (and statement) is replaced: only the newest
        parameters are written. Await the result through `asyncio.shield`: the future is
        shared by the whole batch.
        """
        if self._closing:
            raise RuntimeError("the store is closed")
        self._pending[sql][object() if key is None else key] = params
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_mark_retrieved)
        self._wake.set()
        return self._next

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed or has failed (a failure
        goes to the submitters, not here)."""
        futures = [f for f in (self._inflight, self._next) if f is not None]
        if futures:
            await asyncio.wait(futures)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of the connection for a write that is not a queued row write.

        Pending writes are committed first; the body's statements commit on exit, or
        roll back if it raises.
        """
        if self._closing:
            raise RuntimeError("the store is closed")
        await self.flush()
        async with self._lock:
            try:
                yield self._conn
                await self._conn.commit()
            except BaseException:
                await self._rollback()
                raise
            self.commit_count += 1

    async def close(self) -> None:
        """Write everything pending, then stop. Failures go to the submitters."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._has_pending():
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, future = self._pending, self._next
            assert future is not None
            self._pending, self._next = self._empty_batch(), None
            self._inflight = future
            try:
                async with self._lock:
                    await self._write(batch)
            except asyncio.CancelledError:
                future.cancel()
                raise
            except Exception as exc:
                count = sum(len(rows) for rows in batch.values())
                log.error("store: a batch of %d writes failed: %s", count, exc)
                future.set_exception(exc)
            else:
                future.set_result(None)
            finally:
                self._inflight = None

    async def _write(self, batch: dict[str, dict[Hashable, Params]]) -> None:
        work = [(sql, list(batch[sql].values())) for sql in self._statements if batch[sql]]
        # One trip to the connection's thread for the whole batch when aiosqlite lets us
        # queue a function there (its `_execute`, stable since 0.17); the public calls
        # otherwise, one trip per statement plus one for the commit.
        run_in_thread = getattr(self._conn, "_execute", None)
        began = time.perf_counter()
        try:
            if run_in_thread is not None:
                changed = await run_in_thread(self._write_in_thread, work)
            else:
                changed = []
                for sql, rows in work:
                    cursor = await self._conn.executemany(sql, rows)
                    changed.append(cursor.rowcount)
                await self._conn.commit()
        except Exception:
            await self._rollback()
            raise
        for (sql, rows), count in zip(work, changed, strict=True):
            if count != len(rows):
                # An update of a row that is not there: a caller's bug, not worth
                # failing everybody else's writes for.
                log.warning(
                    "store: %d of %d writes changed no row: %s",
                    len(rows) - count,
                    len(rows),
                    " ".join(sql.split()[:3]),
                )
        self.commit_count += 1
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)

    def _write_in_thread(self, work: list[tuple[str, list[Params]]]) -> list[int]:
        """Runs on the connection's own thread: every statement, then the commit."""
        conn: sqlite3.Connection = self._conn._conn
        changed = [conn.executemany(sql, rows).rowcount for sql, rows in work]
        conn.commit()
        return changed

    async def _rollback(self) -> None:
        if not self._conn.in_transaction:
            return
        try:
            await self._conn.rollback()
        except Exception as exc:  # the original error matters more
            log.error("store: rollback failed: %s", exc)
