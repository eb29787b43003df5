"""The `sftp` protocol, on asyncssh: our SFTP servers and our SFTP client to partners.

The option models load with the configuration; asyncssh and the server, client and
check modules load only when a server or a partner is configured (checked, started,
used), so that `check-config` of a configuration without SFTP and the CLI stay quick.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config.schema import AccountConfig, PartnerConfig, ServerConfig
from gatewayd.ports import (
    CheckContext,
    FieldProblem,
    ProtocolClient,
    ProtocolServer,
    ProtocolSpec,
    ServerContext,
    register,
)
from protocols.sftp.config import SftpPartnerConfig, SftpServerConfig


def _server(name: str, config: ServerConfig, ctx: ServerContext) -> ProtocolServer:
    from protocols.sftp.server import SftpServer

    assert isinstance(config, SftpServerConfig)
    return SftpServer(name, config, ctx)


def _client(name: str, config: PartnerConfig) -> ProtocolClient:
    from protocols.sftp.client import SftpClient

    assert isinstance(config, SftpPartnerConfig)
    return SftpClient(name, config)


def _check_server(name: str, config: ServerConfig, context: CheckContext) -> list[FieldProblem]:
    from protocols.sftp import checks

    return checks.check_server(name, config, context)


def _check_partner(name: str, config: PartnerConfig, context: CheckContext) -> list[FieldProblem]:
    from protocols.sftp import checks

    return checks.check_partner(name, config, context)


def _check_accounts(accounts: Mapping[str, AccountConfig]) -> list[FieldProblem]:
    from protocols.sftp import checks

    return checks.check_accounts(accounts)


SPEC = register(
    ProtocolSpec(
        name="sftp",
        server_config=SftpServerConfig,
        partner_config=SftpPartnerConfig,
        server_factory=_server,
        client_factory=_client,
        check_server=_check_server,
        check_partner=_check_partner,
        check_accounts=_check_accounts,
    )
)

__all__ = ["SPEC", "SftpPartnerConfig", "SftpServerConfig"]
