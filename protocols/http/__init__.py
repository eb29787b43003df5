"""HTTP and HTTPS, server and client, on aiohttp: `protocol: http` or `protocol: https`.

The two names share one implementation; `https` adds TLS (server certificate, optional
client certificates; partner verification against the system store, a CA file or a
pinned fingerprint).
"""

from __future__ import annotations

from gatewayd.ports import ProtocolSpec, register
from protocols.http.client import HttpClient
from protocols.http.config import HttpPartnerConfig, HttpServerConfig
from protocols.http.server import HttpServer

__all__ = ["HttpClient", "HttpPartnerConfig", "HttpServer", "HttpServerConfig"]

for _name in ("http", "https"):
    register(
        ProtocolSpec(
            name=_name,
            server_config=HttpServerConfig,
            partner_config=HttpPartnerConfig,
            server_factory=HttpServer,
            client_factory=HttpClient,
        )
    )
