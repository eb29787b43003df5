"""TLS contexts for FTPS (blocking: files are read; call them from a worker thread).

A server builds one context per control connection: the TLS sessions (and TLS 1.3
tickets) a context issues can only be resumed through that same context, so a data
connection that resumes a session of it was opened by the client of that control
connection and no other (what vsftpd's `require_ssl_reuse` checks).
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from gatewayd.config.files import load_ca, load_cert_and_key
from protocols.ftp.config import FtpPartnerConfig, FtpServerConfig


def server_context(config: FtpServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or later, the configured certificate, client certificates as asked.
    Raises FileError naming the file that cannot be used."""
    assert config.cert_file is not None and config.key_file is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_and_key(ctx, config.cert_file, config.key_file)
    if config.client_certs != "none":
        assert config.client_ca_file is not None
        load_ca(ctx, config.client_ca_file)
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if config.client_certs == "required" else ssl.CERT_OPTIONAL
        )
    return ctx


def client_context(config: FtpPartnerConfig) -> ssl.SSLContext:
    """Verification against the system store, or `ca_file` only (partial chains
    accepted, so that a partner's own certificate can be the CA file); with
    `cert_sha256` the fingerprint replaces CA checks (see `check_pin`)."""
    if config.cert_sha256 is not None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the fingerprint is checked after the handshake
    elif config.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(config.ca_file))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None and config.key_file is not None:
        load_cert_and_key(ctx, config.cert_file, config.key_file)
    return ctx


def fingerprint(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The SHA-256 (hex) of the peer's certificate."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest() if der else None


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (`getpeercert()`)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
