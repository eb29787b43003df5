"""Options of `http` and `https` servers and partners (validated by the config loader).

Certificate, key and CA paths must be absolute: a protocol's options are validated
without the daemon's `home`, and a path that silently depended on the working folder of
the daemon would break under systemd.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from gatewayd.config.schema import FilePath, PartnerConfig, ServerConfig, Sha256Pin


def _base_path(value: str) -> str:
    if not value.startswith("/") or re.search(r"[\x00-\x1f\x7f\\?#]", value):
        raise ValueError("must be a URL path starting with '/' (e.g. / or /dav)")
    return value.rstrip("/") or "/"


Bytes = Annotated[int, Field(ge=0)]


class HttpServerConfig(ServerConfig):
    """`protocol: http` or `https` servers."""

    # https: the server's certificate chain (PEM) and its private key.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # https: ask for a client certificate. `optional`: a certificate signed by
    # `client_ca_file` whose subject CN is the login stands for the password;
    # `required`: the TLS handshake fails without one (and it must match the login).
    client_certs: Literal["none", "optional", "required"] = "none"
    client_ca_file: FilePath | None = None
    # Largest request body (one upload request), 0 = unlimited.
    max_body_size: Bytes = 0
    # Seconds a client may take to send a request's headers (slowloris), which is also
    # the longest a connection may stay idle between two requests.
    header_timeout: Annotated[float, Field(gt=0)] = 30.0
    # Seconds a transfer may make no progress (no upload bytes arrive, or the client
    # takes no download bytes) before it is aborted.
    idle_timeout: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _tls_settings(self) -> HttpServerConfig:
        if self.protocol == "https":
            if self.cert_file is None or self.key_file is None:
                raise ValueError("an https server needs 'cert_file' and 'key_file'")
            if self.client_certs != "none" and self.client_ca_file is None:
                raise ValueError("'client_certs' needs 'client_ca_file' (the CA that signs them)")
        else:
            tls_only = ("cert_file", "key_file", "client_ca_file")
            given = [name for name in tls_only if getattr(self, name) is not None]
            if given or self.client_certs != "none":
                raise ValueError(
                    f"{', '.join(given) or 'client_certs'}: TLS settings need protocol https"
                )
        return self


class HttpPartnerConfig(PartnerConfig):
    """`protocol: http` or `https` partners. A transfer's remote file is
    `<base_path>/<file>` on the partner (its `file` or `output`)."""

    base_path: Annotated[str, AfterValidator(_base_path)] = "/"
    # https trust: the system's CA store unless `ca_file` names a CA bundle or the
    # partner's own (e.g. self-signed) certificate; `cert_sha256` pins the partner's
    # certificate by fingerprint instead of any CA.
    ca_file: FilePath | None = None
    cert_sha256: Sha256Pin | None = None
    # https: our client certificate and key, for partners that ask for one.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # Seconds to connect, and of silence while a request or response is under way.
    connect_timeout: Annotated[float, Field(gt=0)] = 30.0
    read_timeout: Annotated[float, Field(gt=0)] = 300.0
    # Bytes per second, 0 = unlimited (for partners behind thin links).
    max_rate: Bytes = 0

    @model_validator(mode="after")
    def _tls_settings(self) -> HttpPartnerConfig:
        tls = ("ca_file", "cert_sha256", "cert_file", "key_file")
        given = [name for name in tls if getattr(self, name) is not None]
        if self.protocol != "https" and given:
            raise ValueError(f"{', '.join(given)}: TLS settings need protocol https")
        if self.ca_file is not None and self.cert_sha256 is not None:
            raise ValueError("give either 'ca_file' or 'cert_sha256', not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("'cert_file' and 'key_file' go together")
        if self.cert_sha256 is not None and self.cert_file is not None:
            raise ValueError("a client certificate needs CA verification: use 'ca_file'")
        return self
