"""The handles protocol servers get for a partner's upload or download.

A handle moves bytes (write or read at offsets) and resolves the DATA step of its run
(`gatewayd.pipeline.data.ServerData`): `close()` is the clean end and returns once the
run is over (file complete, fsynced, placed, post tasks run) or raises the error it
ended with; `abort()` is the broken end. The run itself, its steps and its end belong
to the driver.
"""

from __future__ import annotations

import asyncio
import posixpath

from gatewayd.errors import TransferError
from gatewayd.model import Direction, ErrorCode
from gatewayd.pipeline.data import Outcome, ServerData
from gatewayd.pipeline.run import Run, StopReason
from gatewayd.ports import Chunk, TransferHandle
from gatewayd.safepath import Beneath


class ServerHandle(TransferHandle):
    """What both handles share: the run, its DATA step, and the ends."""

    def __init__(self, run: Run, data: ServerData, direction: Direction) -> None:
        t = run.transfer
        self.run, self.data = run, data
        self.transfer_id = t.id or 0
        self.direction = direction
        self.offset = t.progress
        self.size = t.filesize
        self.closed = False

    def _check_open(self) -> None:
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        if self.run.done.is_set():
            raise self.run.error or TransferError(ErrorCode.TeInternal, "transfer already ended")
        if self.closed:
            raise TransferError(ErrorCode.TeInternal, "transfer already closed")

    async def _ended(self) -> None:
        """Wait for the run's end; raise what it ended with (None: DONE)."""
        await self.run.done.wait()
        if self.run.finished:  # DONE is committed: a stop that came after is no failure
            self.sha256 = self.run.transfer.sha256
            return
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        if self.run.error is not None:
            raise self.run.error
        self.sha256 = self.run.transfer.sha256

    async def abort(self, error: TransferError) -> None:
        """The broken end: ERROR with the durable bytes kept, or INTERRUPTED when it is
        our own shutdown that broke the session."""
        self.closed = True
        engine = self.run.engine
        if engine.shutting_down:
            await engine.stop(self.transfer_id, StopReason.SHUTDOWN)
            return
        self.data.resolve(Outcome(error=error))
        await self.run.done.wait()


class UploadHandle(ServerHandle):
    """A partner's upload: bytes go to the temp file; a clean close completes it, or,
    under a temporary name, parks it until its rename."""

    def __init__(self, run: Run, data: ServerData) -> None:
        super().__init__(run, data, Direction.RECEIVE)

    @property
    def awaiting_rename(self) -> bool:
        return self.data.parked.is_set() and not self.run.done.is_set()

    async def write(self, offset: int, data: Chunk) -> None:
        self._check_open()
        receiving = self.run.receiving
        if receiving is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        await receiving.write(offset, data)
        await self.run.data_hook(offset + len(data))

    async def read(self, offset: int, size: int) -> bytes:
        raise TransferError(ErrorCode.TeForbidden, "this file is open for writing")

    async def sync(self) -> None:
        self._check_open()
        receiving = self.run.receiving
        if receiving is not None:
            await receiving.checkpoint(wait=True)

    def closing(self) -> None:
        if not self.closed and self.run.stop_reason is None:
            self.run.completing = True  # a shutdown lets it finish: its partner waits

    async def close(self, expected_sha256: str | None = None) -> None:
        self._check_open()
        self.closed = True
        self.data.resolve(Outcome(sha256=expected_sha256, times=self.times))
        if not self.data.is_temp_name(self.run.transfer.dest_filename):
            await self._ended()  # a final name is never parked: the run's end is the answer
            return
        parked = asyncio.ensure_future(self.data.parked.wait())
        ended = asyncio.ensure_future(self.run.done.wait())
        try:
            await asyncio.wait((parked, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            parked.cancel()
            ended.cancel()
        if self.run.done.is_set():
            await self._ended()

    async def renamed(self, name: str, file: Beneath) -> None:
        """The partner renamed the temporary name: the transfer follows; to a final
        name, DATA completes under it (returns once the run is over)."""
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        t = self.run.transfer
        t.dest_filename = name
        t.local_filepath = str(file.path)
        t.remote_filepath = posixpath.join(posixpath.dirname(t.remote_filepath), name)
        parked_again = self.data.request_rename()
        if self.data.is_temp_name(name):
            await parked_again  # another temporary name: saved, still waiting
            if not self.run.done.is_set():
                return
        await self._ended()


class DownloadHandle(ServerHandle):
    """A partner's download: reads at offsets; complete once every byte was read."""

    def __init__(self, run: Run, data: ServerData) -> None:
        super().__init__(run, data, Direction.SEND)
        self._read_to = self.offset

    async def write(self, offset: int, data: Chunk) -> None:
        raise TransferError(ErrorCode.TeForbidden, "this file is open for reading")

    async def read(self, offset: int, size: int) -> bytes:
        self._check_open()
        sending = self.run.sending
        if sending is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        data = await sending.read(offset, size)
        if offset <= self._read_to < offset + len(data):
            self._read_to = offset + len(data)
            self.run.note_progress(self._read_to)
        await self.run.data_hook(offset + len(data))
        return data

    async def close(self, expected_sha256: str | None = None) -> None:
        if self.closed or self.run.stop_reason is not None:
            return
        self.closed = True
        self.data.resolve(Outcome(read_to=self._read_to))
        await self._ended()
