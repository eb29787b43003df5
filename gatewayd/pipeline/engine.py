"""The state machine that drives one transfer through its steps.

    SETUP -> PRE TASKS -> DATA -> POST TASKS -> FINALIZATION -> DONE
      (any failure)                   -> ERROR TASKS -> ERROR

The transfer row is the checkpoint: a step with work to redo after a crash is committed
before that work starts (a chain with tasks, DATA, the placing of a received file),
`task_number` after each task, `progress` (throttled) after each fsync. A run that
starts on a row resumes at its step, task and byte.

The engine knows no protocol: a client run gets its `ProtocolClient` from the client
pool; server runs are driven by `gatewayd.pipeline.server` on behalf of a protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog

from gatewayd.clock import Clock
from gatewayd.errors import TaskError, TaskWarning, TransferError
from gatewayd.model import ErrorCode, Status, Step, TaskSpec, Transfer
from gatewayd.pipeline.datafile import ReceiveFile, SendFile
from gatewayd.pipeline.files import CollisionPolicy, place
from gatewayd.pipeline.limits import Slot
from gatewayd.safepath import Beneath
from gatewayd.tasks.base import TaskContext, TransferCreator, task_class

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.pipeline.clients import ClientPool
    from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.pipeline")

ORDER = (Step.SETUP, Step.PRE_TASKS, Step.DATA, Step.POST_TASKS, Step.FINALIZATION)
CHAINS = {
    Step.PRE_TASKS: "pre_tasks",
    Step.POST_TASKS: "post_tasks",
    Step.ERROR_TASKS: "error_tasks",
}


class StopReason(StrEnum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


_STOPPED = {
    StopReason.PAUSE: (Status.PAUSED, ErrorCode.TeStopped, "transfer paused"),
    StopReason.CANCEL: (Status.CANCELLED, ErrorCode.TeCanceled, "transfer cancelled"),
    StopReason.SHUTDOWN: (Status.INTERRUPTED, ErrorCode.TeShuttingDown, "gateway shutting down"),
}


@dataclass
class Hooks:
    """Test hooks, awaited at fixed points of every run; one that raises injects a
    failure there. All None in production."""

    before_step: Callable[[Transfer, Step], Awaitable[None]] | None = None
    before_task: Callable[[Transfer, Step, int], Awaitable[None]] | None = None
    # After each block of DATA, with the offset reached.
    during_data: Callable[[Transfer, int], Awaitable[None]] | None = None


class Observer:
    """Told about runs as they happen (metrics). The methods do nothing here; they are
    called on the event loop and must return at once without raising."""

    def run_started(self, transfer: Transfer) -> None:
        """A run of `transfer` begins (a new transfer, or a resumed one)."""

    def progress(self, transfer: Transfer, offset: int) -> None:
        """`offset` bytes of `transfer` are durably written (receive) or confirmed (send)."""

    def run_ended(self, transfer: Transfer) -> None:
        """The run ended; `transfer.status` is where it ended."""

    def task_ran(self, task_type: str, ok: bool) -> None:
        """A task of a chain finished (`ok`: without error; a warning counts as ok)."""

    def login_failed(self, server: str, protocol: str) -> None:
        """A partner's password was refused on one of our servers (or it was banned)."""


@dataclass
class Runtime:
    """What every run needs from the running gateway."""

    loaded: LoadedConfig
    store: Store
    clock: Clock
    clients: ClientPool
    hooks: Hooks = field(default_factory=Hooks)
    create_transfer: TransferCreator | None = None
    observer: Observer = field(default_factory=Observer)
    local_host: str = field(default_factory=socket.gethostname)

    @property
    def progress_interval(self) -> float:
        return self.loaded.config.daemon.progress_interval


class Run:
    """One execution of one transfer (a client run, or a server session's transfer)."""

    def __init__(self, engine: Engine, transfer: Transfer) -> None:
        self.engine = engine
        self.rt = engine.rt
        self.transfer = transfer
        self.stop_reason: StopReason | None = None
        self.task: asyncio.Task[Any] | None = None  # the task running a client run
        self.receiving: ReceiveFile | None = None
        self.sending: SendFile | None = None
        self.done = asyncio.Event()
        self.handle: Any = None  # the protocol-facing handle of a server transfer
        # Places this run holds in the limits of the gateway, given back at its end.
        self.slots: list[Slot] = []
        self._last_save = time.monotonic()
        self._saved_progress = transfer.progress
        self._saving: asyncio.Task[None] | None = None
        self._progress_timer: asyncio.TimerHandle | None = None
        self.log = log.bind(transfer_id=transfer.id, rule=transfer.rule)

    # ------------------------------------------------------------------ persistence

    async def save(self) -> None:
        self.transfer.updated = self.rt.clock.now()
        self._last_save = time.monotonic()
        self._saved_progress = self.transfer.progress
        await self.rt.store.save_transfer(self.transfer)

    def note_progress(self, offset: int) -> None:
        """Record durable progress; the row is written about once per interval, and the
        last figure is written within an interval even when no more data comes (a
        stalled peer), so the row never lags far behind the disk."""
        self.transfer.progress = offset
        self.rt.observer.progress(self.transfer, offset)
        if self._progress_timer is None:
            wait = self.rt.progress_interval - (time.monotonic() - self._last_save)
            self._progress_timer = asyncio.get_running_loop().call_later(
                max(0.0, wait), self._progress_due
            )

    def _progress_due(self) -> None:
        self._progress_timer = None
        if self.transfer.progress == self._saved_progress:
            return
        if self._saving is not None and not self._saving.done():
            self.note_progress(self.transfer.progress)  # after the save in flight
            return
        self._last_save = time.monotonic()
        self._saved_progress = self.transfer.progress
        self._saving = asyncio.ensure_future(self._save_quietly())

    def stop_progress(self) -> None:
        """No progress write may follow the end of the run (a later run of the same
        transfer owns the row then)."""
        if self._progress_timer is not None:
            self._progress_timer.cancel()
            self._progress_timer = None

    async def _save_quietly(self) -> None:
        try:
            await self.rt.store.save_transfer(self.transfer)
        except Exception:  # the next step change will try again and report it
            self.log.exception("progress save failed")

    async def enter(self, step: Step, *, commit: bool = True) -> None:
        """Move to `step` (task 0 unless resuming inside it); with `commit`, the row
        records it before the step's work starts.

        A step with nothing to redo after a crash (SETUP, an empty chain) need not be
        committed: a restart from the previous checkpoint does the same. Skipping those
        commits keeps a small transfer at a few commits instead of one per step.
        """
        t = self.transfer
        if t.step != step:
            t.step = step
            t.task_number = 0
        self.log = self.log.bind(step=str(step))
        if self.rt.hooks.before_step:
            await self.rt.hooks.before_step(t, step)
        if commit:
            await self.save()

    async def run_step_chain(self, step: Step) -> None:
        """Enter a task step (committed only if it has tasks) and run its chain."""
        chain: list[TaskSpec] = getattr(self.transfer, CHAINS[step])
        await self.enter(step, commit=bool(chain))
        await self.run_chain(step)

    # ------------------------------------------------------------------ tasks

    def task_context(self, error: TransferError | None = None) -> TaskContext:
        t = self.transfer
        paths = self.rt.loaded.paths
        rule = self.rt.loaded.config.rules.get(t.rule)
        folder = str(self.rt.loaded.paths.rule_folder(rule)) if rule else ""
        receive_rule = rule is not None and rule.direction == "receive"
        return TaskContext(
            transfer=t,
            now=self.rt.clock.now,
            timezone=self.rt.loaded.tz,
            local_host=self.rt.local_host,
            remote_host=t.requested if t.is_server else t.partner or "",
            in_path=folder if receive_rule else str(paths.data_dir),
            out_path=folder if rule is not None and not receive_rule else str(paths.data_dir),
            work_path=str(self.rt.loaded.paths.rule_tmp_folder(rule)) if rule else "",
            home_path=str(paths.home),
            rule_folder=folder,
            error=error,
            exec_timeout=self.rt.loaded.config.daemon.exec_timeout,
            create_transfer=self.rt.create_transfer,
            log=self.log,
        )

    async def run_chain(self, step: Step) -> None:
        """Run the chain of `step` from `task_number`, committing after each task."""
        t = self.transfer
        chain: list[TaskSpec] = getattr(t, CHAINS[step])
        while t.task_number < len(chain):
            index = t.task_number
            spec = chain[index]
            if self.rt.hooks.before_task:
                await self.rt.hooks.before_task(t, step, index)
            await self.run_task(spec, index, self.task_context())
            t.task_number = index + 1
            await self.save()

    async def run_task(self, spec: TaskSpec, index: int, ctx: TaskContext) -> None:
        cls = task_class(spec.type)
        if cls is None:
            raise TaskError(f"task #{index} ({spec.type}): unknown task type")
        task_log = self.log.bind(task=spec.type, task_number=index)
        ctx.log = task_log
        ok: bool | None = None  # None: stopped from outside, neither success nor failure
        try:
            await cls(dict(spec.args)).run(ctx)
            ok = True
        except TaskWarning as warning:
            ok = True
            task_log.warning("task warning", message=str(warning))
            if self.transfer.error_code == ErrorCode.TeOk:
                self.transfer.error_code = ErrorCode.TeWarning
                self.transfer.error_msg = f"task #{index} ({spec.type}): {warning}"
            return
        except TransferError as exc:
            ok = False
            exc.message = f"task #{index} ({spec.type}) failed: {exc.message}"
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ok = False
            task_log.exception("task crashed")
            raise TaskError(f"task #{index} ({spec.type}) crashed: {exc!r}") from exc
        finally:
            if ok is not None:
                self.rt.observer.task_ran(spec.type, ok)
        task_log.info("task done")

    # ------------------------------------------------------------------ ends

    def stopped_error(self) -> TransferError:
        """What a protocol call on a stopped transfer raises."""
        _, code, message = _STOPPED[self.stop_reason or StopReason.SHUTDOWN]
        return TransferError(code, message)

    async def fail(self, error: TransferError) -> None:
        """First error wins; run the error chain; end in ERROR at the failing step."""
        t = self.transfer
        if t.error_code in (ErrorCode.TeOk, ErrorCode.TeWarning):
            t.error_code, t.error_msg = error.code, error.message
            t.error_step = t.step
        self.log.warning("transfer failed", error_code=str(error.code), error=error.message)
        await self.close_files()
        failed_step, failed_task = t.error_step, t.task_number
        t.step, t.task_number = Step.ERROR_TASKS, 0
        with contextlib.suppress(Exception):
            await self.save()
        for index, spec in enumerate(t.error_tasks):
            try:
                await self.run_task(spec, index, self.task_context(error))
            except TransferError as exc:  # never hides the first error
                self.log.error("error task failed", error=exc.message)
                t.error_msg += f"; error task #{index} ({spec.type}) failed"
        t.step, t.task_number = failed_step, failed_task if failed_step in CHAINS else 0
        t.status = Status.ERROR
        t.stop = self.rt.clock.now()
        await self.save()

    async def end_stopped(self, reason: StopReason) -> None:
        """The run was stopped from outside: record why, keeping the durable state."""
        t = self.transfer
        await self.close_files()
        status, code, message = _STOPPED[reason]
        t.status, t.error_code, t.error_msg = status, code, message
        t.stop = self.rt.clock.now()
        if reason is StopReason.CANCEL and t.tmp_filepath and not t.is_send:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.unlink, t.tmp_filepath)
        self.log.info("transfer stopped", status=str(status))
        await self.save()

    async def close_files(self) -> None:
        """Close the data files; a receive's durable length becomes its progress."""
        if self.receiving is not None:
            receiving, self.receiving = self.receiving, None
            await receiving.close()
            self.transfer.progress = max(self.transfer.progress, receiving.durable)
        if self.sending is not None:
            sending, self.sending = self.sending, None
            await sending.close()
        self.stop_progress()
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving

    async def finalize(self) -> None:
        t = self.transfer
        await self.enter(Step.FINALIZATION, commit=False)  # DONE is its one commit
        t.status = Status.DONE
        t.step = Step.NONE
        t.task_number = 0
        t.stop = self.rt.clock.now()
        await self.save()
        self.log.info("transfer done", size=t.filesize, sha256=t.sha256)

    # ------------------------------------------------------------------ data

    def beneath(self, path: str) -> Beneath:
        """`path` (one of the row's) as reached from its rule's folder: no link below
        that folder is ever followed."""
        rule = self.rt.loaded.config.rules.get(self.transfer.rule)
        paths = self.rt.loaded.paths
        return Beneath.of(paths.rule_folder(rule) if rule else paths.data_dir, path)

    async def open_receive(self) -> ReceiveFile:
        """Open the temp file at the durable progress (an earlier attempt's bytes kept)."""
        t = self.transfer
        self.receiving = await ReceiveFile.open(
            self.beneath(t.tmp_filepath), t.progress, self.note_progress, self.rt.progress_interval
        )
        return self.receiving

    async def open_send(self, offset: int) -> SendFile:
        t = self.transfer
        self.sending = await SendFile.open(
            self.beneath(t.local_filepath), offset, self.note_progress
        )
        t.filesize = self.sending.size
        return self.sending

    async def complete_receive(self, expected_sha256: str | None = None) -> None:
        """End of DATA for a receive: size and checksum checked, fsync, atomic rename
        into the rule's folder (collision policy), then POST TASKS, in one commit."""
        t = self.transfer
        receiving = self.receiving
        if receiving is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        policy = self.policy()
        tmp, final = self.beneath(t.tmp_filepath), self.beneath(t.local_filepath)

        def land(size: int, sha: str) -> Beneath:
            if t.filesize >= 0 and size != t.filesize:
                raise TransferError(
                    ErrorCode.TeIntegrity, f"received {size} bytes, {t.filesize} announced"
                )
            if expected_sha256 and expected_sha256.lower() != sha:
                raise TransferError(ErrorCode.TeIntegrity, "SHA-256 of the data does not match")
            return place(tmp, final, policy)

        sha, size, landed = await receiving.complete(land)
        await self.close_files()
        t.local_filepath = str(landed.path)
        t.progress = t.filesize = size
        t.sha256 = sha
        # Committed whatever follows: the row must say where the file landed before
        # anything else happens to it.
        await self.enter(Step.POST_TASKS)

    async def complete_send(self) -> None:
        t = self.transfer
        sending = self.sending
        if sending is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        t.sha256 = await sending.digest()
        t.progress = t.filesize = sending.size
        await self.close_files()
        await self.enter(Step.POST_TASKS, commit=bool(t.post_tasks))

    def policy(self) -> CollisionPolicy:
        rule = self.rt.loaded.config.rules.get(self.transfer.rule)
        return rule.on_collision if rule else "rename"

    async def data_hook(self, offset: int) -> None:
        if self.rt.hooks.during_data:
            await self.rt.hooks.during_data(self.transfer, offset)


class _Sink:
    """The DataSink a protocol client receives into."""

    def __init__(self, run: Run, receiving: ReceiveFile) -> None:
        self.run, self.receiving = run, receiving
        self.transfer_info = run.transfer.transfer_info

    async def write(self, offset: int, data: bytes) -> None:
        await self.receiving.write(offset, data)
        await self.run.data_hook(offset + len(data))

    def set_size(self, size: int) -> None:
        self.run.transfer.filesize = size


class _Source:
    """The DataSource a protocol client sends from."""

    def __init__(self, run: Run, sending: SendFile) -> None:
        self.run, self.sending, self.size = run, sending, sending.size
        self.transfer_info = run.transfer.transfer_info

    async def read(self, offset: int, length: int) -> bytes:
        data = await self.sending.read(offset, length)
        await self.run.data_hook(offset + len(data))
        return data

    def confirm(self, offset: int) -> None:
        self.sending.confirm(offset)


class Engine:
    """Runs transfers and knows which are running, so they can be stopped."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.active: dict[int, Run] = {}
        self.shutting_down = False

    def new_run(self, transfer: Transfer) -> Run:
        if transfer.id is None:
            raise TransferError(ErrorCode.TeInternal, "transfer has no id")
        run = Run(self, transfer)
        self.active[transfer.id] = run
        self.rt.observer.run_started(transfer)
        return run

    def release(self, run: Run) -> None:
        run.stop_progress()
        for slot in run.slots:
            slot.release()
        if run.transfer.id is not None and self.active.get(run.transfer.id) is run:
            del self.active[run.transfer.id]
            self.rt.observer.run_ended(run.transfer)
        run.done.set()

    async def run_client(self, transfer: Transfer) -> None:
        """Drive a client transfer to an end state (the scheduler's runner)."""
        if transfer.id is not None:
            # The row is the truth: it may have been paused or cancelled since it was
            # picked, in the moment before this run started.
            fresh = await self.rt.store.get_transfer(transfer.id)
            if fresh is None or fresh.status != Status.RUNNING:
                return
            transfer = fresh
        run = self.new_run(transfer)
        run.task = asyncio.current_task()
        try:
            await self._client_lifecycle(run)
        except asyncio.CancelledError:
            if run.stop_reason is None:
                raise
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
            await run.end_stopped(run.stop_reason)
        finally:
            self.release(run)

    async def _client_lifecycle(self, run: Run) -> None:
        t = run.transfer
        resume_at = t.step if t.step in ORDER else Step.SETUP
        start = ORDER.index(resume_at)
        t.status = Status.RUNNING
        t.error_code, t.error_msg, t.error_step = ErrorCode.TeOk, "", Step.NONE
        t.start = t.start or self.rt.clock.now()
        try:
            if start <= ORDER.index(Step.SETUP):
                await run.enter(Step.SETUP, commit=False)  # the claim recorded RUNNING
            client = await self.rt.clients.connect(t)
            if start <= ORDER.index(Step.PRE_TASKS):
                await run.run_step_chain(Step.PRE_TASKS)
            if start <= ORDER.index(Step.DATA):
                await run.enter(Step.DATA)
                if t.is_send:
                    offset = 0
                    if t.progress > 0:
                        offset = await client.sent_offset(t.remote_filepath, t.progress)
                    sending = await run.open_send(offset)
                    t.progress = offset
                    run.log.info("data starts", offset=offset, size=sending.size)
                    await client.send(_Source(run, sending), t.remote_filepath, offset)
                    await run.complete_send()
                else:
                    receiving = await run.open_receive()
                    run.log.info("data starts", offset=t.progress)
                    await client.receive(_Sink(run, receiving), t.remote_filepath, t.progress)
                    await run.complete_receive()
            if start <= ORDER.index(Step.POST_TASKS):
                await run.enter(Step.POST_TASKS, commit=False)  # done by complete_*
                await run.run_chain(Step.POST_TASKS)
            await run.finalize()
        except TransferError as exc:
            await run.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            run.log.exception("internal error")
            await run.fail(TransferError(ErrorCode.TeInternal, f"internal error: {exc!r}"))

    async def stop(self, transfer_id: int, reason: StopReason, timeout: float = 30.0) -> bool:
        """Stop a running transfer; returns once its row records the stop (False when
        it was not running here)."""
        run = self.active.get(transfer_id)
        if run is None:
            return False
        if run.stop_reason is None:
            run.stop_reason = reason
            if run.task is not None:
                run.task.cancel()
            else:  # a server transfer: its session learns on its next call
                await run.end_stopped(reason)
                self.release(run)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await run.done.wait()
        return True

    async def stop_all(self, timeout: float) -> None:
        """On shutdown: every running transfer ends INTERRUPTED with its state saved."""
        self.shutting_down = True
        ids = list(self.active)
        if ids:
            await asyncio.gather(
                *(self.stop(i, StopReason.SHUTDOWN, timeout) for i in ids),
                return_exceptions=True,
            )
