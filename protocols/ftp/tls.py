"""TLS contexts for FTPS (blocking: files are read; call them from a worker thread).

A server builds one context per control connection: the TLS sessions (and TLS 1.3
tickets) a context issues can only be resumed through that same context, so a data
connection that resumes a session of it was opened by the client of that control
connection and no other (what vsftpd's `require_ssl_reuse` checks).
"""

from __future__ import annotations

import hashlib
import ssl

from gatewayd.config.files import client_tls_context, peer_common_name, server_tls_context
from protocols.ftp.config import FtpPartnerConfig, FtpServerConfig

__all__ = ["client_context", "fingerprint", "peer_common_name", "server_context"]


def server_context(config: FtpServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or later, the configured certificate, client certificates as asked.
    Raises FileError naming the file that cannot be used."""
    assert config.cert_file is not None and config.key_file is not None
    return server_tls_context(
        config.cert_file, config.key_file, config.client_certs, config.client_ca_file
    )


def client_context(config: FtpPartnerConfig) -> ssl.SSLContext:
    """The system store, `ca_file`, or (with `cert_sha256`) no CA check: the fingerprint
    is checked after the handshake (see `fingerprint`)."""
    return client_tls_context(
        pinned=config.cert_sha256 is not None,
        ca=config.ca_file,
        cert=config.cert_file,
        key=config.key_file,
    )


def fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SHA-256 (hex) of the peer's certificate."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else None
