"""PostgreSQL's LISTEN on a connection of its own, kept up: the bus's notifications.

A pooled connection cannot listen (the pool resets it when it is released), so the
listener holds a dedicated one. When it drops (the server restarted, the network cut),
the listener connects again with a growing pause and calls `connected` each time it
listens again: the notifications sent meanwhile are lost, so the caller looks at the
database then. A quiet connection is checked every few seconds, so that a connection
the network dropped silently does not stay deaf.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gatewayd.store.base import Listening, Notification
from gatewayd.store.bus_sql import CHANNEL, decode_notification

log = logging.getLogger("gatewayd.store")

# Seconds: between two checks of a quiet connection, a check's own limit, and the
# pauses before connecting again (doubling up to the last).
CHECK_EVERY = 5.0
CHECK_TIMEOUT = 5.0
RETRY_FIRST = 0.2
RETRY_MAX = 5.0

Connect = Callable[[], Awaitable[asyncpg.Connection]]


class PgListening(Listening):
    """Listens on `CHANNEL` until closed; see the module's docstring."""

    def __init__(
        self,
        connect: Connect,
        heard: Callable[[Notification], None],
        connected: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._heard = heard
        self._connected = connected
        self._conn: asyncpg.Connection | None = None
        self._task = asyncio.create_task(self._run(), name="gatewayd-store-listen")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _on_payload(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        notification = decode_notification(str(payload))
        if notification is None:
            log.warning("unknown notification ignored: %r", str(payload)[:200])
            return
        try:
            self._heard(notification)
        except Exception:
            log.exception("a notification's handler failed")

    async def _run(self) -> None:
        pause = RETRY_FIRST
        while True:
            try:
                await self._listen_once()
                pause = RETRY_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listening on the database failed, again in %.1f s: %s", pause, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def _listen_once(self) -> None:
        conn = await self._connect()
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._on_payload)
            self._connected()
            while not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):
                        await lost.wait()
                if lost.is_set():
                    break
                await conn.fetchval("SELECT 1", timeout=CHECK_TIMEOUT)
            log.warning("the database connection that listens was lost")
        finally:
            with contextlib.suppress(Exception):
                conn.terminate()
