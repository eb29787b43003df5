"""Typed settings of the servers that tasks reach out to: ICAP scanners (`icap:`), SMTP
servers (`smtp:`) and HTTP receivers of notices (`notify:`), each a mapping of names in
`gatewayd.yaml` that the ICAP, EMAIL and NOTIFY tasks name in their `server` or
`endpoint` argument.

Passwords and shared secrets are kept out of reprs (and so of logs and messages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic import Strict as StrictMode

_Port = Annotated[int, Field(ge=1, le=65535)]
_Seconds = Annotated[float, Field(gt=0, le=3600)]
_Secret = Annotated[str, Field(min_length=1)]
_LaxPath = Annotated[Path, StrictMode(False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _icap_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("icap", "icaps") or not parts.hostname or not parts.path.strip("/"):
        raise ValueError(
            "must be an icap:// or icaps:// URL naming a service, "
            "such as icap://127.0.0.1:1344/avscan"
        )
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return value


class IcapServerConfig(_Strict):
    """An ICAP (RFC 3507) scanner: `icaps://` is ICAP over TLS (port 11344 by default),
    `icap://` plain ICAP (port 1344)."""

    url: Annotated[str, AfterValidator(_icap_url)]
    method: Literal["RESPMOD", "REQMOD"] = "RESPMOD"
    # Bytes sent before the server says whether it wants the rest (RFC 3507 4.5);
    # 0: headers only; null: no preview (the server does not announce one).
    preview: Annotated[int, Field(ge=0, le=1 << 20)] | None = 4096
    # Each wait for the server (connect, an answer, a write) has this limit: a scanner
    # that does not answer in time fails the task, it never lets the file through.
    timeout: _Seconds = 60.0
    # icaps://: a PEM CA bundle that signed the server's certificate (default: the
    # system's), relative to home.
    ca_file: _LaxPath | None = None


class SmtpServerConfig(_Strict):
    """An SMTP server the EMAIL task sends through."""

    host: Annotated[str, Field(min_length=1)]
    # Default: 465 with implicit TLS, 587 with STARTTLS, 25 without TLS.
    port: _Port | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    user: str | None = None
    password: _Secret | None = Field(default=None, repr=False)
    # The envelope sender and From: header.
    sender: Annotated[str, Field(min_length=3, alias="from")]
    timeout: _Seconds = 60.0
    # A PEM CA bundle that signed the server's certificate (default: the system's),
    # relative to home.
    ca_file: _LaxPath | None = None

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @field_validator("password")
    @classmethod
    def _with_user(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not info.data.get("user"):
            raise ValueError("is used with user: give both or neither")
        return value

    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"implicit": 465, "starttls": 587, "none": 25}[self.tls]


class NotifyEndpointConfig(_Strict):
    """An HTTP(S) receiver of the NOTIFY task's POSTs, signed with `secret`."""

    url: Annotated[str, AfterValidator(_http_url)]
    # The shared secret of the HMAC-SHA256 signature (header X-Gatewayd-Signature).
    secret: _Secret = Field(repr=False)
    timeout: _Seconds = 10.0
    # Further attempts after a failed one (a connection error, a timeout, a 5xx or a
    # 429 answer), `retry_delay` seconds apart, doubled each time.
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    retry_delay: Annotated[float, Field(ge=0, le=600)] = 1.0
    # https://: a PEM CA bundle that signed the receiver's certificate, relative to home.
    ca_file: _LaxPath | None = None
