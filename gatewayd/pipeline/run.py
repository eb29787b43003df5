"""One run of one transfer, through the one driver of every transfer.

    SETUP -> PRE TASKS -> DATA -> POST TASKS -> FINALIZATION -> DONE
      (any failure)                    -> ERROR TASKS -> ERROR

`Run.drive()` walks the steps of `gatewayd.lifecycle.STEPS` from the row's step, for a
client or a server transfer, a send or a receive alike; only the DATA step differs, and
it is a `DataStep` (gatewayd.pipeline.data): a protocol client moving the bytes, or a
partner's session resolving it through its handle. The driver alone ends a run: first
error wins, the error chain, a stop (pause, cancel, shutdown), the release of its places.

The row is the checkpoint (the commit rule): a step with work to redo after a crash is
committed before that work starts (a chain with tasks, DATA, the placing of a received
file), `task_number` after each task, `progress` (throttled) after each fsync. A step
with nothing to redo (SETUP, an empty chain) is not committed on its own: a restart
from the previous checkpoint does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from gatewayd import crashpoints, lifecycle, safepath
from gatewayd.errors import TaskError, TaskWarning, TransferError
from gatewayd.lifecycle import CHAINS, STEPS, Event
from gatewayd.model import ErrorCode, Step, TaskSpec, Transfer
from gatewayd.outbound.context import Outbound
from gatewayd.pipeline.datafile import ReceiveFile, SendFile
from gatewayd.pipeline.files import CollisionPolicy, drop_temp, find_placed, place
from gatewayd.safepath import Beneath
from gatewayd.tasks.base import RemoteFiles, TaskContext, task_class

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.pipeline.engine import Engine
    from gatewayd.pipeline.limits import Slot

log = structlog.get_logger("gatewayd.pipeline")
T = TypeVar("T")


class StopReason(StrEnum):
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


# How a stop ends a run: the event of the lifecycle, the error code and message kept.
STOPPED: dict[StopReason, tuple[Event, ErrorCode, str]] = {
    StopReason.PAUSE: (Event.PAUSE, ErrorCode.TeStopped, "transfer paused"),
    StopReason.CANCEL: (Event.CANCEL, ErrorCode.TeCanceled, "transfer cancelled"),
    StopReason.SHUTDOWN: (Event.SHUTDOWN, ErrorCode.TeShuttingDown, "gateway shutting down"),
}


# A row with one of these codes has no failure recorded.
_NO_ERROR = (ErrorCode.TeOk, ErrorCode.TeWarning)


def stopped_error(reason: StopReason | None) -> TransferError:
    """What a protocol call on a stopped transfer raises."""
    _, code, message = STOPPED[reason or StopReason.SHUTDOWN]
    return TransferError(code, message)


class DataStep(Protocol):
    """How the bytes of a run move: what makes a client run and a server run differ."""

    async def setup(self, run: Run) -> None:
        """SETUP: what must work before any task runs (a client connects)."""

    async def transfer(self, run: Run) -> None:
        """DATA: move the bytes, and end with `run.complete_receive()` or
        `run.complete_send()`; raise TransferError for a failure."""

    def release(self) -> None:
        """The run ended: give back what the data step held (a connection)."""


async def uncancellable(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile (then the
    cancellation is raised after it): for the few steps that must never stop halfway,
    such as placing a file and committing where it landed."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


class Run:
    """One execution of one transfer."""

    def __init__(self, engine: Engine, transfer: Transfer, data: DataStep) -> None:
        self.engine = engine
        self.rt = engine.rt
        self.transfer = transfer
        self.data = data
        self.stop_reason: StopReason | None = None
        self.task: asyncio.Task[None] | None = None
        self.receiving: ReceiveFile | None = None
        self.sending: SendFile | None = None
        self.done = asyncio.Event()
        # What the run ended with when it failed (the first error).
        self.error: TransferError | None = None
        # A partner is waiting for this run to finish (its close arrived): a shutdown
        # lets it end within its timeout instead of interrupting it.
        self.completing = False
        # Places held in the gateway's limits, given back when the run ends.
        self.slots: list[Slot] = []
        # DATA was committed by the row's insertion (a new server transfer without pre
        # tasks): entering it needs no commit of its own.
        self.inserted_at_data = False
        # The commit of the row's insertion when the open did not wait for it: awaited
        # before the first save and before a received file is placed, so that no file
        # lands that no row records.
        self.recorded: Awaitable[None] | None = None
        # The run started past DATA (a restart): leftovers of the last run may remain.
        self.resumed_after_data = False
        # DONE was committed with the placing (no post task to run): the steps left
        # have nothing to do.
        self.finished = False
        # The task the row says is next when the run starts: it may have run already
        # (a crash between its work and the commit of its end).
        self.resumed_at = (transfer.step, transfer.task_number) if transfer.step in CHAINS else None
        self._last_save = time.monotonic()
        self._saved_progress = transfer.progress
        self._saving: asyncio.Task[None] | None = None
        self._progress_timer: asyncio.TimerHandle | None = None
        self.log = log.bind(transfer_id=transfer.id, rule=transfer.rule)

    # ------------------------------------------------------------------ the driver

    async def drive(self) -> None:
        """Walk the steps from the row's step to an end state; never raises (but a
        cancellation that is not a stop)."""
        try:
            try:
                t = self.transfer
                if t.step == Step.ERROR_TASKS and t.error_code not in _NO_ERROR:
                    await self.resume_error_chain()
                    return
                start = STEPS.index(t.step) if t.step in STEPS else 0
                self.resumed_after_data = start > STEPS.index(Step.DATA)
                for step in STEPS[start:]:
                    if self.finished:
                        break
                    await _STEP_WORK[step](self)
            except TransferError as exc:
                await self.fail(exc)
            except asyncio.CancelledError:
                if self.stop_reason is None:
                    raise
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()
                if not self.finished:  # DONE is committed: a stop comes too late for it
                    await self.end_stopped(self.stop_reason)
            except Exception as exc:
                self.log.exception("internal error")
                await self.fail(TransferError(ErrorCode.TeInternal, f"internal error: {exc!r}"))
        finally:
            self.data.release()
            self.engine.release(self)

    async def _setup(self) -> None:
        await self.enter(Step.SETUP, commit=False)  # RUNNING was committed by the launch
        await self.data.setup(self)

    async def _pre_tasks(self) -> None:
        await self.run_step_chain(Step.PRE_TASKS)

    async def _data(self) -> None:
        await self.enter(Step.DATA, commit=not self.inserted_at_data)
        await self.data.transfer(self)

    async def _post_tasks(self) -> None:
        await self.enter(Step.POST_TASKS, commit=False)  # committed by complete_*
        t = self.transfer
        if self.resumed_after_data and not t.is_send and t.tmp_filepath:
            # A crash may have come between the commit of the placing and the removal
            # of the temp name: a second name of the placed file, never the only one.
            await asyncio.to_thread(drop_temp, self.beneath(t.tmp_filepath))
        await self.run_chain(Step.POST_TASKS)

    async def _finalization(self) -> None:
        await self.finalize()

    # ------------------------------------------------------------------ persistence

    async def wait_recorded(self) -> None:
        """Wait for the row's insertion (raising its failure)."""
        if self.recorded is not None:
            recorded, self.recorded = self.recorded, None
            await recorded

    async def save(self) -> None:
        await self.wait_recorded()
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
            await self.wait_recorded()
            await self.rt.store.save_transfer(self.transfer)
        except Exception:  # the next step change will try again and report it
            self.log.exception("progress save failed")

    async def enter(self, step: Step, *, commit: bool = True) -> None:
        """Move to `step` (task 0 unless resuming inside it); with `commit`, the row
        records it before the step's work starts."""
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
        folder = str(paths.rule_folder(rule)) if rule else ""
        receive_rule = rule is not None and rule.direction == "receive"
        return TaskContext(
            transfer=t,
            now=self.rt.clock.now,
            timezone=self.rt.loaded.tz,
            local_host=self.rt.local_host,
            remote_host=t.requested if t.is_server else t.partner or "",
            in_path=folder if receive_rule else str(paths.data_dir),
            out_path=folder if rule is not None and not receive_rule else str(paths.data_dir),
            work_path=str(paths.rule_tmp_folder(rule)) if rule else "",
            home_path=str(paths.home),
            rule_folder=folder,
            error=error,
            exec_timeout=self.rt.loaded.config.daemon.exec_timeout,
            create_transfer=self.rt.create_transfer,
            log=self.log,
            remote=None if t.is_server else functools.partial(self._partner, t),
            keyring=self.rt.keyring,
            outbound=outbound(self.rt.loaded, self.rt.transfer_json),
        )

    @contextlib.asynccontextmanager
    async def _partner(self, t: Transfer) -> AsyncIterator[RemoteFiles]:
        """The partner's client, for the REMOTE* tasks of a client transfer."""
        lease = await self.rt.clients.acquire(t)
        try:
            yield lease.client
        finally:
            lease.release()

    async def run_chain(self, step: Step) -> None:
        """Run the chain of `step` from `task_number`, committing after each task."""
        t = self.transfer
        chain: list[TaskSpec] = getattr(t, CHAINS[step])
        while t.task_number < len(chain):
            index = t.task_number
            if self.rt.hooks.before_task:
                await self.rt.hooks.before_task(t, step, index)
            await self.run_task(chain[index], index, self.task_context())
            t.task_number = index + 1
            await self.save()

    async def run_task(self, spec: TaskSpec, index: int, ctx: TaskContext) -> None:
        cls = task_class(spec.type)
        if cls is None:
            raise TaskError(f"task #{index} ({spec.type}): unknown task type")
        task_log = self.log.bind(task=spec.type, task_number=index)
        ctx.log = task_log
        ctx.step, ctx.task_number = str(self.transfer.step), index
        ctx.rerun = (self.transfer.step, index) == self.resumed_at
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
        return stopped_error(self.stop_reason)

    async def fail(self, error: TransferError) -> None:
        """First error wins; run the error chain; end in ERROR at the failing step."""
        t = self.transfer
        if self.finished:  # DONE is committed: what failed after it changes nothing
            self.log.warning("error after the end ignored", error=error.message)
            return
        if t.error_code in (ErrorCode.TeOk, ErrorCode.TeWarning):
            t.error_code, t.error_msg = error.code, error.message
            t.error_step = t.step
        self.error = TransferError(t.error_code, t.error_msg)
        self.log.warning("transfer failed", error_code=str(error.code), error=error.message)
        await self.close_files()
        failed_step, failed_task = t.error_step, t.task_number
        t.step, t.task_number = Step.ERROR_TASKS, 0
        with contextlib.suppress(Exception):
            await self.save()
        await self.run_error_chain(error, failed_step, failed_task)

    def error_chain(self) -> list[TaskSpec]:
        """The rule's error tasks, then the daemon's `error_tasks` (the gateway-wide
        error chain), numbered after them: their notices' keys differ from the rule's."""
        daemon = self.rt.loaded.config.daemon
        return [*self.transfer.error_tasks, *(task.spec() for task in daemon.error_tasks)]

    async def run_error_chain(
        self, error: TransferError, failed_step: Step, failed_task: int
    ) -> None:
        """Run the error chain from `task_number`, committing after each task (a crash
        resumes it at the next one: `resume_error_chain`), then end in ERROR at the
        failing step. A task that fails is logged and named in the transfer's message;
        the first error stays."""
        t = self.transfer
        chain = self.error_chain()
        own = len(t.error_tasks)
        while t.task_number < len(chain):
            index = t.task_number
            spec = chain[index]
            try:
                await self.run_task(spec, index, self.task_context(error))
            except TransferError as exc:  # never hides the first error
                where = "error task" if index < own else "gateway error task"
                self.log.error(f"{where} failed", error=exc.message)
                t.error_msg += f"; {where} #{index} ({spec.type}) failed"
            t.task_number = index + 1
            with contextlib.suppress(Exception):
                await self.save()
        t.step, t.task_number = failed_step, failed_task if failed_step in CHAINS else 0
        lifecycle.apply(t, Event.FAIL)
        t.stop = self.rt.clock.now()
        await self.save()

    async def resume_error_chain(self) -> None:
        """A run that starts in ERROR TASKS (a crash in the error chain): the rest of
        the chain, from the task that was cut (it may run twice: notices are
        at-least-once), then ERROR with the error recorded. The failing chain's task
        number is not kept through the crash: a later resume starts that chain over."""
        t = self.transfer
        self.error = TransferError(t.error_code, t.error_msg)
        self.log.info("resuming the error chain", task_number=t.task_number)
        await self.run_error_chain(self.error, t.error_step, 0)

    async def end_stopped(self, reason: StopReason) -> None:
        """The run was stopped from outside: record why, keeping the durable state."""
        t = self.transfer
        await self.close_files()
        event, code, message = STOPPED[reason]
        lifecycle.apply(t, event)
        t.error_code, t.error_msg = code, message
        t.stop = self.rt.clock.now()
        if event is Event.CANCEL and t.tmp_filepath and not t.is_send:
            await asyncio.to_thread(_remove_temp, self.beneath(t.tmp_filepath))
        self.log.info("transfer stopped", status=str(t.status))
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
        await self.enter(Step.FINALIZATION, commit=False)  # DONE is its one commit
        await self._finish()

    async def _finish(self) -> None:
        t = self.transfer
        lifecycle.apply(t, Event.FINISH)
        t.step = Step.NONE
        t.task_number = 0
        t.stop = self.rt.clock.now()
        # To its end: a stop arriving meanwhile would find DONE in the row's object
        # with its commit still in flight.
        await uncancellable(self.save())
        self.finished = True
        self.log.info(
            "transfer done",
            file=t.local_filepath,
            who=t.account or t.partner or "",
            size=t.filesize,
            sha256=t.sha256,
        )

    # ------------------------------------------------------------------ data files

    def beneath(self, path: str) -> Beneath:
        return beneath(self.rt.loaded, self.transfer, path)

    def policy(self) -> CollisionPolicy:
        return collision_policy(self.rt.loaded, self.transfer)

    async def open_receive(self) -> ReceiveFile:
        """Open the temp file at the durable progress (an earlier attempt's bytes kept,
        beyond it cut)."""
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

    async def was_placed(self) -> bool:
        """A receive found at DATA whose file a crash left placed but not recorded (the
        temp file has a second name under the final one): record the placing, with its
        size checked against the row and its SHA-256 computed, and go on to POST TASKS.
        False when the file was not placed (its data must come again)."""
        t = self.transfer
        tmp, final = self.beneath(t.tmp_filepath), self.beneath(t.local_filepath)
        landed = await asyncio.to_thread(find_placed, tmp, final, self.policy())
        if landed is None:
            return False
        sha, size = await asyncio.to_thread(_digest, landed)
        if t.filesize >= 0 and size != t.filesize:
            raise TransferError(
                ErrorCode.TeIntegrity, f"placed {size} bytes, {t.filesize} announced"
            )
        self.log.info("placed file found after a crash", path=str(landed.path), size=size)
        await self._record_placed(landed, size, sha, tmp)
        return True

    async def complete_receive(self, expected_sha256: str | None = None) -> None:
        """End of DATA for a receive: size and checksum checked, fsync, atomic placing
        in the rule's folder (collision policy), and POST TASKS committed with where the
        file landed. The placing and its commit are never stopped halfway."""
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
            landed = place(tmp, final, policy)
            crashpoints.reached(crashpoints.AFTER_PLACE)
            return landed

        async def land_and_record() -> None:
            await self.wait_recorded()
            sha, size, landed = await receiving.complete(land)
            await self.close_files()
            await self._record_placed(landed, size, sha, tmp)

        await uncancellable(land_and_record())

    async def _record_placed(self, landed: Beneath, size: int, sha: str, tmp: Beneath) -> None:
        t = self.transfer
        t.local_filepath = str(landed.path)
        t.progress = t.filesize = size
        t.sha256 = sha
        # Committed whatever follows: the row must say where the file landed before
        # anything else happens to it; only then does the temp name go.
        if t.post_tasks:
            await self.enter(Step.POST_TASKS)
        else:
            # Nothing runs between the placing and the end: one commit records both
            # (a small file's close waits for one commit instead of two). A crash
            # before the temp name goes leaves a second name of a DONE transfer's
            # file, which the next start removes (gatewayd.pipeline.leftovers).
            await self.enter(Step.POST_TASKS, commit=False)
            await self.enter(Step.FINALIZATION, commit=False)
            await self._finish()
            crashpoints.reached(crashpoints.AFTER_DONE)
            try:
                await asyncio.to_thread(drop_temp, tmp)
            except OSError as exc:  # DONE stands; the next start removes the name
                self.log.warning("temp name of a placed file kept", error=str(exc))
            return
        await asyncio.to_thread(drop_temp, tmp)

    async def complete_send(self) -> None:
        t = self.transfer
        sending = self.sending
        if sending is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        t.sha256 = await sending.digest()
        t.progress = t.filesize = sending.size
        await self.close_files()
        await self.enter(Step.POST_TASKS, commit=bool(t.post_tasks))

    async def data_hook(self, offset: int) -> None:
        if self.rt.hooks.during_data:
            await self.rt.hooks.during_data(self.transfer, offset)


_STEP_WORK: dict[Step, Callable[[Run], Awaitable[None]]] = {
    Step.SETUP: Run._setup,
    Step.PRE_TASKS: Run._pre_tasks,
    Step.DATA: Run._data,
    Step.POST_TASKS: Run._post_tasks,
    Step.FINALIZATION: Run._finalization,
}
assert set(_STEP_WORK) == set(STEPS), "every step of the lifecycle has its work"


def beneath(loaded: LoadedConfig, transfer: Transfer, path: str) -> Beneath:
    """`path` (one of the row's) as reached from its rule's folder: no link below that
    folder is ever followed."""
    rule = loaded.config.rules.get(transfer.rule)
    paths = loaded.paths
    return Beneath.of(paths.rule_folder(rule) if rule else paths.data_dir, path)


def collision_policy(loaded: LoadedConfig, transfer: Transfer) -> CollisionPolicy:
    rule = loaded.config.rules.get(transfer.rule)
    return rule.on_collision if rule else "rename"


def _digest(where: Beneath) -> tuple[str, int]:
    digest = hashlib.sha256()
    fd = safepath.open_file(where, os.O_RDONLY)
    size = 0
    with open(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def outbound(loaded: LoadedConfig, shape: Callable[[Transfer], dict[str, Any]] | None) -> Outbound:
    """What the ICAP, EMAIL and NOTIFY tasks reach, from the current configuration."""
    config = loaded.config
    return Outbound(
        icap=config.icap,
        smtp=config.smtp,
        notify=config.notify,
        home=loaded.paths.home,
        transfer_json=shape or _bare_transfer_json,
    )


def _bare_transfer_json(t: Transfer) -> dict[str, Any]:
    return {"id": t.id, "remoteID": t.remote_id, "rule": t.rule, "status": str(t.status)}


def _remove_temp(where: Beneath) -> None:
    with contextlib.suppress(OSError):
        safepath.unlink(where)
