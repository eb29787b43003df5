"""The SFTP server role, on asyncssh: partners log in and see their virtual tree.

Every SFTP request maps onto the core's `ServerContext`: the tree (one folder per rule
the account may use) comes from `stat`/`list_dir`, a file opened for writing in a
`receive` rule's folder becomes a server transfer, one opened for reading in a `send`
rule's folder likewise. The rest of the file system does not exist for a partner.

Ends of a file, as the pipeline needs them:
- a clean SFTP CLOSE of an upload returns once the core has the file complete, fsynced,
  in place and its post tasks run; only then does the partner get its OK;
- asyncssh also "closes" every open file when the connection drops or the client sends
  EOF without closing them: `_SftpHandler` tells the session first, and those transfers
  are aborted (ERROR, durable bytes kept for a resume), never completed.

Resume (OpenSSH `reput`): `stat` reports an unfinished upload's durable progress; an open
for append (or a first write at that offset) continues that transfer. A plain `put`
(open with truncate) starts again from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import re
import stat
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import structlog
from asyncssh import SFTPAttrs, SFTPName, SSHReader, SSHWriter

# The SFTP request loop and the stream session of asyncssh are not in its public API;
# _ChannelSession and _SftpHandler below adapt them (tests cover both changes).
from asyncssh.connection import SSHConnection
from asyncssh.constants import FXP_WRITE
from asyncssh.packet import SSHPacket
from asyncssh.sftp import SFTPServerHandler
from asyncssh.stream import SSHServerStreamSession

from gatewayd.errors import TransferError
from gatewayd.model import Direction, ErrorCode
from gatewayd.ports import Entry, ProtocolServer, ServerContext, TransferHandle
from protocols.sftp import hostkeys
from protocols.sftp.config import GATEWAYD_SSH_VERSION, SftpServerConfig, ciphers
from protocols.sftp.exec import run_command
from protocols.sftp.transport import coalesce_writes

log = structlog.get_logger("gatewayd.sftp")

# Partners that are gateways pass the transfer's correlation id in this SSH environment
# variable of the SFTP channel (see protocols.sftp.client).
FOLLOW_ID_ENV = "GATEWAYD_FOLLOW_ID"
_FOLLOW_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Acknowledged writes waiting for the disk, per file: past HIGH the partner's next write
# waits until the backlog is down to LOW.
_PENDING_HIGH = 16 << 20
_PENDING_LOW = 4 << 20
# Connections the kernel queues before they are accepted. asyncio's default (100) is
# overrun by a rush of partners connecting at once: the others' SYNs are dropped and
# retried after 1, 3, 7, 15, 31 s, which pushes their logins towards the login timeout.
_LISTEN_BACKLOG = 1024
# Downloads read ahead in blocks of this size, at most this many blocks ahead.
_READ_BLOCK = 1 << 20
_READ_AHEAD = 4

_STATUS = {
    ErrorCode.TeForbidden: asyncssh.FX_PERMISSION_DENIED,
    ErrorCode.TeFileNotFound: asyncssh.FX_NO_SUCH_FILE,
    ErrorCode.TeBadSize: asyncssh.FX_NO_SPACE_ON_FILESYSTEM,
    ErrorCode.TeUnimplemented: asyncssh.FX_OP_UNSUPPORTED,
}


def sftp_error(exc: TransferError) -> asyncssh.SFTPError:
    """The SFTP status a transfer error becomes (asyncssh maps codes newer than the
    session's SFTP version to FX_FAILURE)."""
    return asyncssh.SFTPError(_STATUS.get(exc.code, asyncssh.FX_FAILURE), exc.message)


def _remote(conn: SSHConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else ""


class SftpServer(ProtocolServer):
    """One `protocol: sftp` listener."""

    def __init__(self, name: str, config: SftpServerConfig, ctx: ServerContext) -> None:
        self.name, self.config, self.ctx = name, config, ctx
        self._listener: asyncssh.SSHAcceptor | None = None
        self._host_keys: list[asyncssh.SSHKey] | None = None  # loaded by prepare()
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.sessions: set[SftpSession] = set()
        self.log = log.bind(server=name)
        # Stopping: no new connection, login or session (phase 1 of a stop).
        self.stopping = False
        # Closing: each connection closes as soon as none of its requests is being
        # handled (phase 2), so that every answer already computed reaches its partner.
        self._closing = False
        self._closed: set[asyncssh.SSHServerConnection] = set()

    @property
    def bound_port(self) -> int:
        return self._listener.get_port() if self._listener else 0

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    async def prepare(self) -> None:
        """Load the host keys, generating the missing ones."""
        if self._host_keys is not None:
            return
        paths = list(self.config.host_keys) or hostkeys.default_paths(self.ctx.state_dir, self.name)
        keys = await hostkeys.load_host_keys(paths)
        for key in keys:
            self.log.info(
                "host key", algorithm=key.get_algorithm(), fingerprint=key.get_fingerprint()
            )
        self._host_keys = keys

    async def start(self) -> None:
        await self.prepare()
        self._listener = await asyncssh.listen(
            self.config.address,
            self.config.port,
            server_factory=lambda: _SSHServer(self),
            server_host_keys=self._host_keys,
            encryption_algs=ciphers(self.config.offer_chacha20),
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            line_editor=False,
            login_timeout=self.config.login_timeout,
            keepalive_interval=self.config.keepalive_interval,
            reuse_address=True,
            reuse_port=self.config.reuse_port or None,
            backlog=_LISTEN_BACKLOG,
            encoding=None,
            server_version=GATEWAYD_SSH_VERSION,
        )

    async def stop_accepting(self) -> None:
        """No new connection, login or SFTP session; connections still logging in are
        closed (their password checks, queued or not, are dropped). Logged-in sessions
        stay: an upload completing in one of them is still answered."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            if conn.get_extra_info("gatewayd_account") is None:
                self._close(conn)

    async def stop(self, grace: float = 0.0) -> None:
        """End each connection as soon as none of its SFTP requests is being handled
        (the answer of each one, a completed upload's OK among them, is written first),
        at the latest after `grace` seconds; return once the sessions have ended."""
        await self.stop_accepting()
        self._closing = True
        for conn in list(self.connections):
            self._close_if_idle(conn)
        pending = [asyncio.ensure_future(c.wait_closed()) for c in list(self.connections)]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        left = [c for c in self.connections if not c.is_closed()]
        if left:
            busy = sum(1 for c in left if any(s.busy for s in self.sessions if s.conn is c))
            self.log.info("closing the connections left", count=len(left), busy=busy)
        for conn in left:
            conn.close()
        if pending:
            await asyncio.wait(pending)
        # Each session's files are aborted (the engine says INTERRUPTED when it is our
        # shutdown) before its exit: wait for that, bounded by the caller's timeout.
        while self.sessions:
            await next(iter(self.sessions)).exited.wait()
        if self._listener is not None:
            await self._listener.wait_closed()

    def _close(self, conn: asyncssh.SSHServerConnection) -> None:
        if conn not in self._closed:
            self._closed.add(conn)
            conn.close()

    def _close_if_idle(self, conn: asyncssh.SSHServerConnection) -> None:
        """While closing: end `conn` unless one of its SFTP sessions is handling a
        request (that session calls this again once its answer is written).

        A connection with SFTP sessions is ended by closing their channels: what was
        written goes first, then the channel's close, and the partner (OpenSSH exits
        when its session closes) ends the connection. Closing the connection from here
        would reset it while the partner's last packets (a window adjust) are unread,
        and a reset can make the partner's kernel drop the answer it had not read yet.
        """
        if not self._closing or conn in self._closed:
            return
        sessions = [s for s in self.sessions if s.conn is conn]
        if any(s.busy for s in sessions):
            return
        if not sessions:
            self._close(conn)
            return
        self._closed.add(conn)
        for session in sessions:
            session.chan.close()

    async def _exec(
        self, stdin: SSHReader[bytes], stdout: SSHWriter[bytes], stderr: SSHWriter[bytes]
    ) -> None:
        chan = stdout.channel
        account = str(chan.get_extra_info("gatewayd_account"))
        command = chan.get_command()
        try:
            status = await run_command(self.ctx, account, command, stdin, stdout, stderr)
        except Exception:  # never let a command take the connection down
            self.log.exception("exec failed", account=account, command=command)
            status = 1
        assert isinstance(chan, asyncssh.SSHServerChannel)  # typed as any SSH channel
        chan.exit(status)


class _SSHServer(asyncssh.SSHServer):
    """Authentication of one connection, against the core's accounts."""

    def __init__(self, server: SftpServer) -> None:
        self.server = server
        self.ctx = server.ctx
        self.conn: asyncssh.SSHServerConnection | None = None
        self.remote = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.remote = _remote(conn)
        self.server.connections.add(conn)
        coalesce_writes(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.server.connections.discard(self.conn)
            self.server._closed.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def kbdint_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        account = await self.ctx.authenticate(username, password=password, remote=self.remote)
        return self._accept(account)

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        public = key.export_public_key("openssh").decode()
        account = await self.ctx.authenticate(username, public_key=public, remote=self.remote)
        return self._accept(account)

    def session_requested(self) -> asyncssh.SSHServerSession[bytes] | bool:
        if self.server.stopping:
            return False  # the server is stopping: no new session (the client is told)
        return _ChannelSession(self.server)

    def _accept(self, account: str | None) -> bool:
        if account is None or self.conn is None:
            return False
        self.conn.set_extra_info(gatewayd_account=account)
        return True


class _ChannelSession(SSHServerStreamSession[bytes]):
    """One SSH session channel: the `sftp` subsystem, or an exec command (checksums).
    No shell, no other subsystem."""

    def __init__(self, server: SftpServer) -> None:
        # No SFTP factory: session_started starts the SFTP handler itself.
        super().__init__(server._exec)
        self.server = server

    def shell_requested(self) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        chan = self._chan
        assert isinstance(chan, asyncssh.SSHServerChannel)  # typed as any SSH channel
        if chan.get_subsystem() != "sftp":
            super().session_started()  # an exec command: runs SftpServer._exec
            return
        reader, writer = SSHReader[bytes](self, chan), SSHWriter[bytes](self, chan)
        handler = _SftpHandler(SftpSession(chan, self.server), reader, writer)
        chan.get_connection().create_task(handler.run(), reader.logger)


def _packet_logging() -> bool:
    """Whether asyncssh logs packets (`asyncssh.set_debug_level(3)`)."""
    return int(getattr(asyncssh.logging.SSHLogger, "_debug_level", 3)) >= 3


class _SftpHandler(SFTPServerHandler):
    """asyncssh's SFTP request loop, with two changes:

    - when the session ends (EOF or a lost connection), the `SftpSession` learns it
      before asyncssh "closes" the files left open, so that those closes abort their
      transfers instead of completing them;
    - a WRITE may carry bytes after its data, ignored as OpenSSH's sftp-server does
      (rclone 1.60's SFTP library sends some with the last write of a file).
    """

    def __init__(
        self, session: SftpSession, reader: SSHReader[bytes], writer: SSHWriter[bytes]
    ) -> None:
        super().__init__(session, reader, writer, 3)
        self.session = session

    async def _cleanup(self, exc: Exception | None) -> None:
        self.session.ending = True
        await super()._cleanup(exc)

    # asyncssh formats each packet's log text before it looks whether packet logging
    # (its debug level 3) is on: a few percent of a download's CPU, one 32 KiB read
    # request after another.
    def log_sent_packet(self, pkttype: int, pktid: int | None, packet: Any, note: str = "") -> None:
        if _packet_logging():
            super().log_sent_packet(pkttype, pktid, packet, note)

    def log_received_packet(
        self, pkttype: int, pktid: int | None, packet: Any, note: str = ""
    ) -> None:
        if _packet_logging():
            super().log_received_packet(pkttype, pktid, packet, note)

    async def _process_packet(self, pkttype: int, pktid: int, packet: SSHPacket) -> None:
        # Requests of a session are handled one at a time; a stop closes the connection
        # only between two of them, once the answer of the last one is written.
        self.session.busy = True
        try:
            await super()._process_packet(pkttype, pktid, packet)
        finally:
            self.session.busy = False
            self.session.server._close_if_idle(self.session.conn)

    async def _process_write(self, packet: SSHPacket) -> int:
        handle = packet.get_string()
        offset = packet.get_uint64()
        data = packet.get_string()
        file_obj = self._file_handles.get(handle)
        if file_obj is None:
            raise asyncssh.SFTPInvalidHandle("Invalid file handle")
        return await self.session.write(file_obj, offset, data)

    # asyncssh types its table for handlers of any SFTPServerHandler; this one is only
    # ever called on its own class.
    _packet_handlers = {**SFTPServerHandler._packet_handlers, FXP_WRITE: _process_write}  # type: ignore[dict-item]


def _mtime(entry: Entry, default: float) -> int:
    return int(entry.mtime.timestamp()) if entry.mtime else int(default)


def _attrs(entry: Entry, default_time: float) -> SFTPAttrs:
    mode = (stat.S_IFDIR | 0o750) if entry.is_dir else (stat.S_IFREG | 0o640)
    when = _mtime(entry, default_time)
    return SFTPAttrs(
        size=0 if entry.is_dir else entry.size,
        uid=0,
        gid=0,
        permissions=mode,
        atime=when,
        mtime=when,
    )


def _longname(entry: Entry, attrs: SFTPAttrs, account: str) -> bytes:
    mode = stat.filemode(attrs.permissions or 0)
    when = time.strftime("%b %d %H:%M", time.localtime(attrs.mtime or 0))
    return f"{mode} 1 {account:<8} {account:<8} {attrs.size or 0:>12} {when} {entry.name}".encode()


class SftpSession(asyncssh.SFTPServer):
    """One SFTP channel of one logged-in account."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], server: SftpServer) -> None:
        super().__init__(chan)
        self.server = server
        self.ctx = server.ctx
        self.account = str(chan.get_extra_info("gatewayd_account"))
        self.chan = chan
        conn = chan.get_connection()
        assert isinstance(conn, asyncssh.SSHServerConnection)  # typed as any connection
        self.conn = conn
        self.remote = _remote(self.conn)
        self.started = time.time()
        self.exited = asyncio.Event()
        # A request of this session is being handled (see _SftpHandler).
        self.busy = False
        self.files: set[_File] = set()
        self.transfer_info: dict[str, Any] = {}
        follow_id = self.env.get(FOLLOW_ID_ENV)
        if isinstance(follow_id, str) and _FOLLOW_ID.fullmatch(follow_id):
            self.transfer_info["followID"] = follow_id
        self.log = server.log.bind(account=self.account, remote=self.remote)
        # Set by _SftpHandler when the session ends (EOF, lost connection): whatever
        # asyncssh "closes" after that was not closed by the partner.
        self.ending = False
        server.sessions.add(self)

    def exit(self) -> None:
        self.server.sessions.discard(self)
        self.exited.set()

    # ------------------------------------------------------------------ paths

    def vpath(self, path: bytes) -> str:
        """The virtual path a request names (relative ones start at the root)."""
        try:
            text = path.decode("utf-8")
        except UnicodeDecodeError:
            raise asyncssh.SFTPNoSuchFile("file names must be UTF-8") from None
        return posixpath.join("/", text)

    def realpath(self, path: bytes) -> bytes:
        # Lexical, clamped at the root: `cd ..` works, and nothing can climb above `/`.
        return posixpath.normpath(self.vpath(path)).replace("//", "/").encode()

    async def _stat(self, path: bytes) -> Entry:
        try:
            entry = await self.ctx.stat(self.account, self.vpath(path))
        except TransferError as exc:
            raise sftp_error(exc) from None
        if entry is None:
            raise asyncssh.SFTPNoSuchFile(f"no such file {self.vpath(path)}")
        return entry

    async def _stat_or_none(self, path: bytes) -> Entry | None:
        try:
            return await self._stat(path)
        except asyncssh.SFTPNoSuchFile:
            return None

    async def stat(self, path: bytes) -> SFTPAttrs:
        return _attrs(await self._stat(path), self.started)

    async def lstat(self, path: bytes) -> SFTPAttrs:
        return await self.stat(path)

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        vpath = self.vpath(path)
        try:
            entries = await self.ctx.list_dir(self.account, vpath)
        except TransferError as exc:
            raise sftp_error(exc) from None
        here = Entry(name=".", is_dir=True)
        for entry in [here, Entry(name="..", is_dir=True), *entries]:
            attrs = _attrs(entry, self.started)
            longname = _longname(entry, attrs, self.account)
            yield SFTPName(entry.name.encode(), longname, attrs)

    # ------------------------------------------------------------------ files

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> _File:
        vpath = self.vpath(path)
        reading = bool(pflags & asyncssh.FXF_READ)
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND))
        if reading and writing:
            raise asyncssh.SFTPOpUnsupported("open a file either to read or to write")
        if not writing:
            entry = await self._stat(path)
            if entry.is_dir:
                raise asyncssh.SFTPFailure(f"{vpath} is a folder")
            file: _File = _Download(self, vpath, entry.size)
        else:
            upload = _Upload(self, vpath)
            existing = None
            if pflags & (asyncssh.FXF_APPEND | asyncssh.FXF_EXCL):
                existing = await self._stat_or_none(path)
                if existing is not None and (existing.is_dir or pflags & asyncssh.FXF_EXCL):
                    raise asyncssh.SFTPFailure(f"{vpath} already exists")
            if pflags & asyncssh.FXF_APPEND:
                # Append ignores write offsets (as OpenSSH's server does): the data
                # continues what the partner was told it holds.
                await upload.start(existing.size if existing else 0, append=True)
            elif pflags & asyncssh.FXF_TRUNC:
                await upload.start(0, truncate=True)  # the core refuses folders
            # Otherwise the first write's offset says where the data starts.
            file = upload
        self.files.add(file)
        return file

    async def close(self, file_obj: object) -> None:
        assert isinstance(file_obj, _File)
        self.files.discard(file_obj)
        await file_obj.close(dropped=self.ending)

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        assert isinstance(file_obj, _File)
        return await file_obj.read(offset, size)

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        assert isinstance(file_obj, _File)
        await file_obj.write(offset, data)
        return len(data)

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        assert isinstance(file_obj, _File)
        return _attrs(Entry(posixpath.basename(file_obj.vpath), False, file_obj.size), time.time())

    async def fsync(self, file_obj: object) -> None:
        assert isinstance(file_obj, _File)
        await file_obj.sync()

    async def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        assert isinstance(file_obj, _File)
        if attrs.size is not None and attrs.size != file_obj.size:
            raise asyncssh.SFTPOpUnsupported("changing a file's size is not supported")
        if attrs.mtime is not None and isinstance(file_obj, _Upload):
            file_obj.times = (float(attrs.atime or attrs.mtime), float(attrs.mtime))

    async def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Times of a received file are kept (`put -p`, rclone); modes and owners are
        ignored; sizes cannot change."""
        vpath = self.vpath(path)
        for file in self.files:
            if isinstance(file, _Upload) and file.vpath == vpath:
                await self.fsetstat(file, attrs)
                return
        entry = await self._stat(path)
        if attrs.size is not None and attrs.size != entry.size and not entry.is_dir:
            raise asyncssh.SFTPOpUnsupported("changing a file's size is not supported")
        if attrs.mtime is None or entry.is_dir:
            return
        try:
            await self.ctx.set_times(
                self.account, vpath, float(attrs.atime or attrs.mtime), float(attrs.mtime)
            )
        except TransferError as exc:
            raise sftp_error(exc) from None

    async def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        await self.setstat(path, attrs)

    async def statvfs(self, path: bytes) -> os.statvfs_result:
        return await self.ctx.disk_space(self.account, self.vpath(path))

    async def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        assert isinstance(file_obj, _File)
        return await self.statvfs(file_obj.vpath.encode())

    # ------------------------------------------------------------------ names

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        old, new = self.vpath(oldpath), self.vpath(newpath)
        try:
            await self.ctx.rename(self.account, old, new)
        except TransferError as exc:
            raise sftp_error(exc) from None
        self.log.info("renamed", old=old, new=new)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self.rename(oldpath, newpath)

    async def remove(self, path: bytes) -> None:
        vpath = self.vpath(path)
        try:
            await self.ctx.delete(self.account, vpath)
        except TransferError as exc:
            raise sftp_error(exc) from None

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        raise asyncssh.SFTPPermissionDenied("the folders are the rules': none can be created")

    def rmdir(self, path: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("the folders are the rules': none can be removed")

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("there are no links here")

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links are not allowed")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links are not allowed")


class _File:
    """An open file of a session; the core transfer behind it is opened on demand."""

    size: int

    def __init__(self, session: SftpSession, vpath: str) -> None:
        self.session = session
        self.vpath = vpath
        self.handle: TransferHandle | None = None
        self.closed = False

    async def _open(self, direction: Direction, offset: int, truncate: bool = False) -> None:
        s = self.session
        try:
            self.handle = await s.ctx.open_transfer(
                s.account,
                self.vpath,
                direction,
                offset=offset,
                truncate=truncate,
                remote=s.remote,
                transfer_info=s.transfer_info or None,
            )
        except TransferError as exc:
            s.log.info("open refused", path=self.vpath, error=exc.message)
            raise sftp_error(exc) from None

    async def read(self, offset: int, size: int) -> bytes:
        raise asyncssh.SFTPPermissionDenied("this file is open for writing")

    async def write(self, offset: int, data: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("this file is open for reading")

    async def sync(self) -> None:
        return None

    async def close(self, dropped: bool) -> None:
        raise NotImplementedError

    async def _abort(self, error: TransferError) -> None:
        if self.handle is not None:
            self.session.log.warning(
                "transfer aborted", path=self.vpath, transfer_id=self.handle.transfer_id,
                error=error.message,
            )  # fmt: skip
            await self.handle.abort(error)


class _Upload(_File):
    """A file the partner writes. Writes are acknowledged once queued for the core (the
    queue is bounded), so the client keeps streaming while the disk works; a failure
    shows on a later write or on the close, and durability is the close's promise."""

    def __init__(self, session: SftpSession, vpath: str) -> None:
        super().__init__(session, vpath)
        self.size = 0
        self.append = False
        self.times: tuple[float, float] | None = None
        self._pending: deque[tuple[int, bytes]] = deque()
        self._pending_bytes = 0
        self._room = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._error: TransferError | None = None
        # The core refused to open the transfer (a resume beyond the bytes held, a
        # limit): this handle completes nothing, not even an empty file, on close.
        self._refused: asyncssh.SFTPError | None = None

    async def start(self, offset: int, *, append: bool = False, truncate: bool = False) -> None:
        try:
            await self._open(Direction.RECEIVE, offset, truncate)
        except asyncssh.SFTPError as exc:
            self._refused = exc
            raise
        self.append = append
        self.size = offset

    async def write(self, offset: int, data: bytes) -> None:
        if self._refused is not None:
            raise self._refused
        if self._error is not None:
            raise sftp_error(self._error)
        if self.closed:
            raise asyncssh.SFTPFailure("file already closed")
        if self.handle is None:
            await self.start(offset)
        if self.append:
            offset = self.size
        self.size = max(self.size, offset + len(data))
        self._pending.append((offset, data))
        self._pending_bytes += len(data)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        if self._pending_bytes > _PENDING_HIGH:
            self._room.clear()
            await self._room.wait()

    async def _drain(self) -> None:
        handle = self.handle
        assert handle is not None
        try:
            while self._pending and self._error is None:
                offset, data = self._pending[0]
                await handle.write(offset, data)
                self._pending.popleft()
                self._pending_bytes -= len(data)
                if self._pending_bytes <= _PENDING_LOW:
                    self._room.set()
        except TransferError as exc:
            self._error = exc
        except Exception as exc:  # a bug must still end the transfer, not hang it
            self.session.log.exception("write failed", path=self.vpath)
            self._error = TransferError(ErrorCode.TeInternal, f"write failed: {exc!r}")
        finally:
            if self._error is not None:
                self._pending.clear()
                self._pending_bytes = 0
                await self._abort(self._error)
            self._room.set()

    async def _flush(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def sync(self) -> None:
        await self._flush()
        if self._error is not None:
            raise sftp_error(self._error)
        if self.handle is not None:
            try:
                await self.handle.sync()
            except TransferError as exc:
                raise sftp_error(exc) from None

    async def close(self, dropped: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if not dropped and self.handle is not None and self._refused is None:
            self.handle.closing()  # the partner waits: a stop lets this upload finish
        await self._flush()
        if dropped:
            await self._abort(
                TransferError(
                    ErrorCode.TeConnectionReset,
                    f"connection lost before {posixpath.basename(self.vpath)} was closed "
                    f"({self.size} bytes received)",
                )
            )
            return
        if self._refused is not None:
            raise self._refused
        if self._error is not None:
            raise sftp_error(self._error)
        if self.handle is None:  # nothing written: an empty file
            await self.start(0, truncate=True)
        handle = self.handle
        assert handle is not None
        handle.times = self.times
        try:
            await handle.close()
        except TransferError as exc:
            self.session.log.warning(
                "upload failed", path=self.vpath, transfer_id=handle.transfer_id,
                error=exc.message,
            )  # fmt: skip
            raise sftp_error(exc) from None
        # Debug: the pipeline's "transfer done" is the line of record (one per file).
        self.session.log.debug(
            "upload closed", path=self.vpath, transfer_id=handle.transfer_id, size=self.size
        )


class _ReadAhead:
    """Reads a download's blocks in order, a few ahead of the partner's requests, in one
    task: the disk (and the core's hash of sequential reads) works while requests are
    answered from memory. Blocks are aligned on the first offset read."""

    def __init__(self, handle: TransferHandle, base: int, size: int) -> None:
        self.handle, self.base, self.size = handle, base, size
        self.blocks: dict[int, asyncio.Future[bytes]] = {}
        self.next = base  # start of the next block the task reads
        self.low = base  # blocks below this were dropped
        self.horizon = base  # the partner asked for data up to here
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def read(self, offset: int, size: int) -> bytes | None:
        """Bytes at `offset`, or None when it is outside the window (read it directly)."""
        end = min(offset + size, self.size)
        if offset < self.low or offset >= self.next + _READ_BLOCK * _READ_AHEAD:
            return None
        self.horizon = max(self.horizon, end)
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        self.changed.set()
        pieces = []
        while offset < end:
            start = self.base + (offset - self.base) // _READ_BLOCK * _READ_BLOCK
            future = self.blocks.get(start)
            if future is None:
                if start < self.next:
                    return None  # dropped already
                future = self.blocks[start] = asyncio.get_running_loop().create_future()
                if self.failure is not None:
                    future.set_exception(self.failure)
            block = await asyncio.shield(future)
            piece = block[offset - start : end - start]
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
        for start in [s for s in self.blocks if s + _READ_BLOCK <= offset]:
            self._drop(start)
        self.low = max(self.low, self.base + (offset - self.base) // _READ_BLOCK * _READ_BLOCK)
        return b"".join(pieces)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.next < self.size:
            if self.next >= self.horizon + _READ_BLOCK * (_READ_AHEAD - 1):
                self.changed.clear()
                await self.changed.wait()
                continue
            start = self.next
            future = self.blocks.setdefault(start, loop.create_future())
            self.next = start + _READ_BLOCK
            try:
                data = await self.handle.read(start, _READ_BLOCK)
            except BaseException as exc:
                self.failure = (
                    exc
                    if isinstance(exc, Exception)
                    else TransferError(ErrorCode.TeDataTransfer, "read stopped")
                )
                for pending in self.blocks.values():
                    if not pending.done():
                        pending.set_exception(self.failure)
                raise
            if not future.done():
                future.set_result(data)

    def _drop(self, start: int) -> None:
        future = self.blocks.pop(start)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: no "never retrieved" warning

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        for start in list(self.blocks):
            self._drop(start)


class _Download(_File):
    """A file the partner reads. The transfer opens at the first read (its offset is
    where a `reget` resumes); reads are served through a `_ReadAhead`."""

    def __init__(self, session: SftpSession, vpath: str, size: int) -> None:
        super().__init__(session, vpath)
        self.size = size
        self._read_to = 0  # what the partner has read, contiguously from its start
        self._ahead: _ReadAhead | None = None

    async def read(self, offset: int, size: int) -> bytes:
        if self.closed:
            raise asyncssh.SFTPFailure("file already closed")
        if self.handle is None:
            await self._open(Direction.SEND, offset)
            assert self.handle is not None
            self._read_to = offset
            self._ahead = _ReadAhead(self.handle, offset, self.size)
        if offset >= self.size:
            return b""
        try:
            data = await self._ahead.read(offset, size) if self._ahead else None
            if data is None:
                data = await self.handle.read(offset, min(size, self.size - offset))
        except TransferError as exc:
            raise sftp_error(exc) from None
        if offset <= self._read_to < offset + len(data):
            self._read_to = offset + len(data)
        return data

    def seek(self, offset: int, whence: int) -> int:
        # For asyncssh's ranges extension: the whole file is data, no holes.
        if whence == os.SEEK_DATA and offset < self.size:
            return offset
        if whence == os.SEEK_HOLE:
            return self.size
        raise OSError(errno.ENXIO, "no data past the end")

    async def close(self, dropped: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self._ahead is not None:
            await self._ahead.stop()
        if self.handle is None:
            if self.size or dropped:
                return  # opened, never read: no transfer happened
            await self._open(Direction.SEND, 0)  # an empty file, read by opening it
        if dropped:
            await self._abort(
                TransferError(
                    ErrorCode.TeConnectionReset,
                    f"connection lost at byte {self._read_to} of {self.size}",
                )
            )
            return
        if self._read_to < self.size:
            await self._abort(
                TransferError(
                    ErrorCode.TeDataTransfer,
                    f"partner closed the file after reading to byte {self._read_to} of {self.size}",
                )
            )
            return
        handle = self.handle
        assert handle is not None
        try:
            await handle.close()
        except TransferError as exc:
            raise sftp_error(exc) from None
        self.session.log.debug(
            "download closed", path=self.vpath, transfer_id=handle.transfer_id, size=self.size
        )
