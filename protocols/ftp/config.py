"""Options of `ftp` servers and partners (validated by the config loader).

One protocol name, `ftp`, with a `tls` setting: `none` (plain FTP), `explicit` (plain
FTP that may be upgraded with `AUTH TLS`), `required` (`AUTH TLS` before `USER`, and
protected data connections only) and `implicit` (TLS from the first byte, port 990 by
custom). Certificate, key and CA paths must be absolute: a protocol's options are
validated without the daemon's `home`.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic import Strict as StrictMode

from gatewayd.config.schema import FilePath, PartnerConfig, ServerConfig, Sha256Pin

TlsMode = Literal["none", "explicit", "required", "implicit"]


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError("must be an IPv4 address (PASV can only announce IPv4)") from None
    return value


Seconds = Annotated[float, Field(gt=0)]
PortRange = Annotated[tuple[int, int], StrictMode(False)]


class FtpServerConfig(ServerConfig):
    """`protocol: ftp` servers."""

    tls: TlsMode = "none"
    # The server's certificate chain (PEM) and its private key, for any `tls` but none.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # `optional`: a client certificate signed by `client_ca_file` whose subject CN is
    # the login stands for the password (USER answers 232); `required`: the TLS
    # handshake fails without one.
    client_certs: Literal["none", "optional", "required"] = "none"
    client_ca_file: FilePath | None = None
    # Data connections must resume the TLS session of their control connection (as
    # vsftpd's require_ssl_reuse): another client cannot steal them. Off only for old
    # clients that cannot (Python's ftplib).
    require_session_reuse: bool = True
    # Passive data ports ([first, last], both included); default: any free port.
    passive_ports: PortRange | None = None
    # The IPv4 address PASV announces (behind NAT); default: the address the client
    # reached.
    passive_address: Annotated[str, AfterValidator(_ipv4)] | None = None
    # PORT/EPRT (the server connects to the client): off unless asked; only ever to the
    # address of the control connection, on a port above 1023.
    active_mode: bool = False
    # Seconds to log in; of silence on an idle control connection; of no progress on a
    # data connection (also the wait for the client to open it).
    login_timeout: Seconds = 60.0
    idle_timeout: Seconds = 900.0
    data_timeout: Seconds = 120.0
    # Plain FTP has no end-of-file mark: an upload's data connection ending counts as
    # its clean end only if the control connection is still open a grace time later
    # (a killed client drops both at once): four round trips of the control connection,
    # at least `eof_grace_min`, at most `eof_grace` seconds. FTPS uses TLS close_notify
    # instead. 0: no wait (a killed client whose control connection is not seen closed
    # yet may then complete a truncated file).
    eof_grace: Annotated[float, Field(ge=0, le=10)] = 0.1
    # The floor: a killed client's second close may come a CPU time slice after its
    # first when its host is busy (see the README's measurements); eof_grace_min =
    # eof_grace makes every plain upload wait the whole grace.
    eof_grace_min: Annotated[float, Field(ge=0, le=10)] = 0.01
    # Wrong passwords on one connection before it is closed (the shared throttle slows
    # and bans across connections).
    max_login_failures: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _consistent(self) -> FtpServerConfig:
        if self.tls != "none":
            if self.cert_file is None or self.key_file is None:
                raise ValueError(f"tls: {self.tls} needs 'cert_file' and 'key_file'")
            if self.client_certs != "none" and self.client_ca_file is None:
                raise ValueError("'client_certs' needs 'client_ca_file' (the CA that signs them)")
        else:
            tls_only = ("cert_file", "key_file", "client_ca_file")
            given = [name for name in tls_only if getattr(self, name) is not None]
            if given or self.client_certs != "none":
                raise ValueError(
                    f"{', '.join(given) or 'client_certs'}: TLS settings need a 'tls' mode "
                    "(explicit, required or implicit)"
                )
        if self.passive_ports is not None:
            first, last = self.passive_ports
            if not 1024 <= first <= last <= 65535:
                raise ValueError(
                    "'passive_ports' must be [first, last] with 1024 <= first <= last <= 65535"
                )
        return self


class FtpPartnerConfig(PartnerConfig):
    """`protocol: ftp` partners: `address`, `port` (default 21, 990 with implicit TLS),
    `login`, `password`. A transfer's remote file is `<remote_dir>/<file>`."""

    # none: plain FTP. explicit and required: AUTH TLS and protected data connections,
    # never a fallback to plain (which an attacker could force). implicit: TLS from the
    # first byte.
    tls: TlsMode = "none"
    remote_dir: str = ""
    # TLS trust: the system's CA store, or `ca_file` only (a CA bundle or the partner's
    # own certificate), or `cert_sha256` pinning the partner's certificate.
    ca_file: FilePath | None = None
    cert_sha256: Sha256Pin | None = None
    # Our client certificate, for partners that ask for one.
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    # Passive data connections (EPSV, then PASV); active (EPRT/PORT: the partner
    # connects to us) only on request.
    active_mode: bool = False
    # Sends go to `<name><temp_suffix>`, renamed (RNFR/RNTO) once complete, unless the
    # partner wants the final name directly.
    temp_suffix: Annotated[str, Field(min_length=1)] = ".part"
    upload_to_final_name: bool = False
    # Ask the partner for the SHA-256 of what it holds (HASH) when it offers it.
    verify_hash: bool = True
    connect_timeout: Seconds = 30.0
    # Seconds of silence on a control or data connection before it counts as lost.
    read_timeout: Seconds = 300.0
    # Control connections kept open between transfers, at most this long.
    idle_timeout: Seconds = 60.0
    # Bytes per second, 0 = unlimited (for partners behind thin links).
    max_rate: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> FtpPartnerConfig:
        problems = []
        if not self.address:
            problems.append("an ftp partner needs 'address'")
        if not self.login:
            problems.append("an ftp partner needs 'login'")
        if self.password is None:
            problems.append("an ftp partner needs 'password'")
        tls = ("ca_file", "cert_sha256", "cert_file", "key_file")
        given = [name for name in tls if getattr(self, name) is not None]
        if self.tls == "none" and given:
            problems.append(f"{', '.join(given)}: TLS settings need a 'tls' mode")
        if self.ca_file is not None and self.cert_sha256 is not None:
            problems.append("give either 'ca_file' or 'cert_sha256', not both")
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("'cert_file' and 'key_file' go together")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ftp_port(self) -> int:
        return self.port or (990 if self.tls == "implicit" else 21)

    @property
    def uses_tls(self) -> bool:
        return self.tls != "none"
