"""TLS contexts for `https` servers and partners (blocking: files are read; call from
a worker thread or at start-up)."""

from __future__ import annotations

import ssl

from gatewayd.config.files import client_tls_context, peer_common_name, server_tls_context
from protocols.http.config import HttpPartnerConfig, HttpServerConfig

__all__ = ["client_context", "peer_common_name", "server_context"]


def server_context(config: HttpServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or later, the configured certificate, and client certificates as asked.
    Raises FileError naming the file that cannot be used."""
    assert config.cert_file is not None and config.key_file is not None
    return server_tls_context(
        config.cert_file, config.key_file, config.client_certs, config.client_ca_file
    )


def client_context(config: HttpPartnerConfig) -> ssl.SSLContext:
    """The system store, `ca_file`, or (with `cert_sha256`) no CA check: aiohttp compares
    the fingerprint."""
    return client_tls_context(
        pinned=config.cert_sha256 is not None,
        ca=config.ca_file,
        cert=config.cert_file,
        key=config.key_file,
    )
