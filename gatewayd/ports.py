"""The small interfaces between the core and the protocols, and the protocol registry.

A protocol module registers one `ProtocolSpec`: the typed option models of its servers
and partners, and factories for its server and client sides. The core finds protocols
only through this registry, by the name written in the configuration.

Server side: the core hands a `ServerContext` to the protocol server; the server maps its
sessions onto it (authenticate, list, open a transfer) and moves bytes through the
`TransferHandle` it gets back. Client side: the pipeline drives a `ProtocolClient`,
giving it a `DataSource` to send from or a `DataSink` to receive into.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Protocol, TypeAlias

from gatewayd.config.schema import AccountConfig, PartnerConfig, ServerConfig
from gatewayd.errors import TransferError
from gatewayd.model import Direction, ErrorCode

# Bytes handed to a write: `bytes`, or a read-only view of bytes that the caller never
# changes (kept without a copy until they are written: a protocol may hand over the
# buffer the kernel received them into).
Chunk: TypeAlias = bytes | memoryview

# ---------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class Entry:
    """A name in an account's virtual tree, as `ls`/`stat`/`HEAD` show it."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: datetime | None = None
    # An upload not finished yet: `size` is its durable progress, where a resume starts.
    unfinished: bool = False


class TransferHandle(ABC):
    """One open transfer, as a protocol server sees it.

    Writes and reads take explicit offsets (SFTP clients pipeline requests). `close()`
    is the clean end: for an upload it returns once the file is complete, fsynced and in
    place and the post tasks ran (or raises the TransferError that ended it). `abort()`
    is the broken end (dropped connection, short body): the transfer ends in ERROR with
    its durable bytes kept for a resume.
    """

    transfer_id: int
    direction: Direction
    # Where the data starts: the durable progress of a resumed upload, or 0.
    offset: int
    # Size of the file for downloads; -1 for uploads of unknown size.
    size: int
    # (atime, mtime) the partner gave an upload (SFTP `put -p`): set on the file when it
    # is placed, before the post tasks.
    times: tuple[float, float] | None = None
    # After a clean close: the SHA-256 (hex) the core recorded for the file.
    sha256: str = ""

    @abstractmethod
    async def write(self, offset: int, data: Chunk) -> None: ...

    @abstractmethod
    async def read(self, offset: int, size: int) -> bytes: ...

    @abstractmethod
    async def close(self, expected_sha256: str | None = None) -> None:
        """The clean end. For an upload, `expected_sha256` (hex) is the checksum the
        partner announced: the file is placed only if the data matches it."""

    @abstractmethod
    async def abort(self, error: TransferError) -> None: ...

    def closing(self) -> None:
        """The partner's clean end has arrived, `close()` follows once the bytes still
        queued are written: a stop of the gateway lets this transfer finish (within its
        timeout) instead of interrupting it. Default: nothing."""
        return None

    async def sync(self) -> None:
        """Make the bytes written so far durable (SFTP's fsync@openssh.com)."""
        return None


class ServerContext(Protocol):
    """What the core offers a protocol server. Paths are the account's virtual paths
    (`/inbox/report.csv`); the core confines them to what the account's rules allow."""

    server_name: str

    @property
    def state_dir(self) -> Path:
        """Where a server keeps its own state (generated host keys...)."""
        ...

    async def authenticate(
        self,
        login: str,
        *,
        password: str | None = None,
        public_key: str | None = None,
        remote: str = "",
    ) -> str | None:
        """The account name when the credential is good, None otherwise."""
        ...

    def authorized_keys(self, login: str) -> list[str]:
        """The OpenSSH-format public keys registered for `login` (empty if unknown)."""
        ...

    def has_account(self, login: str) -> bool:
        """Whether `login` is an enabled account: for logins proven by other means than
        a password or key (a TLS client certificate verified by the protocol)."""
        ...

    def rule_path(self, account: str, rule_name: str) -> str | None:
        """The virtual folder of rule `rule_name`, None unless `account` may use it (for
        protocols where partners name the rule, such as HTTP's `Waarp-Rule-Name`)."""
        ...

    async def stat(self, account: str, path: str) -> Entry | None: ...

    async def digest(self, account: str, path: str, algorithm: str) -> str:
        """The hex digest (`hashlib` name: sha256, md5...) of a visible file; raises
        TransferError (TeFileNotFound, TeForbidden)."""
        ...

    async def set_times(self, account: str, path: str, atime: float, mtime: float) -> None:
        """Set the times of one of the account's received files (SFTP `put -p`); files
        the gateway sends keep theirs."""
        ...

    async def disk_space(self, account: str, path: str) -> os.statvfs_result:
        """Free space where the files of `path` are kept (SFTP statvfs, `df`)."""
        ...

    async def list_dir(self, account: str, path: str) -> list[Entry]: ...

    async def open_transfer(
        self,
        account: str,
        path: str,
        direction: Direction,
        *,
        offset: int = 0,
        truncate: bool = False,
        remote: str = "",
        size: int = -1,
        transfer_info: Mapping[str, object] | None = None,
    ) -> TransferHandle:
        """Start or resume a server transfer; returns once its pre tasks ran and its
        data may move. For an upload, `offset` > 0 continues the unfinished upload of
        the same name from there (any offset up to its durable progress: the bytes
        beyond are dropped), 0 starts it again from zero. `transfer_info` (from the
        partner) is merged into the row's before any task runs. Raises the core's
        refusals, each protocol mapping them once: TransferError (TeForbidden,
        TeFileNotFound, ...), ResumeRefused (beyond what is held, with `.held`),
        AlreadyRunning (the same name being uploaded), LimitReached (`.retry_after`),
        TeShuttingDown."""
        ...

    async def rename(self, account: str, old_path: str, new_path: str) -> None:
        """Complete the account's upload made under a temporary name, or rename one of
        its received files where the rule allows it; TransferError otherwise."""
        ...

    async def delete(self, account: str, path: str) -> None:
        """Delete a file the account may download, where the rule allows it;
        TransferError otherwise (TeForbidden, TeFileNotFound)."""
        ...


class ProtocolServer(ABC):
    """A listener of one protocol. Built by the spec's `server_factory`.

    The gateway calls `prepare()` on every server before any `start()`: a server that
    cannot start (a key file gone, a certificate that does not load) is found before
    anything listens.

    A stop (the daemon's SIGTERM) has two phases, so that no partner loses the answer
    to an upload that completes during it:

    1. `stop_accepting()`: no new connection, login, session or request is taken (a
       request arriving on an open connection is refused with the protocol's "come back
       later"); sessions already open stay open. The core refuses new transfers from
       then on (TeShuttingDown). The gateway then stops the engine: uploads in the
       middle of their data end INTERRUPTED at once (durable bytes kept), while those
       whose partner already closed them (completing) run to their end.
    2. `stop(grace)`: wait, at most `grace` seconds, until every request still being
       handled has written its answer (the result of a completion above), then close
       every session and return once they are closed. Transfers a session still has
       open are interrupted, never completed.
    """

    async def prepare(self) -> None:
        """Load what `start()` needs (TLS context, host keys...); raise an exception
        whose message names the file at fault when it cannot. Default: nothing."""
        return None

    @abstractmethod
    async def start(self) -> None:
        """Listen (after `prepare()`); return once connections are accepted."""

    async def stop_accepting(self) -> None:
        """Phase 1 of a stop: take no new connection, login, session or request; keep the
        open sessions. Default: nothing (the server does it all in `stop()`)."""
        return None

    @abstractmethod
    async def stop(self, grace: float = 0.0) -> None:
        """Phase 2 of a stop (or the whole of it when `stop_accepting()` was not called):
        stop accepting, wait at most `grace` seconds for the answers of requests being
        handled to be written, then close every session (their open transfers are
        aborted, or interrupted during a shutdown)."""

    @property
    @abstractmethod
    def bound_port(self) -> int:
        """The port actually listened on (useful with port 0)."""

    @property
    def session_count(self) -> int | None:
        """Sessions open now (SSH connections; HTTP requests in progress), for the
        metrics; None when the protocol does not count them."""
        return None


# ---------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class RemoteStat:
    size: int
    is_dir: bool = False
    mtime: datetime | None = None
    # The entry's name, in listings (`ProtocolClient.list`).
    name: str = ""


class DataSource(Protocol):
    """The local side of a send. `size` is known before the send starts."""

    size: int
    # The transfer's info (followID...), for protocols that pass it on to the partner.
    transfer_info: Mapping[str, object]

    async def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (b"" at the end)."""
        ...

    def confirm(self, offset: int) -> None:
        """Tell the pipeline that the peer durably holds bytes [0, offset)."""
        ...

    async def digest(self) -> str:
        """The SHA-256 (hex) of the whole file, for a protocol that compares it with
        the partner's."""
        ...


@dataclass(frozen=True)
class Delivered:
    """What the partner holds once a send is over: the size of the file under its
    final name, and its SHA-256 (hex) where the partner can tell it. The core records
    a send DONE only when both match the local file."""

    size: int
    sha256: str | None = None


class DataSink(Protocol):
    """The local side of a receive."""

    transfer_info: Mapping[str, object]

    async def write(self, offset: int, data: Chunk) -> None: ...

    def set_size(self, size: int) -> None:
        """The total size the peer announced, for the end-of-data check."""
        ...


class ProtocolClient(ABC):
    """The client side of a protocol, for one partner. Built by `client_factory`; one
    instance may serve several transfers to that partner (connections are reused)."""

    @abstractmethod
    async def connect(self) -> None:
        """Open (or check) the connection; raise TransferError(TeConnection, ...)."""

    @abstractmethod
    async def stat(self, remote_path: str) -> RemoteStat | None:
        """What the peer holds at `remote_path` (None when nothing)."""

    async def sent_offset(self, remote_path: str, local_offset: int) -> int:
        """Where a resumed send may start: the smaller of what we recorded and what the
        peer holds of the unfinished file. Default: the remote file's size."""
        remote = await self.stat(remote_path)
        return min(local_offset, remote.size if remote else 0)

    @abstractmethod
    async def send(self, source: DataSource, remote_path: str, offset: int) -> Delivered:
        """Send `source` from `offset` to `remote_path`, placing it under its final name
        only once complete; `source.confirm()` as the peer makes bytes durable. Returns
        what the partner then holds under the final name (asked of it, not assumed)."""

    @abstractmethod
    async def receive(self, sink: DataSink, remote_path: str, offset: int) -> None:
        """Receive `remote_path` from `offset` into `sink`."""

    async def list(self, remote_dir: str) -> list[RemoteStat]:
        """The entries directly in `remote_dir` (files and folders, never `.` or `..`),
        each with its `name`, size and, where the peer says, its modification time."""
        raise TransferError(ErrorCode.TeUnimplemented, "this protocol cannot list folders")

    async def delete(self, remote_path: str) -> None:
        """Remove the file `remote_path` from the peer (TeFileNotFound when it is not
        there)."""
        raise TransferError(ErrorCode.TeUnimplemented, "this protocol cannot delete files")

    async def rename(self, remote_path: str, new_path: str) -> None:
        """Rename (move) the file `remote_path` to `new_path` on the peer."""
        raise TransferError(ErrorCode.TeUnimplemented, "this protocol cannot rename files")

    @abstractmethod
    async def close(self) -> None: ...


# ---------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CheckContext:
    """What the checks of a protocol's options may need to know (see `ProtocolSpec`)."""

    # Where relative paths resolve, and the daemon's state folder (generated keys...).
    home: Path
    state_dir: Path


# A problem found by a check: the path of the field at fault within the entry checked
# (`("host_keys", 0)`, `("cert_file",)`; `()` for the entry as a whole), and a message.
FieldProblem = tuple[tuple[str | int, ...], str]


@dataclass(frozen=True)
class ProtocolSpec:
    """What a protocol module registers.

    The optional checks look beyond the option schema at what the options name: files
    exist and hold what they should (certificates, keys), keys parse. `check-config`
    (the loader) calls `check_server` for each enabled server of the protocol,
    `check_partner` for each partner, and `check_accounts` (with the accounts section,
    whose keys its servers use) once when the protocol has an enabled server. They are
    blocking and may import the protocol's libraries: they are only called for a
    protocol the configuration uses.
    """

    name: str
    server_config: type[ServerConfig] | None = None
    partner_config: type[PartnerConfig] | None = None
    server_factory: Callable[[str, ServerConfig, ServerContext], ProtocolServer] | None = None
    client_factory: Callable[[str, PartnerConfig], ProtocolClient] | None = None
    check_server: Callable[[str, ServerConfig, CheckContext], list[FieldProblem]] | None = None
    check_partner: Callable[[str, PartnerConfig, CheckContext], list[FieldProblem]] | None = None
    # Field paths start with the account's name: `("bob", "public_keys", 0)`.
    check_accounts: Callable[[Mapping[str, AccountConfig]], list[FieldProblem]] | None = None


_REGISTRY: dict[str, ProtocolSpec] = {}
# Protocol packages are found by name through this entry-point group (pyproject.toml)
# and imported only when a configuration names them: `check-config` of an SFTP-only
# gateway never imports aiohttp's protocol, and a third-party package can add one.
ENTRY_POINTS = "gatewayd.protocols"


def register(spec: ProtocolSpec) -> ProtocolSpec:
    """Record `spec` (protocol modules call it when imported; tests may too)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"protocol {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINTS)}


def get(name: str) -> ProtocolSpec | None:
    """The protocol registered under `name` (its package imported on first use), None
    when unknown."""
    spec = _REGISTRY.get(name)
    if spec is None:
        ep = _entry_points().get(name)
        if ep is not None:
            ep.load()  # the module registers its protocols when imported
            spec = _REGISTRY.get(name)
    return spec


def names() -> list[str]:
    """Every protocol name known, without importing any protocol package."""
    return sorted(set(_REGISTRY) | set(_entry_points()))
