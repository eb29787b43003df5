"""The SFTP client role, on asyncssh: the gateway sends files to and receives files from
a partner's SFTP server.

- The partner's host key is pinned in its configuration: any other key is refused with
  `TeBadAuthentication` and a message naming the key it presented.
- One SSH connection per partner, reused by its transfers (each on its own SFTP channel,
  which carries the transfer's followID in the `GATEWAYD_FOLLOW_ID` environment
  variable for partners that are gateways too).
- A send writes `<name><temp_suffix>` and renames it when complete (unless the partner
  wants the final name), keeping up to `max_requests` writes in flight; about every
  `sync_interval` it asks the partner to fsync (pipelined behind the writes, which the
  server handles in order) and only then counts the bytes as delivered. A resumed send
  starts at the smaller of what we recorded and what the partner's temporary file holds.
- A receive keeps `max_requests` reads in flight and hands the data to the pipeline in
  order.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncssh
import structlog

from gatewayd.config.schema import PartnerConfig
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.ports import DataSink, DataSource, Delivered, ProtocolClient, RemoteStat
from protocols.pacing import Pacer
from protocols.sftp.config import GATEWAYD_SSH_VERSION, SftpPartnerConfig, ciphers
from protocols.sftp.transport import coalesce_writes

log = structlog.get_logger("gatewayd.sftp")

FOLLOW_ID_ENV = "GATEWAYD_FOLLOW_ID"
READ_CHUNK = 4 << 20  # bytes read from the local file at a time during a send

_SFTP_CODES = {
    asyncssh.FX_NO_SUCH_FILE: ErrorCode.TeFileNotFound,
    asyncssh.FX_PERMISSION_DENIED: ErrorCode.TeForbidden,
    asyncssh.FX_NO_SPACE_ON_FILESYSTEM: ErrorCode.TeBadSize,
    asyncssh.FX_QUOTA_EXCEEDED: ErrorCode.TeBadSize,
    asyncssh.FX_NO_CONNECTION: ErrorCode.TeConnectionReset,
    asyncssh.FX_CONNECTION_LOST: ErrorCode.TeConnectionReset,
    asyncssh.FX_OP_UNSUPPORTED: ErrorCode.TeUnimplemented,
}
_LOST = (
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    asyncssh.ChannelOpenError,
    ConnectionError,
    BrokenPipeError,
)


class _PinnedHost(asyncssh.SSHClient):
    """Trusts only the pinned keys (given to asyncssh as known hosts); remembers the key
    the server presented when it is another one, for the error message."""

    def __init__(self) -> None:
        self.presented: asyncssh.SSHKey | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        coalesce_writes(conn)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.presented = key
        return False


class SftpClient(ProtocolClient):
    """The client side for one `protocol: sftp` partner."""

    def __init__(self, name: str, config: PartnerConfig) -> None:
        assert isinstance(config, SftpPartnerConfig)
        self.name, self.config = name, config
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self.log = log.bind(partner=name)

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        await self._connection()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._open()
            return self._conn

    async def _open(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        pinned = [asyncssh.import_public_key(k) for k in cfg.host_keys]
        client_keys = None  # never the daemon user's own ~/.ssh keys or agent
        if cfg.private_key is not None:
            try:
                key = await asyncio.to_thread(
                    asyncssh.read_private_key, cfg.private_key, cfg.private_key_passphrase
                )
            except (OSError, asyncssh.KeyImportError) as exc:
                raise TransferError(
                    ErrorCode.TeBadAuthentication,
                    f"cannot use the private key {cfg.private_key} for partner {self.name}: "
                    f"{getattr(exc, 'strerror', None) or exc}",
                ) from None
            client_keys = [key]
        owner = _PinnedHost()
        where = f"{cfg.address}:{cfg.ssh_port}"
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: owner,
                cfg.address,
                cfg.ssh_port,
                username=cfg.login,
                password=cfg.password,
                client_keys=client_keys,
                agent_path=None,
                known_hosts=(pinned, [], []),
                config=None,
                encryption_algs=ciphers(cfg.offer_chacha20),
                connect_timeout=cfg.connect_timeout,
                keepalive_interval=cfg.keepalive_interval,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise TransferError(
                ErrorCode.TeBadAuthentication, self._host_key_message(owner)
            ) from None
        except asyncssh.PermissionDenied:
            raise TransferError(
                ErrorCode.TeBadAuthentication,
                f"partner {self.name} ({where}) refused the login of {cfg.login!r}",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise TransferError(
                ErrorCode.TeConnection, f"cannot connect to partner {self.name} ({where}): {exc}"
            ) from None
        self.log.info("connected", address=where, cipher=conn.get_extra_info("send_cipher"))
        return conn

    def _host_key_message(self, owner: _PinnedHost) -> str:
        cfg = self.config
        pinned = ", ".join(asyncssh.import_public_key(k).get_fingerprint() for k in cfg.host_keys)
        got = owner.presented
        shown = f"{got.get_algorithm()} {got.get_fingerprint()}" if got else "an unknown key"
        return (
            f"host key mismatch for partner {self.name} ({cfg.address}:{cfg.ssh_port}): it "
            f"presented {shown}, the configuration pins {pinned}. If the partner really "
            "changed its key, put the new one in its host_keys; otherwise someone may be "
            "impersonating it."
        )

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    @contextlib.asynccontextmanager
    async def _session(
        self, transfer_info: Mapping[str, object] | None = None
    ) -> AsyncIterator[asyncssh.SFTPClient]:
        """An SFTP channel on the partner's connection, errors mapped to TransferError."""
        follow_id = str((transfer_info or {}).get("followID") or "")
        env = {FOLLOW_ID_ENV: follow_id} if follow_id else None
        sftp = None
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                sftp = await conn.start_sftp_client(env=env)
                break
            except (*_LOST, asyncssh.Error, OSError) as exc:
                # The reused connection may have died since its last use: one new try.
                async with self._lock:
                    if self._conn is conn:
                        self._conn = None
                conn.close()
                if attempt == 2:
                    raise TransferError(
                        ErrorCode.TeConnection,
                        f"cannot open an SFTP session with partner {self.name}: {exc}",
                    ) from None
        assert sftp is not None
        try:
            yield sftp
        except asyncssh.SFTPError as exc:
            raise TransferError(
                _SFTP_CODES.get(exc.code, ErrorCode.TeDataTransfer),
                f"partner {self.name}: {exc.reason}",
            ) from None
        except _LOST as exc:
            raise TransferError(
                ErrorCode.TeConnectionReset, f"connection to partner {self.name} lost: {exc}"
            ) from None
        finally:
            sftp.exit()

    # ------------------------------------------------------------------ files

    def _path(self, remote_path: str) -> str:
        base = self.config.remote_dir
        return posixpath.join(base, remote_path) if base else remote_path

    def _temp_name(self, remote_path: str) -> str:
        if self.config.upload_to_final_name:
            return remote_path
        return remote_path + self.config.temp_suffix

    async def stat(self, remote_path: str) -> RemoteStat | None:
        return await self._stat(self._path(remote_path))

    async def _stat(self, path: str) -> RemoteStat | None:
        async with self._session() as sftp:
            try:
                attrs = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
        mtime = datetime.fromtimestamp(attrs.mtime, UTC) if attrs.mtime is not None else None
        return RemoteStat(
            size=attrs.size or 0, is_dir=attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY,
            mtime=mtime,
        )  # fmt: skip

    async def list(self, remote_dir: str) -> list[RemoteStat]:
        path = self._path(remote_dir) or "."
        async with self._session() as sftp:
            names = await sftp.readdir(path)
        found = []
        for entry in names:
            name = entry.filename if isinstance(entry.filename, str) else entry.filename.decode()
            if name in (".", ".."):
                continue
            attrs = entry.attrs
            mtime = datetime.fromtimestamp(attrs.mtime, UTC) if attrs.mtime is not None else None
            is_dir = attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY
            found.append(RemoteStat(attrs.size or 0, is_dir, mtime, name))
        return found

    async def delete(self, remote_path: str) -> None:
        async with self._session() as sftp:
            await sftp.remove(self._path(remote_path))

    async def rename(self, remote_path: str, new_path: str) -> None:
        async with self._session() as sftp:
            await self._rename(sftp, self._path(remote_path), self._path(new_path))

    async def sent_offset(self, remote_path: str, local_offset: int) -> int:
        held = await self._stat(self._temp_name(self._path(remote_path)))
        return min(local_offset, held.size if held is not None and not held.is_dir else 0)

    async def send(self, source: DataSource, remote_path: str, offset: int) -> Delivered:
        remote_path = self._path(remote_path)
        target = self._temp_name(remote_path)
        info = source.transfer_info
        async with self._session(info) as sftp:
            pflags = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT
            if offset == 0:
                pflags |= asyncssh.FXF_TRUNC
            block = min(self.config.block_size, sftp.limits.max_write_len or self.config.block_size)
            remote = await sftp.open(target, pflags, encoding=None, block_size=block)
            try:
                await self._write_all(remote, source, offset, block)
                if offset and ((await remote.stat()).size or 0) > source.size:
                    await remote.truncate(source.size)  # leftovers of a longer old file
            finally:
                with contextlib.suppress(asyncssh.SFTPError, *_LOST):
                    await remote.close()
            if target != remote_path:
                await self._rename(sftp, target, remote_path)
            held = (await sftp.stat(remote_path)).size or 0
        source.confirm(source.size)
        sha256 = await self._partner_sha256(remote_path) if held == source.size else None
        self.log.info("sent", path=remote_path, size=source.size, offset=offset, held=held)
        return Delivered(held, sha256)

    async def _partner_sha256(self, remote_path: str) -> str | None:
        """The partner's SHA-256 of the file, when the partner is a gatewayd (whose SFTP
        servers answer a `sha256sum` exec on their virtual paths): other servers are
        not sent commands they did not offer."""
        conn = await self._connection()
        if GATEWAYD_SSH_VERSION not in str(conn.get_extra_info("server_version") or ""):
            return None
        try:
            result = await conn.run(f"sha256sum {shlex.quote(remote_path)}", check=False)
        except (*_LOST, asyncssh.Error, OSError):
            return None
        out = result.stdout if isinstance(result.stdout, str) else ""
        digest = out.split(" ", 1)[0]
        return digest if result.exit_status == 0 and len(digest) == 64 else None

    async def _rename(self, sftp: asyncssh.SFTPClient, old: str, new: str) -> None:
        try:
            await sftp.posix_rename(old, new)
        except asyncssh.SFTPOpUnsupported:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await sftp.remove(new)
            await sftp.rename(old, new)

    async def _write_all(
        self, remote: asyncssh.SFTPClientFile, source: DataSource, offset: int, block: int
    ) -> None:
        """Keep up to `max_requests` writes in flight; about every `sync_interval`, an
        fsync request goes behind them (the server handles requests in order, so its
        answer covers every write sent before it) and, once answered, the bytes up to
        there count as delivered."""
        cfg = self.config
        pacer = Pacer(cfg.max_rate)
        size = source.size
        pos = acked = synced = offset
        buffered, buffered_at = b"", offset
        inflight: deque[tuple[int, asyncio.Task[int]]] = deque()
        sync: tuple[int, asyncio.Task[None]] | None = None
        can_sync = True
        last_sync = time.monotonic()
        try:
            while pos < size or inflight:
                while inflight and inflight[0][1].done():
                    end, task = inflight.popleft()
                    task.result()  # raises the partner's refusal of a write
                    acked = end
                if sync is not None and sync[1].done():
                    can_sync = await self._synced(sync[1])
                    synced = sync[0] if can_sync else acked
                    sync = None
                if min(synced, acked) > offset:
                    source.confirm(min(synced, acked))
                if sync is None and time.monotonic() - last_sync >= cfg.sync_interval:
                    last_sync = time.monotonic()
                    if can_sync:
                        sync = (pos, asyncio.ensure_future(remote.fsync()))
                    else:
                        synced = acked  # the best the partner lets us know
                if pos < size and len(inflight) < cfg.max_requests:
                    if pos >= buffered_at + len(buffered):
                        buffered = await source.read(pos, min(READ_CHUNK, size - pos))
                        buffered_at = pos
                        if not buffered:
                            raise TransferError(
                                ErrorCode.TeDataTransfer, "the local file shrank during the send"
                            )
                    piece = buffered[pos - buffered_at : pos - buffered_at + block]
                    write = asyncio.ensure_future(remote.write(piece, pos))
                    inflight.append((pos + len(piece), write))
                    pos += len(piece)
                    await pacer.pace(len(piece))
                    continue
                waits: list[asyncio.Future[Any]] = [inflight[0][1]] if inflight else []
                if sync is not None:
                    waits.append(sync[1])
                if waits:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if sync is not None:
                can_sync = await self._synced(sync[1])
                sync = None
            if can_sync:
                await self._synced(asyncio.ensure_future(remote.fsync()))
        finally:
            pending: list[asyncio.Task[Any]] = [task for _, task in inflight]
            pending += [sync[1]] if sync else []
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _synced(self, task: asyncio.Task[None]) -> bool:
        """Wait for an fsync request; False when the partner does not offer fsync."""
        try:
            await task
        except asyncssh.SFTPOpUnsupported:
            self.log.warning("partner cannot fsync: progress counts acknowledged writes")
            return False
        return True

    async def receive(self, sink: DataSink, remote_path: str, offset: int) -> None:
        remote_path = self._path(remote_path)
        info = sink.transfer_info
        async with self._session(info) as sftp:
            block = min(self.config.block_size, sftp.limits.max_read_len or self.config.block_size)
            remote = await sftp.open(
                remote_path,
                asyncssh.FXF_READ,
                encoding=None,
                block_size=block,
                max_requests=self.config.max_requests,
            )
            try:
                size = (await remote.stat()).size or 0
                sink.set_size(size)
                if offset > size:
                    raise TransferError(
                        ErrorCode.TeDataTransfer,
                        f"{remote_path} has {size} bytes, fewer than the {offset} received",
                    )
                pacer = Pacer(self.config.max_rate)
                early: dict[int, bytes] = {}
                position = offset
                async for at, data in await remote.read_parallel(size - offset, offset):
                    early[at] = data
                    while position in early:
                        data = early.pop(position)
                        await sink.write(position, data)
                        position += len(data)
                        await pacer.pace(len(data))
                if position < size:
                    raise TransferError(
                        ErrorCode.TeDataTransfer,
                        f"{remote_path} ended at byte {position} of {size}",
                    )
            finally:
                with contextlib.suppress(asyncssh.SFTPError, *_LOST):
                    await remote.close()
        self.log.info("received", path=remote_path, size=size, offset=offset)
