"""Protocol clients per partner, reused across the transfers to that partner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from gatewayd import ports
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode, Transfer

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.config.schema import PartnerConfig

log = structlog.get_logger("gatewayd.pipeline")


class _Held:
    """One client of a partner, for one version of the partner's configuration, and
    the transfers using it."""

    def __init__(self, config: PartnerConfig, client: ports.ProtocolClient) -> None:
        self.config = config
        self.client = client
        self.users = 0
        self.retired = False


class Lease:
    """A transfer's use of a partner's client; `release()` when the transfer ends."""

    def __init__(self, pool: ClientPool, held: _Held) -> None:
        self._pool: ClientPool | None = pool
        self._held = held
        self.client = held.client

    def release(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool._release(self._held)


class ClientPool:
    """One `ProtocolClient` per partner, made by the partner's protocol on first use.
    When the partner's configuration changes (a reload), new transfers get a new
    client; the old one stays until the transfers using it have ended, then closes."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self._clients: dict[str, _Held] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        # (partner, path) -> its lock and how many sends hold or wait for it.
        self._destinations: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def destination(self, partner: str, path: str) -> AsyncIterator[None]:
        """Hold the partner's `path` for one send: sends to one path of one partner go
        one after the other on this node (in the order they got here). Each send
        writes the partner's temporary name of that path and renames it: two at once
        would write one temporary name, and the second rename would find it gone."""
        key = (partner, path)
        lock, users = self._destinations.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._destinations[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._destinations[key]
            if users == 1:
                del self._destinations[key]
            else:
                self._destinations[key] = (lock, users - 1)

    async def acquire(self, transfer: Transfer) -> Lease:
        """A connected client for the transfer's partner, or TransferError."""
        return await self.acquire_partner(transfer.partner or "")

    async def acquire_partner(self, name: str) -> Lease:
        """A connected client for partner `name` (a poller's listing), or TransferError."""
        partner = self.loaded.config.partners.get(name)
        if partner is None:
            raise TransferError(ErrorCode.TeUnknownRemote, f"unknown partner {name!r}")
        if not partner.enabled:
            raise TransferError(ErrorCode.TeForbidden, f"partner {name!r} is disabled")
        spec = ports.get(partner.protocol)
        if spec is None or spec.client_factory is None:
            raise TransferError(
                ErrorCode.TeUnimplemented, f"protocol {partner.protocol!r} has no client side"
            )
        async with self._lock:
            held = self._clients.get(name)
            if held is not None and held.config is not partner:
                self._retire(held)
                held = None
            if held is None:
                held = _Held(partner, spec.client_factory(name, partner))
                self._clients[name] = held
            held.users += 1
        lease = Lease(self, held)
        try:
            await held.client.connect()
        except BaseException as exc:
            lease.release()
            if isinstance(exc, OSError):
                raise TransferError(ErrorCode.TeConnection, f"cannot reach {name}: {exc}") from exc
            raise
        return lease

    def _retire(self, held: _Held) -> None:
        held.retired = True
        if held.users == 0:
            self._close_later(held)

    def _release(self, held: _Held) -> None:
        held.users -= 1
        if held.retired and held.users == 0:
            self._close_later(held)

    def _close_later(self, held: _Held) -> None:
        task = asyncio.ensure_future(self._close(held.client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(client: ports.ProtocolClient) -> None:
        with contextlib.suppress(Exception):
            await client.close()

    async def close_all(self) -> None:
        clients, self._clients = self._clients, {}
        for held in clients.values():
            await self._close(held.client)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
