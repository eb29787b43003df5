"""FTP and FTPS (explicit `AUTH TLS` and implicit), server and client: `protocol: ftp`.

Both roles are written on asyncio streams (see the README's "FTP and FTPS"). The option
models load with the configuration; the server, client and check modules only when a
server starts or a partner is used or checked.
"""

from __future__ import annotations

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
from protocols.ftp.config import FtpPartnerConfig, FtpServerConfig

__all__ = ["SPEC", "FtpPartnerConfig", "FtpServerConfig"]


def _server(name: str, config: ServerConfig, ctx: ServerContext) -> ProtocolServer:
    from protocols.ftp.server import FtpServer

    assert isinstance(config, FtpServerConfig)
    return FtpServer(name, config, ctx)


def _client(name: str, config: PartnerConfig) -> ProtocolClient:
    from protocols.ftp.client import FtpClient

    assert isinstance(config, FtpPartnerConfig)
    return FtpClient(name, config)


def _check_server(name: str, config: ServerConfig, context: CheckContext) -> list[FieldProblem]:
    from protocols.ftp import checks

    return checks.check_server(config)


def _check_partner(name: str, config: PartnerConfig, context: CheckContext) -> list[FieldProblem]:
    from protocols.ftp import checks

    return checks.check_partner(config)


SPEC = register(
    ProtocolSpec(
        name="ftp",
        server_config=FtpServerConfig,
        partner_config=FtpPartnerConfig,
        server_factory=_server,
        client_factory=_client,
        check_server=_check_server,
        check_partner=_check_partner,
    )
)
