"""The DATA step of the one driver, in its three forms.

- `ClientData`: a protocol client of the partner moves the bytes (client transfers).
- `ServerData`: a partner's session moves them through its handle
  (gatewayd.pipeline.handles); the step waits for the handle to resolve it: complete
  (the partner's clean close, or the rename of a temporary name), or aborted with an
  error. Pre-registered expiry of a rename, drops and short bodies are outcomes of this
  step, not paths of their own.
- `Partnerless`: a server transfer that the gateway finishes alone after a restart;
  DATA is reached only when a crash left the file placed but not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.pipeline.clients import ClientPool, Lease
from gatewayd.pipeline.datafile import ReceiveFile, SendFile
from gatewayd.pipeline.files import set_times
from gatewayd.pipeline.run import Run
from gatewayd.ports import Chunk

log = structlog.get_logger("gatewayd.pipeline")


class ClientData:
    """DATA through a protocol client of the transfer's partner."""

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        self.lease: Lease | None = None

    async def setup(self, run: Run) -> None:
        if self.lease is None:
            self.lease = await self.pool.acquire(run.transfer)

    async def transfer(self, run: Run) -> None:
        await self.setup(run)
        assert self.lease is not None
        client = self.lease.client
        t = run.transfer
        if t.is_send:
            async with self.pool.destination(t.partner or "", t.remote_filepath):
                offset = 0
                if t.progress > 0:
                    offset = await client.sent_offset(t.remote_filepath, t.progress)
                sending = await run.open_send(offset)
                t.progress = offset
                run.log.info("data starts", offset=offset, size=sending.size)
                delivered = await client.send(_Source(run, sending), t.remote_filepath, offset)
                await _check_delivered(run, sending, delivered.size, delivered.sha256)
            await run.complete_send()
            return
        if await run.was_placed():
            return
        receiving = await run.open_receive()
        run.log.info("data starts", offset=t.progress)
        await client.receive(_Sink(run, receiving), t.remote_filepath, t.progress)
        await run.complete_receive()

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None


async def _check_delivered(run: Run, sending: SendFile, size: int, sha256: str | None) -> None:
    """A send is done only when the partner acknowledged the whole file: the size it
    holds after the send, and its SHA-256 where it reports one."""
    if size != sending.size:
        raise TransferError(
            ErrorCode.TeIntegrity,
            f"the partner holds {size} bytes of {run.transfer.remote_filepath}, "
            f"{sending.size} were sent",
        )
    if sha256 is not None and sha256.lower() != await sending.digest():
        raise TransferError(
            ErrorCode.TeIntegrity, "the partner's SHA-256 of the file differs from ours"
        )


class _Sink:
    """The DataSink a protocol client receives into."""

    def __init__(self, run: Run, receiving: ReceiveFile) -> None:
        self.run, self.receiving = run, receiving
        self.transfer_info: Mapping[str, object] = run.transfer.transfer_info

    async def write(self, offset: int, data: Chunk) -> None:
        await self.receiving.write(offset, data)
        await self.run.data_hook(offset + len(data))

    def set_size(self, size: int) -> None:
        self.run.transfer.filesize = size


class _Source:
    """The DataSource a protocol client sends from."""

    def __init__(self, run: Run, sending: SendFile) -> None:
        self.run, self.sending, self.size = run, sending, sending.size
        self.transfer_info: Mapping[str, object] = run.transfer.transfer_info

    async def read(self, offset: int, length: int) -> bytes:
        data = await self.sending.read(offset, length)
        await self.run.data_hook(offset + len(data))
        return data

    def confirm(self, offset: int) -> None:
        self.sending.confirm(offset)

    async def digest(self) -> str:
        return await self.sending.digest()


@dataclass(frozen=True)
class Outcome:
    """How a partner's session resolved DATA: an error (a drop, a short body), or the
    clean end with what the partner said about it."""

    error: TransferError | None = None
    sha256: str | None = None  # announced by the partner for an upload
    read_to: int = 0  # for a download: what the partner read, contiguously
    times: tuple[float, float] | None = None  # (atime, mtime) given to an upload


class ServerData:
    """DATA moved by a partner's session: the handle resolves `outcome`."""

    def __init__(
        self,
        offset: int,
        is_temp_name: Callable[[str], bool],
        rename_timeout: Callable[[], float],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.offset = offset
        self.is_temp_name = is_temp_name
        self.rename_timeout = rename_timeout
        # Set once the data file is open: the handle may move bytes.
        self.ready: asyncio.Future[None] = loop.create_future()
        self.outcome: asyncio.Future[Outcome] = loop.create_future()
        # Set while a complete upload under a temporary name waits for its rename.
        self.parked = asyncio.Event()
        self.renamed = asyncio.Event()
        # The protocol-facing handle of this DATA step (gatewayd.pipeline.handles).
        self.handle: object | None = None
        # Renames waiting to hear that the run is parked again (under another temporary
        # name) or over.
        self._acks: list[asyncio.Future[None]] = []

    async def setup(self, run: Run) -> None:
        return None

    def request_rename(self) -> asyncio.Future[None]:
        """The partner renamed the file (the row already follows): wake the step up.
        The future is done once the step is parked again or the run is over."""
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append(ack)
        self.renamed.set()
        return ack

    def _answer_renames(self) -> None:
        acks, self._acks = self._acks, []
        for ack in acks:
            if not ack.done():
                ack.set_result(None)

    def resolve(self, outcome: Outcome) -> bool:
        """Resolve DATA (False: it was resolved already, or the run is over)."""
        if self.outcome.done():
            return False
        self.outcome.set_result(outcome)
        return True

    async def transfer(self, run: Run) -> None:
        t = run.transfer
        if t.is_send:
            sending = await run.open_send(self.offset)
            t.progress = min(self.offset, sending.size)
        else:
            await run.open_receive()
        self.ready.set_result(None)
        outcome = await self.outcome
        if outcome.error is not None:
            raise outcome.error
        run.completing = True
        if t.is_send:
            if outcome.read_to < t.filesize:
                raise TransferError(
                    ErrorCode.TeDataTransfer,
                    f"partner stopped reading at byte {outcome.read_to} of {t.filesize}",
                )
            await run.complete_send()
            return
        while self.is_temp_name(t.dest_filename):
            await self._wait_rename(run)
        await run.complete_receive(expected_sha256=outcome.sha256)
        if outcome.times is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(set_times, run.beneath(t.local_filepath), outcome.times)

    async def _wait_rename(self, run: Run) -> None:
        """A temporary name completes on rename, not on close: keep the bytes durable
        and wait (bounded) for the rename to a final name."""
        receiving = run.receiving
        if receiving is not None:
            await receiving.checkpoint(wait=True)
        await run.save()
        self.renamed.clear()
        self.parked.set()
        self._answer_renames()
        run.completing = False  # nobody waits for this run while the name is temporary
        timeout = self.rename_timeout()
        renamed = await run.rt.clock.wait(self.renamed, timeout)
        self.parked.clear()
        if not renamed:
            name = run.transfer.dest_filename
            raise TransferError(
                ErrorCode.TeDataTransfer,
                f"upload under temporary name {name} was never renamed (waited {timeout:g} s)",
            )
        run.completing = True

    def release(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)  # whoever waits learns the run's end instead
        self._answer_renames()


class Partnerless:
    """A server transfer the gateway finishes without its partner (after a restart,
    its data complete): DATA is reached only for a received file that a crash left
    placed but not recorded."""

    async def setup(self, run: Run) -> None:
        return None

    async def transfer(self, run: Run) -> None:
        if not run.transfer.is_send and await run.was_placed():
            return
        raise TransferError(
            ErrorCode.TeDataTransfer, "the data of this server transfer must come from its partner"
        )

    def release(self) -> None:
        return None
