"""TLS contexts for `https` servers and partners (blocking: files are read; call from
a worker thread or at start-up)."""

from __future__ import annotations

import ssl
from typing import Any

from gatewayd.config.files import load_ca, load_cert_and_key
from protocols.http.config import HttpPartnerConfig, HttpServerConfig


def server_context(config: HttpServerConfig) -> ssl.SSLContext:
    """TLS 1.2 or later, the configured certificate, and client certificates as asked.
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


def client_context(config: HttpPartnerConfig) -> ssl.SSLContext:
    """Verification against the system store, or `ca_file` only (which may be the
    partner's own certificate: partial chains are accepted, so a pinned leaf works).
    With `cert_sha256` the fingerprint replaces CA checks (see `fingerprint`)."""
    if config.cert_sha256 is not None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the fingerprint check stands in (aiohttp)
    elif config.ca_file is not None:
        ctx = ssl.create_default_context(cafile=str(config.ca_file))
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file is not None and config.key_file is not None:
        load_cert_and_key(ctx, config.cert_file, config.key_file)  # never a passphrase prompt
    return ctx


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (`SSLSocket.getpeercert()`)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
