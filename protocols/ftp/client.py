"""The FTP and FTPS client role: the gateway sends files to and receives files from a
partner's FTP server.

- A pool of control connections per partner (up to its `max_transfers`, 4 by default),
  logged in once and reused across its transfers; an idle one is checked with NOOP
  before reuse and closed after `idle_timeout`.
- A send goes to `<name><temp_suffix>` and is renamed (RNFR/RNTO) once the partner
  answered 226, unless the partner wants the final name. Over FTPS the data ends with
  TLS close_notify (what our own server takes for the end of a file). A resumed send
  starts (REST + STOR) at the smaller of what we recorded and the partner's SIZE of the
  temporary file. The send is delivered once the partner reports the final name's SIZE
  (and its SHA-256 through HASH, where it offers it).
- A receive asks SIZE, resumes with REST, and checks the partner's HASH of the whole
  file where it offers it (receives from byte 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import ssl
import time
from collections.abc import AsyncIterator
from datetime import datetime

import structlog

from gatewayd.config.schema import PartnerConfig
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.ports import Chunk, DataSink, DataSource, Delivered, ProtocolClient, RemoteStat
from protocols.ftp import listing
from protocols.ftp import tls as ftp_tls
from protocols.ftp.channel import ChannelClosed, DataChannel
from protocols.ftp.config import FtpPartnerConfig
from protocols.ftp.control import ControlConnection, ReplyError
from protocols.pacing import Pacer

log = structlog.get_logger("gatewayd.ftp")

READ_CHUNK = 1 << 20  # bytes read from the local file at a time during a send
_HASH_BATCH = 4 << 20  # received bytes hashed in a worker thread at a time
_PROBE_AFTER = 5.0  # seconds idle after which a pooled connection is checked (NOOP)
_DEFAULT_POOL = 4


class FtpClient(ProtocolClient):
    """The client side for one `protocol: ftp` partner."""

    def __init__(self, name: str, config: PartnerConfig) -> None:
        assert isinstance(config, FtpPartnerConfig)
        self.name, self.config = name, config
        self.limit = config.max_transfers or _DEFAULT_POOL
        self._slots = asyncio.Semaphore(self.limit)
        self._idle: list[ControlConnection] = []
        self._context: asyncio.Future[ssl.SSLContext] | None = None
        self._closed = False
        self.opened = 0  # control connections opened so far (for tests and logs)
        self.log = log.bind(partner=name)

    # ------------------------------------------------------------------ the pool

    async def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.uses_tls:
            return None
        if self._context is None:
            self._context = asyncio.ensure_future(
                asyncio.to_thread(ftp_tls.client_context, self.config)
            )
        try:
            return await asyncio.shield(self._context)
        except Exception as exc:
            self._context = None
            raise TransferError(
                ErrorCode.TeConnection, f"TLS settings of partner {self.name}: {exc}"
            ) from exc

    async def _new(self) -> ControlConnection:
        context = await self._tls_context()
        conn = ControlConnection(self.name, self.config, context)
        await conn.open()
        self.opened += 1
        return conn

    async def _acquire(self) -> ControlConnection:
        await self._slots.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                idle = time.monotonic() - conn.last_used
                if idle > self.config.idle_timeout:
                    await conn.quit()
                    continue
                if idle > _PROBE_AFTER:
                    try:
                        await conn.command("NOOP")
                    except TransferError:
                        conn.close()
                        continue
                return conn
            return await self._new()
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn: ControlConnection) -> None:
        self._slots.release()
        if conn.broken or self._closed:
            conn.close()
            return
        conn.last_used = time.monotonic()
        self._idle.append(conn)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[ControlConnection]:
        conn = await self._acquire()
        try:
            yield conn
        except ReplyError:
            raise  # a refusal: the connection stays good
        except BaseException:
            conn.broken = True
            raise
        finally:
            self._release(conn)

    async def connect(self) -> None:
        async with self._connection():
            pass

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.quit()

    # ------------------------------------------------------------------ names

    def _path(self, remote_path: str) -> str:
        base = self.config.remote_dir
        return posixpath.join(base, remote_path) if base else remote_path

    def _temp_name(self, path: str) -> str:
        return path if self.config.upload_to_final_name else path + self.config.temp_suffix

    async def _size(self, conn: ControlConnection, path: str) -> int | None:
        try:
            found = await conn.command(f"SIZE {path}", (213,))
        except ReplyError:
            return None
        text = found.text.split()[-1] if found.text else ""
        return int(text) if text.isdigit() else None

    async def _mtime(self, conn: ControlConnection, path: str) -> datetime | None:
        if "MDTM" not in conn.features:
            return None
        try:
            found = await conn.command(f"MDTM {path}", (213,))
        except ReplyError:
            return None
        return listing.parse_mlsx_time(found.text)

    async def stat(self, remote_path: str) -> RemoteStat | None:
        path = self._path(remote_path)
        async with self._connection() as conn:
            if "MLST" in conn.features:
                try:
                    found = await conn.command(f"MLST {path}", (250,))
                except ReplyError:
                    return None
                for line in found.lines[1:]:
                    entry = listing.parse_mlsx(line.strip())
                    if entry is not None:
                        return RemoteStat(entry.size, entry.is_dir, entry.mtime, entry.name)
                return None
            size = await self._size(conn, path)
            if size is None:
                return None
            return RemoteStat(size, False, await self._mtime(conn, path), posixpath.basename(path))

    async def sent_offset(self, remote_path: str, local_offset: int) -> int:
        target = self._temp_name(self._path(remote_path))
        async with self._connection() as conn:
            if "REST STREAM" not in conn.features:
                return 0  # no resumed STOR on this partner: the whole file again
            held = await self._size(conn, target)
        return min(local_offset, held or 0)

    async def list(self, remote_dir: str) -> list[RemoteStat]:
        path = self._path(remote_dir) or "."
        async with self._connection() as conn:
            mlsd = "MLST" in conn.features
            pending = await conn.prepare_data()
            channel = await conn.transfer_command(f"{'MLSD' if mlsd else 'LIST'} {path}", pending)
            body = await self._read_all(channel, f"listing of {path}")
            await conn.final_reply("LIST")
        found: list[RemoteStat] = []
        for raw in body.decode("utf-8", "replace").splitlines():
            entry = listing.parse_mlsx(raw) if mlsd else listing.parse_list_line(raw)
            if entry is not None:
                found.append(RemoteStat(entry.size, entry.is_dir, entry.mtime, entry.name))
        return found

    async def delete(self, remote_path: str) -> None:
        async with self._connection() as conn:
            # 550: no such file (or not ours to delete): a REMOTEDELETE warns, not fails.
            await conn.command(f"DELE {self._path(remote_path)}", (2,), ErrorCode.TeFileNotFound)

    async def rename(self, remote_path: str, new_path: str) -> None:
        async with self._connection() as conn:
            await conn.command(f"RNFR {self._path(remote_path)}", (350,), ErrorCode.TeFileNotFound)
            await conn.command(f"RNTO {self._path(new_path)}", (2,))

    async def _read_all(self, channel: DataChannel, what: str) -> bytes:
        parts: list[Chunk] = []
        try:
            async with asyncio.timeout(self.config.read_timeout):
                while data := await channel.read():
                    parts.append(data)
        except ChannelClosed:
            pass  # a listing is whole when the partner answers 226; some skip close_notify
        except TimeoutError:
            raise TransferError(ErrorCode.TeConnectionReset, f"{what}: no data") from None
        finally:
            await channel.closed()
        return b"".join(parts)

    # ------------------------------------------------------------------ send

    async def send(self, source: DataSource, remote_path: str, offset: int) -> Delivered:
        path = self._path(remote_path)
        target = self._temp_name(path)
        if offset > source.size:
            offset = 0
        async with self._connection() as conn:
            pending = await conn.prepare_data()
            if offset:
                try:
                    await conn.command(f"REST {offset}", (350,))
                except BaseException:
                    pending.close()
                    raise
            channel = await conn.transfer_command(f"STOR {target}", pending)
            try:
                await self._write_all(channel, source, offset)
                # Open until the partner's answer: a socket closed before the partner
                # has read everything answers the partner's late TLS record (a TLS 1.3
                # session ticket) with a reset, and a reset drops the bytes the partner
                # has not read yet (vsftpd: "426 Failure reading network stream").
                await conn.final_reply("STOR")
            finally:
                channel.close()
            source.confirm(source.size)
            if target != path:
                await conn.command(f"RNFR {target}", (350,))
                await conn.command(f"RNTO {path}", (2,))
            held = await self._size(conn, path)
            sha256 = await self._hash(conn, path) if held == source.size else None
        if held is None:
            held = source.size  # no SIZE: the partner's 226 acknowledged the whole file
        self.log.info("sent", path=path, size=source.size, offset=offset, held=held)
        return Delivered(held, sha256)

    async def _write_all(self, channel: DataChannel, source: DataSource, offset: int) -> None:
        """The file from `offset`, the next block read while the current one is sent;
        the clean end is TLS close_notify (FTPS) and the end of the stream."""
        pacer = Pacer(self.config.max_rate)
        position, total = offset, source.size
        pending: asyncio.Future[bytes] | None = None
        try:
            if position < total:
                pending = asyncio.ensure_future(
                    source.read(position, min(READ_CHUNK, total - position))
                )
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    raise TransferError(
                        ErrorCode.TeDataTransfer, f"the local file shrank to {position} bytes"
                    )
                position += len(data)
                if position < total:
                    pending = asyncio.ensure_future(
                        source.read(position, min(READ_CHUNK, total - position))
                    )
                async with asyncio.timeout(self.config.read_timeout):
                    await channel.write(data)
                # Handed to the connection: an upper bound of what the partner holds,
                # which sent_offset lowers to the partner's SIZE on a resume.
                source.confirm(position)
                await pacer.pace(len(data))
            await channel.finish(self.config.read_timeout)
        except (ChannelClosed, TimeoutError) as exc:
            raise TransferError(
                ErrorCode.TeConnectionReset,
                f"data connection to partner {self.name} lost at byte {position}: "
                f"{str(exc) or type(exc).__name__}",
            ) from None
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _hash(self, conn: ControlConnection, path: str) -> str | None:
        """The partner's SHA-256 of `path` (HASH, draft-bryan-ftpext-hash), where it
        offers it."""
        if not (self.config.verify_hash and conn.hash_sha256):
            return None
        try:
            found = await conn.command(f"HASH {path}", (213,))
        except ReplyError:
            return None
        words = found.text.split()
        if len(words) >= 3 and words[0].upper() == "SHA-256" and len(words[2]) == 64:
            return words[2].lower()
        return None

    # ------------------------------------------------------------------ receive

    async def receive(self, sink: DataSink, remote_path: str, offset: int) -> None:
        path = self._path(remote_path)
        async with self._connection() as conn:
            size = await self._size(conn, path)
            if size is not None:
                sink.set_size(size)
                if offset > size:
                    raise TransferError(
                        ErrorCode.TeDataTransfer,
                        f"{path} has {size} bytes, fewer than the {offset} received",
                    )
            if offset and "REST STREAM" not in conn.features:
                raise TransferError(
                    ErrorCode.TeUnimplemented, f"partner {self.name} cannot resume (no REST STREAM)"
                )
            pending = await conn.prepare_data()
            if offset:
                try:
                    await conn.command(f"REST {offset}", (350,))
                except BaseException:
                    pending.close()
                    raise
            channel = await conn.transfer_command(f"RETR {path}", pending)
            digest = hashlib.sha256() if offset == 0 else None
            position = await self._read_into(channel, sink, offset, size, digest)
            await conn.final_reply("RETR")
            if size is not None and position != size:
                raise TransferError(
                    ErrorCode.TeDataTransfer, f"{path} ended at byte {position} of {size}"
                )
            if digest is not None:
                theirs = await self._hash(conn, path)
                if theirs is not None and theirs != digest.hexdigest():
                    raise TransferError(
                        ErrorCode.TeIntegrity,
                        f"the partner's SHA-256 of {path} differs from the bytes received",
                    )
        self.log.info("received", path=path, size=position, offset=offset)

    async def _read_into(
        self,
        channel: DataChannel,
        sink: DataSink,
        offset: int,
        size: int | None,
        digest: hashlib._Hash | None,
    ) -> int:
        pacer = Pacer(self.config.max_rate)
        position = offset
        batch: list[Chunk] = []
        batched = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(self.config.read_timeout):
                        data = await channel.read()
                except ChannelClosed:
                    if size is not None and position == size:
                        break  # every byte came; some servers skip close_notify
                    raise
                if not data:
                    break
                await sink.write(position, data)
                position += len(data)
                if digest is not None:
                    batch.append(data)
                    batched += len(data)
                    if batched >= _HASH_BATCH:
                        await asyncio.to_thread(_update, digest, batch)
                        batch, batched = [], 0
                await pacer.pace(len(data))
            if digest is not None and batch:
                await asyncio.to_thread(_update, digest, batch)
        except (ChannelClosed, TimeoutError) as exc:
            raise TransferError(
                ErrorCode.TeConnectionReset,
                f"data connection from partner {self.name} lost at byte {position}: "
                f"{str(exc) or type(exc).__name__}",
            ) from None
        finally:
            await channel.closed()
        return position


def _update(digest: hashlib._Hash, pieces: list[Chunk]) -> None:
    for piece in pieces:
        digest.update(piece)
