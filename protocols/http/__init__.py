"""HTTP and HTTPS, server and client, on aiohttp: `protocol: http` or `protocol: https`.

The two names share one implementation; `https` adds TLS (server certificate, optional
client certificates; partner verification against the system store, a CA file or a
pinned fingerprint). The option models load with the configuration; aiohttp and the
server and client modules only when a server starts or a partner is used.
"""

from __future__ import annotations

from pathlib import Path

from gatewayd.config.files import cert_and_key_problem, certificates_problem
from gatewayd.config.schema import PartnerConfig, ServerConfig
from gatewayd.ports import (
    CheckContext,
    FieldProblem,
    ProtocolClient,
    ProtocolServer,
    ProtocolSpec,
    ServerContext,
    register,
)
from protocols.http.config import HttpPartnerConfig, HttpServerConfig

__all__ = ["HttpPartnerConfig", "HttpServerConfig"]


def _server(name: str, config: ServerConfig, ctx: ServerContext) -> ProtocolServer:
    from protocols.http.server import HttpServer

    return HttpServer(name, config, ctx)


def _client(name: str, config: PartnerConfig) -> ProtocolClient:
    from protocols.http.client import HttpClient

    return HttpClient(name, config)


def _pair(cert: Path | None, key: Path | None) -> list[FieldProblem]:
    """Problems of a certificate and its key, on the field of the file at fault."""
    if cert is None or key is None:
        return []
    found = cert_and_key_problem(cert, key)
    if found is None:
        return []
    return [(("cert_file" if found.path == cert else "key_file",), found.message)]


def _check_server(name: str, config: ServerConfig, context: CheckContext) -> list[FieldProblem]:
    """https: the certificate and key load and match; the client CA file holds
    certificates."""
    assert isinstance(config, HttpServerConfig)
    problems = _pair(config.cert_file, config.key_file)
    if config.client_ca_file is not None:
        found = certificates_problem(config.client_ca_file)
        if found is not None:
            problems.append((("client_ca_file",), found.message))
    return problems


def _check_partner(name: str, config: PartnerConfig, context: CheckContext) -> list[FieldProblem]:
    """https: the CA file holds certificates; our client certificate and key load and
    match."""
    assert isinstance(config, HttpPartnerConfig)
    problems: list[FieldProblem] = []
    if config.ca_file is not None:
        found = certificates_problem(config.ca_file)
        if found is not None:
            problems.append((("ca_file",), found.message))
    return problems + _pair(config.cert_file, config.key_file)


for _name in ("http", "https"):
    register(
        ProtocolSpec(
            name=_name,
            server_config=HttpServerConfig,
            partner_config=HttpPartnerConfig,
            server_factory=_server,
            client_factory=_client,
            check_server=_check_server,
            check_partner=_check_partner,
        )
    )
