"""The local end of DATA: a temp file being received, or a file being sent.

Both hash the bytes with SHA-256 as they pass, in the worker thread that does the I/O
(hashlib releases the GIL), so the event loop never hashes or touches the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gatewayd import safepath
from gatewayd.errors import TransferError, os_error
from gatewayd.model import ErrorCode
from gatewayd.ports import Chunk
from gatewayd.safepath import Beneath

CHUNK = 1 << 20  # bytes buffered before a write, and read per call when re-reading
ProgressCallback = Callable[[int], None]
T = TypeVar("T")


def _hash_range(fd: int, hasher: hashlib._Hash, start: int, end: int) -> None:
    pos = start
    while pos < end:
        data = os.pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            raise TransferError(ErrorCode.TeIntegrity, f"file shorter than {end} bytes")
        hasher.update(data)
        pos += len(data)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


def _pwritev_all(fd: int, parts: list[Chunk], offset: int) -> None:
    """Write `parts` back to back from `offset`, whatever the kernel takes per call."""
    views = [memoryview(p) for p in parts if p]
    while views:
        written = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def _open_temp(path: Beneath, keep: int) -> int:
    """Open (creating) a temp file cut to its first `keep` bytes."""
    fd = safepath.open_file(path, os.O_RDWR | os.O_CREAT, create_parents=True)
    try:
        if os.fstat(fd).st_size < keep:
            raise TransferError(
                ErrorCode.TeDataTransfer,
                f"temp file holds fewer bytes than the recorded progress {keep}",
            )
        os.ftruncate(fd, keep)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _ThreadFile:
    """Runs the blocking I/O of one file in worker threads, one call at a time.

    A caller cancelled while its thread call runs does not stop that call, so the
    descriptor is closed only once every call has returned (never under a live pwrite).
    """

    _fd: int | None

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._calls: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def _thread(self, fn: Callable[[], T]) -> T:
        # The executor's future itself, not a task around `to_thread`: one task fewer
        # per call (no context is needed in the thread).
        call = asyncio.get_running_loop().run_in_executor(None, fn)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return await asyncio.shield(call)

    async def _close_fd(self) -> None:
        self._closed = True
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            await asyncio.to_thread(os.close, fd)


class ReceiveFile(_ThreadFile):
    """Incoming bytes for one transfer, written to its temp file.

    `durable` is the length of the prefix known to be fsynced: the only figure the
    pipeline may record as progress. About every `interval` seconds a checkpoint flushes,
    fsyncs in a worker thread while writes go on, then reports the new durable length
    through `on_durable`.

    A file received from its start is created by the first worker-thread call that
    needs it (a write, a checkpoint, the completion): a small file then costs one
    thread hop at its end, not one more at its open.
    """

    def __init__(
        self,
        path: Beneath,
        fd: int | None,
        offset: int,
        hasher: hashlib._Hash,
        on_durable: ProgressCallback,
        interval: float,
    ) -> None:
        super().__init__()
        self.path = path
        self._fd = fd
        self._creating = threading.Lock()  # a checkpoint's call may run beside a write's
        self._hasher = hasher
        self._hashed = offset
        self._hash_stale = False
        self.contiguous = offset  # every byte below this was written
        self.durable = offset
        self._extents: dict[int, int] = {}  # written ranges beyond `contiguous`
        # Sequential writes wait here (no copy) and go to disk in one pwritev.
        self._buf: list[Chunk] = []
        self._buf_len = 0
        self._buf_start = offset
        self._on_durable = on_durable
        self._interval = interval
        self._last_checkpoint = time.monotonic()
        self._checkpoint: asyncio.Task[None] | None = None
        self._failure: TransferError | None = None
        # Writes in flight (one per writer: a checkpoint asked by the partner may run
        # beside the writes), and the checkpoint due for bytes no write follows.
        self._writing: set[asyncio.Future[None]] = set()
        self._due: asyncio.TimerHandle | None = None
        self._due_run: asyncio.Future[None] | None = None
        # Written since the last fsync; True at first so that even an empty or resumed
        # file is synced once before it counts as complete.
        self._dirty = True

    @classmethod
    async def open(
        cls, path: Beneath, offset: int, on_durable: ProgressCallback, interval: float = 1.0
    ) -> ReceiveFile:
        """Open (creating) the temp file, keep its first `offset` bytes (the durable
        progress of an earlier attempt) and hash them again. From offset 0, the file is
        created (or an earlier attempt's cut) by the first call that needs it."""
        if offset == 0:
            return cls(path, None, 0, hashlib.sha256(), on_durable, interval)

        def _open() -> tuple[int, hashlib._Hash]:
            fd = _open_temp(path, offset)
            try:
                hasher = hashlib.sha256()
                _hash_range(fd, hasher, 0, offset)
            except BaseException:
                os.close(fd)
                raise
            return fd, hasher

        try:
            fd, hasher = await asyncio.to_thread(_open)
        except OSError as exc:
            raise os_error(exc, f"cannot open temp file {path.name}") from exc
        return cls(path, fd, offset, hasher, on_durable, interval)

    def _check_open(self) -> None:
        if self._closed:
            raise TransferError(ErrorCode.TeInternal, "temp file already closed")

    def _fd_now(self) -> int:
        """The descriptor, the file created if it is not yet (in a worker thread)."""
        with self._creating:
            if self._fd is None:
                try:
                    self._fd = _open_temp(self.path, 0)
                except OSError as exc:
                    raise os_error(exc, f"cannot open temp file {self.path.name}") from exc
            return self._fd

    async def write(self, offset: int, data: Chunk) -> None:
        """Write `data` at `offset`. Sequential writes are buffered up to 1 MiB (kept
        as they are, without a copy: see `Chunk`)."""
        async with self._lock:
            await self._write(offset, data)

    async def _write(self, offset: int, data: Chunk) -> None:
        if self._failure:
            raise self._failure
        if not isinstance(data, bytes | memoryview):  # a library's buffer it may reuse
            data = bytes(data)
        if offset == self._buf_start + self._buf_len:
            self._buf.append(data)
            self._buf_len += len(data)
            if self._buf_len >= CHUNK:
                await self._flush()
        else:
            await self._flush()
            await self._pwrite(offset, [data])
            self._buf_start = offset + len(data)
        if time.monotonic() - self._last_checkpoint >= self._interval:
            await self.checkpoint()
        else:
            self._checkpoint_later()

    async def _flush(self) -> None:
        if self._buf:
            parts, start, length = self._buf, self._buf_start, self._buf_len
            self._buf, self._buf_len = [], 0
            self._buf_start = start + length
            await self._pwrite(start, parts)

    async def _pwrite(self, offset: int, parts: list[Chunk]) -> None:
        """Start writing `parts` at `offset` once the write before it is done, and
        return: the partner's next bytes arrive while the worker thread writes and
        hashes these (one write in flight at most, so the hash sees them in order)."""
        await self._settle()
        self._check_open()
        length = sum(len(p) for p in parts)
        hash_now = offset == self._hashed
        if offset < self._hashed:
            self._hash_stale = True  # a rewrite of bytes already hashed: redo at the end

        def _write() -> None:
            _pwritev_all(self._fd_now(), parts, offset)
            if hash_now:
                for part in parts:
                    self._hasher.update(part)

        async def _behind() -> None:
            try:
                await self._thread(_write)
            except OSError as exc:
                self._failure = os_error(exc, f"cannot write {self.path.name}")
                raise self._failure from exc
            except TransferError as exc:  # the file could not be created
                self._failure = exc
                raise
            if hash_now:
                self._hashed = offset + length
            self._dirty = True
            self._add_extent(offset, offset + length)

        writing = asyncio.ensure_future(_behind())
        self._writing.add(writing)
        writing.add_done_callback(self._writing.discard)
        # Its error is also `_failure`, which the next call raises: never unheard.
        writing.add_done_callback(_retrieved)

    async def _settle(self) -> None:
        """Wait for the writes in flight (raising an error of theirs); the accounts of
        what was written (`contiguous`, the hash) are then up to date."""
        while self._writing:
            # Shielded: a cancelled caller must not lose the writes' accounts.
            await asyncio.shield(asyncio.gather(*self._writing))

    def _checkpoint_later(self) -> None:
        """Bytes written are made durable within an interval even when no write
        follows (a stalled partner): the checkpoint a next write would have made."""
        if self._due is not None or self._closed:
            return
        wait = max(0.0, self._interval - (time.monotonic() - self._last_checkpoint))
        self._due = asyncio.get_running_loop().call_later(wait, self._checkpoint_due)

    def _checkpoint_due(self) -> None:
        self._due = None
        if self._due_run is None or self._due_run.done():
            self._due_run = asyncio.ensure_future(self._timed_checkpoint())
            self._due_run.add_done_callback(_retrieved)

    def _no_checkpoint_due(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None

    async def _timed_checkpoint(self) -> None:
        async with self._lock:
            if self._closed or self._failure is not None or not self._dirty:
                return
            with contextlib.suppress(TransferError):  # kept in `_failure` for the writer
                await self.checkpoint()

    def _add_extent(self, start: int, end: int) -> None:
        if start > self.contiguous:
            self._extents[start] = max(end, self._extents.get(start, end))
            return
        self.contiguous = max(self.contiguous, end)
        merged = True
        while merged:
            merged = False
            for s, e in list(self._extents.items()):
                if s <= self.contiguous:
                    del self._extents[s]
                    self.contiguous = max(self.contiguous, e)
                    merged = True

    async def checkpoint(self, wait: bool = False) -> None:
        """Start (or, with `wait`, run to its end) a flush + fsync + progress report."""
        if self._checkpoint is not None and not self._checkpoint.done():
            if not wait:
                return
            await self._checkpoint
        await self._flush()
        await self._settle()
        self._last_checkpoint = time.monotonic()
        if not self._dirty:  # nothing written since the last fsync
            return
        self._dirty = False
        self._checkpoint = asyncio.ensure_future(self._sync(self.contiguous))
        if wait:
            await self._checkpoint
        if self._failure:
            raise self._failure

    async def _sync(self, length: int) -> None:
        self._check_open()
        try:
            await self._thread(lambda: os.fdatasync(self._fd_now()))
        except OSError as exc:
            self._failure = os_error(exc, f"cannot sync {self.path.name}")
            return
        except TransferError as exc:
            self._failure = exc
            return
        if length > self.durable:
            self.durable = length
            self._on_durable(length)

    async def complete(self, land: Callable[[int, str], T]) -> tuple[str, int, T]:
        """End of data in one worker-thread call: the buffered bytes written, fsynced,
        hashed to the end, the file closed, then `land(size, sha256)` run on the
        complete file (it checks and places it; raising refuses it). Returns the
        SHA-256, the size and what `land` returned.

        A small upload thus costs one thread hop at its end instead of five.
        """
        async with self._lock:
            self._no_checkpoint_due()
            await self._settle()
            if self._checkpoint is not None and not self._checkpoint.done():
                await self._checkpoint
            if self._failure:
                raise self._failure
            parts, start, length = self._buf, self._buf_start, self._buf_len
            self._buf, self._buf_len = [], 0
            self._buf_start = start + length
            if parts:
                self._add_extent(start, start + length)
            if self._extents:
                raise TransferError(
                    ErrorCode.TeDataTransfer, f"data has holes after byte {self.contiguous}"
                )
            self._check_open()
            end = self.contiguous
            hash_now = bool(parts) and start == self._hashed and not self._hash_stale
            sync = self._dirty or bool(parts)

            def _complete() -> tuple[str, int, T]:
                fd = self._fd_now()
                if parts:
                    _pwritev_all(fd, parts, start)
                    if hash_now:
                        for part in parts:
                            self._hasher.update(part)
                        self._hashed = start + length
                if sync:
                    os.fdatasync(fd)
                self.durable = end
                if self._hash_stale:
                    self._hasher, self._hashed = hashlib.sha256(), 0
                _hash_range(fd, self._hasher, self._hashed, end)
                self._hashed = end
                digest = self._hasher.hexdigest()
                # Closed here, in the thread, so that no later close can hit a reused
                # descriptor number, even if the waiting caller was cancelled.
                self._fd = None
                self._closed = True
                os.close(fd)
                return digest, end, land(end, digest)

            try:
                return await self._thread(_complete)
            except OSError as exc:
                raise os_error(exc, f"cannot complete {self.path.name}") from exc

    async def close(self) -> None:
        """Flush and fsync what was written (so it counts as progress), then close.
        Never raises: used on aborts, where the first error is already known."""
        async with self._lock:
            self._no_checkpoint_due()
            if self._closed:
                return
            if self._fd is None and not self._buf and not self._writing:
                self._closed = True  # never created: nothing was written
                return
            with contextlib.suppress(TransferError, OSError):
                await self.checkpoint(wait=True)
            await self._close_fd()


class SendFile(_ThreadFile):
    """A local file being sent: reads at offsets, hashing the sequential ones."""

    def __init__(
        self,
        path: Beneath,
        fd: int,
        size: int,
        hasher: hashlib._Hash,
        hashed: int,
        on_progress: ProgressCallback,
    ) -> None:
        super().__init__()
        self.path = path
        self._fd = fd
        self.size = size
        self._hasher = hasher
        self._hashed = hashed
        self._on_progress = on_progress
        self.confirmed = 0

    @classmethod
    async def open(cls, path: Beneath, offset: int, on_progress: ProgressCallback) -> SendFile:
        """Open `path` for sending from `offset` (a regular file reached through no
        link); the prefix is hashed first, so the digest covers the whole file however
        many attempts it took."""

        def _open() -> tuple[int, int, hashlib._Hash]:
            fd = safepath.open_file(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                hasher = hashlib.sha256()
                _hash_range(fd, hasher, 0, min(offset, size))
            except BaseException:
                os.close(fd)
                raise
            return fd, size, hasher

        try:
            fd, size, hasher = await asyncio.to_thread(_open)
        except OSError as exc:
            raise os_error(exc, f"cannot open {path.name}") from exc
        return cls(path, fd, size, hasher, min(offset, size), on_progress)

    async def read(self, offset: int, length: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise TransferError(ErrorCode.TeInternal, "file already closed")
        hash_now = offset == self._hashed

        def _read() -> bytes:
            data = os.pread(fd, length, offset)
            if hash_now and data:
                self._hasher.update(data)
            return data

        try:
            data = await self._thread(_read)
        except OSError as exc:
            raise os_error(exc, f"cannot read {self.path.name}") from exc
        if hash_now:
            self._hashed += len(data)
        return data

    def confirm(self, offset: int) -> None:
        if offset > self.confirmed:
            self.confirmed = offset
            self._on_progress(offset)

    async def digest(self) -> str:
        fd = self._fd
        if fd is None:
            raise TransferError(ErrorCode.TeInternal, "file already closed")

        def _digest() -> str:
            _hash_range(fd, self._hasher, self._hashed, self.size)
            self._hashed = self.size
            return self._hasher.hexdigest()

        return await self._thread(_digest)

    async def close(self) -> None:
        await self._close_fd()
