"""Options of `sftp` servers and partners (validated by the config loader).

Key paths must be absolute: a protocol's options are validated without the daemon's
`home`, and a path that silently depended on the daemon's working folder would break
under systemd. Servers without `host_keys` keep generated keys in the state folder.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator
from pydantic import Strict as StrictMode

from gatewayd.config.schema import FilePath, PartnerConfig, Secret, ServerConfig

KiB = 1024
MiB = 1024 * KiB


def _public_key(value: str) -> str:
    # Checked without asyncssh (slow to import for every `check-config`): the blob must
    # decode and start with the key type it claims; asyncssh parses it when connecting.
    parts = value.split()
    try:
        blob = base64.b64decode(parts[1], validate=True) if len(parts) >= 2 else b""
    except binascii.Error:
        blob = b""
    kind = parts[0].encode() if parts else b""
    if not kind or blob[4 : 4 + len(kind)] != kind or int.from_bytes(blob[:4]) != len(kind):
        raise ValueError(
            "must be an OpenSSH public key line such as 'ssh-ed25519 AAAA...' "
            "(the partner's host key: `ssh-keyscan -t ed25519 HOST` prints it)"
        )
    return " ".join(parts[:2])


def ciphers(offer_chacha20: bool) -> list[str]:
    """Our cipher list, in our order of preference (it decides when we are the client).
    AES-GCM first; chacha20-poly1305 only on request (asyncssh runs it at about half the
    speed of AES-GCM); AES-CTR last, for peers without GCM."""
    algs = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    if offer_chacha20:
        algs.append("chacha20-poly1305@openssh.com")
    return [*algs, "aes128-ctr", "aes192-ctr", "aes256-ctr"]


PublicKey = Annotated[str, AfterValidator(_public_key)]
Seconds = Annotated[float, Field(gt=0)]


# The software version our SFTP servers announce (`SSH-2.0-gatewayd`): our SFTP client
# recognises a gatewayd partner by it, and asks it for the SHA-256 of what it received.
GATEWAYD_SSH_VERSION = "gatewayd"


class SftpServerConfig(ServerConfig):
    """`protocol: sftp` servers."""

    # Private host keys (OpenSSH format). A missing file is generated on first start
    # (its name says the type: `*ed25519*` or `*rsa*`) with mode 0600 and kept after.
    # Default: ssh_host_ed25519_key and ssh_host_rsa_key (for old clients) in
    # <state_dir>/sftp/<server name>/.
    host_keys: Annotated[tuple[FilePath, ...], StrictMode(False)] = ()
    # The client picks the first cipher of its own list that we offer. OpenSSH clients
    # list chacha20-poly1305 first, which asyncssh runs at about half the speed of
    # AES-GCM: off by default, so they settle on their next choice, AES-CTR (`sftp -c
    # aes128-gcm@openssh.com` picks AES-GCM, the fastest here).
    offer_chacha20: bool = False
    # Seconds a client gets to log in, and between keepalives of idle connections.
    login_timeout: Seconds = 60.0
    keepalive_interval: Seconds = 60.0


class SftpPartnerConfig(PartnerConfig):
    """`protocol: sftp` partners: `address`, `port` (default 22), `login`, and a
    `password` and/or a `private_key`."""

    # The partner's host key(s), pinned: any other key is refused (no trust on first
    # use). One OpenSSH public key line each.
    host_keys: Annotated[tuple[PublicKey, ...], StrictMode(False), Field(min_length=1)]
    # The partner's folder for our transfers: a transfer's remote file is
    # <remote_dir>/<file> (relative: from the login's home folder on the partner).
    remote_dir: str = ""
    private_key: FilePath | None = None
    private_key_passphrase: Secret | None = Field(default=None, repr=False)
    # Sends go to `<name><temp_suffix>` and are renamed when complete, unless the
    # partner wants the final name directly (its own software watches for closes).
    temp_suffix: Annotated[str, Field(min_length=1)] = ".part"
    upload_to_final_name: bool = False
    # Bytes per SFTP read/write request (capped by what the partner announces) and
    # requests kept in flight: together, how much is on the wire at once.
    block_size: Annotated[int, Field(ge=4 * KiB, le=4 * MiB)] = 255 * KiB
    max_requests: Annotated[int, Field(ge=1, le=1024)] = 64
    # A send asks the partner to fsync (fsync@openssh.com) about this often, and only
    # then counts the bytes as delivered: what a resume may skip.
    sync_interval: Seconds = 1.0
    connect_timeout: Seconds = 30.0
    keepalive_interval: Seconds = 30.0
    # See the server's setting of the same name; here we are the client and our order
    # decides: AES-GCM first, chacha20-poly1305 only when offered.
    offer_chacha20: bool = False
    # Bytes per second, 0 = unlimited (for partners behind thin links).
    max_rate: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _complete(self) -> SftpPartnerConfig:
        problems = []
        if not self.address:
            problems.append("an sftp partner needs 'address'")
        if not self.login:
            problems.append("an sftp partner needs 'login'")
        if self.password is None and self.private_key is None:
            problems.append("an sftp partner needs 'password' or 'private_key'")
        if self.private_key_passphrase is not None and self.private_key is None:
            problems.append("'private_key_passphrase' needs 'private_key'")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ssh_port(self) -> int:
        return self.port or 22
