"""Files the configuration names (certificates, keys): readable, and what they should be.

`check-config` asks these questions so that `serve` never finds out the hard way, and
the listeners use the same loaders when they prepare: a file that cannot be used is a
`FileError` naming it and saying why, never an OpenSSL error without a file name.
Everything here is blocking (files are read): call it from a worker thread or before the
event loop starts.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path
from typing import Any

# Certificates, keys and CA bundles are a few kilobytes; a system CA bundle is under one
# megabyte. This refuses a device or a huge file named by mistake before reading it.
MAX_BYTES = 8 * 1024 * 1024


class FileError(Exception):
    """`path` cannot be used; the message says why and names it."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def read_bytes(path: Path) -> bytes:
    """The content of the regular file `path`, or FileError (missing, a folder, a device
    or a pipe, not readable, too large)."""
    try:
        info = path.stat()  # before opening: opening a pipe would wait for a writer
        if stat.S_ISDIR(info.st_mode):
            raise FileError(path, f"{path} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise FileError(path, f"{path} is not a regular file")
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise FileError(path, f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise FileError(path, f"{path} is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    return data


class _Encrypted(Exception):
    """OpenSSL asked for a passphrase."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and block the daemon.
    raise _Encrypted


def load_cert_and_key(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """`context.load_cert_chain(cert, key)`, with a FileError naming the file at fault:
    unreadable, no PEM certificate, no PEM private key, an encrypted key, or a key that
    does not match the certificate."""
    check_certificates(cert)
    read_bytes(key)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise FileError(
            key,
            f"the private key {key} is encrypted: gatewayd needs it without a passphrase "
            "(`openssl pkey -in KEY -out PLAIN` writes it so; keep it mode 0600)",
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise FileError(
                key, f"the private key {key} does not match the certificate {cert}"
            ) from None
        raise FileError(key, f"{key} holds no PEM private key that OpenSSL can read") from None
    except OSError as exc:  # changed since read_bytes
        raise FileError(key, f"cannot read {key}: {exc.strerror}") from None


def check_certificates(path: Path) -> None:
    """FileError unless `path` holds at least one PEM certificate."""
    read_bytes(path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise FileError(path, f"{path} holds no PEM certificate") from None
    except OSError as exc:
        raise FileError(path, f"cannot read {path}: {exc.strerror}") from None


def load_ca(context: ssl.SSLContext, ca: Path) -> None:
    """`context.load_verify_locations(cafile=ca)`, with a FileError naming it."""
    check_certificates(ca)
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError):
        raise FileError(ca, f"{ca} holds no PEM certificate") from None


def server_tls_context(
    cert: Path, key: Path, client_certs: str = "none", client_ca: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.2+ server context with `cert` and `key` loaded, asking for client
    certificates (`none`, `optional`, `required`) verified against `client_ca`.
    Raises FileError naming the file that cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_and_key(context, cert, key)
    if client_certs != "none":
        assert client_ca is not None
        load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    return context


def client_tls_context(
    *, pinned: bool, ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    """A TLS 1.2+ client context: verified against the system store, or `ca` only (which
    may be the partner's own certificate: partial chains are accepted); `pinned`: no CA
    check at all, the caller compares the peer's fingerprint after the handshake. Our
    client certificate when `cert` and `key` are given."""
    if pinned:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        context = ssl.create_default_context(cafile=str(ca))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        load_cert_and_key(context, cert, key)  # never a passphrase prompt
    return context


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (`getpeercert()`)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def cert_and_key_problem(cert: Path, key: Path) -> FileError | None:
    """What is wrong with `cert` and `key` as a server's pair, or None."""
    try:
        load_cert_and_key(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    except FileError as exc:
        return exc
    return None


def certificates_problem(path: Path) -> FileError | None:
    """What is wrong with `path` as a file of PEM certificates (a CA bundle), or None."""
    try:
        check_certificates(path)
    except FileError as exc:
        return exc
    return None
