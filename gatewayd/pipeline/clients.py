"""Protocol clients per partner, reused across the transfers to that partner."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from gatewayd import ports as protocols
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode, Transfer

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.config.schema import PartnerConfig


class ClientPool:
    """One `ProtocolClient` per partner, made by the partner's protocol on first use and
    made again when the partner's configuration changes (after a reload)."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self._clients: dict[str, tuple[PartnerConfig, protocols.ProtocolClient]] = {}
        self._lock = asyncio.Lock()

    async def connect(self, transfer: Transfer) -> protocols.ProtocolClient:
        """The connected client for the transfer's partner, or TransferError."""
        name = transfer.partner or ""
        partner = self.loaded.config.partners.get(name)
        if partner is None:
            raise TransferError(ErrorCode.TeUnknownRemote, f"unknown partner {name!r}")
        spec = protocols.get(partner.protocol)
        if spec is None or spec.client_factory is None:
            raise TransferError(
                ErrorCode.TeUnimplemented, f"protocol {partner.protocol!r} has no client side"
            )
        async with self._lock:
            held = self._clients.get(name)
            if held is not None and held[0] is not partner:
                await self._close(held[1])
                held = None
            if held is None:
                held = (partner, spec.client_factory(name, partner))
                self._clients[name] = held
        client = held[1]
        try:
            await client.connect()
        except TransferError:
            raise
        except OSError as exc:
            raise TransferError(ErrorCode.TeConnection, f"cannot reach {name}: {exc}") from exc
        return client

    @staticmethod
    async def _close(client: protocols.ProtocolClient) -> None:
        with contextlib.suppress(Exception):
            await client.close()

    async def close_all(self) -> None:
        clients, self._clients = self._clients, {}
        for _, client in clients.values():
            await self._close(client)
