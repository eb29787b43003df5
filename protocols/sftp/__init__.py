"""The `sftp` protocol, on asyncssh: our SFTP servers and our SFTP client to partners.

The option models load with the configuration; asyncssh and the server and client
modules load only when a server starts or a partner is used, so that `check-config`
and the CLI stay quick.
"""

from __future__ import annotations

from gatewayd.config.schema import PartnerConfig, ServerConfig
from gatewayd.ports import ProtocolClient, ProtocolServer, ProtocolSpec, ServerContext, register
from protocols.sftp.config import SftpPartnerConfig, SftpServerConfig


def _server(name: str, config: ServerConfig, ctx: ServerContext) -> ProtocolServer:
    from protocols.sftp.server import SftpServer

    assert isinstance(config, SftpServerConfig)
    return SftpServer(name, config, ctx)


def _client(name: str, config: PartnerConfig) -> ProtocolClient:
    from protocols.sftp.client import SftpClient

    assert isinstance(config, SftpPartnerConfig)
    return SftpClient(name, config)


SPEC = register(
    ProtocolSpec(
        name="sftp",
        server_config=SftpServerConfig,
        partner_config=SftpPartnerConfig,
        server_factory=_server,
        client_factory=_client,
    )
)

__all__ = ["SPEC", "SftpPartnerConfig", "SftpServerConfig"]
