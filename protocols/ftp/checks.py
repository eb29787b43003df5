"""`check-config` for `ftp`: the certificate files the options name load, each problem
on the field of the file at fault."""

from __future__ import annotations

from pathlib import Path

from gatewayd.config.files import cert_and_key_problem, certificates_problem
from gatewayd.config.schema import PartnerConfig, ServerConfig
from gatewayd.ports import FieldProblem
from protocols.ftp.config import FtpPartnerConfig, FtpServerConfig


def _pair(cert: Path | None, key: Path | None) -> list[FieldProblem]:
    if cert is None or key is None:
        return []
    found = cert_and_key_problem(cert, key)
    if found is None:
        return []
    return [(("cert_file" if found.path == cert else "key_file",), found.message)]


def _certificates(field: str, path: Path | None) -> list[FieldProblem]:
    found = certificates_problem(path) if path is not None else None
    return [((field,), found.message)] if found is not None else []


def check_server(config: ServerConfig) -> list[FieldProblem]:
    """FTPS: the certificate and key load and match; the client CA holds certificates."""
    assert isinstance(config, FtpServerConfig)
    return _pair(config.cert_file, config.key_file) + _certificates(
        "client_ca_file", config.client_ca_file
    )


def check_partner(config: PartnerConfig) -> list[FieldProblem]:
    """FTPS: the CA file holds certificates; our client certificate and key load."""
    assert isinstance(config, FtpPartnerConfig)
    return _certificates("ca_file", config.ca_file) + _pair(config.cert_file, config.key_file)
