"""The engine: starts runs of the one driver (gatewayd.pipeline.run), knows which are
running, and stops them (pause, cancel, shutdown).

It knows no protocol: a client run's bytes move through the `ProtocolClient` of the
client pool, a server run's through the handle its protocol server holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from gatewayd import lifecycle
from gatewayd.clock import Clock
from gatewayd.errors import TransferError
from gatewayd.lifecycle import Event, needs_partner
from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.pipeline.data import ClientData, Partnerless
from gatewayd.pipeline.files import find_placed
from gatewayd.pipeline.run import DataStep, Run, StopReason, beneath, collision_policy
from gatewayd.tasks.base import TransferCreator

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.crypto.keyring import Keyring
    from gatewayd.pipeline.clients import ClientPool
    from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.pipeline")

__all__ = ["Engine", "Hooks", "Observer", "Runtime", "StopReason"]


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
    # The gateway's OpenPGP keyring, for the tasks that encrypt, sign, decrypt, verify.
    keyring: Keyring | None = None
    # A transfer as the API shows it (for NOTIFY); the composition supplies it.
    transfer_json: Callable[[Transfer], dict[str, Any]] | None = None

    @property
    def progress_interval(self) -> float:
        return self.loaded.config.daemon.progress_interval


class Engine:
    """Runs transfers and knows which are running, so they can be stopped."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.active: dict[int, Run] = {}
        self.shutting_down = False

    def start(self, transfer: Transfer, data: DataStep) -> Run:
        """Start a run of `transfer` (its row committed RUNNING) in a task of its own."""
        if transfer.id is None:
            raise TransferError(ErrorCode.TeInternal, "transfer has no id")
        if self.shutting_down:
            raise TransferError(ErrorCode.TeShuttingDown, "the gateway is shutting down")
        run = Run(self, transfer, data)
        self.active[transfer.id] = run
        self.rt.observer.run_started(transfer)
        run.task = asyncio.create_task(run.drive(), name=f"transfer-{transfer.id}")
        return run

    def release(self, run: Run) -> None:
        """Called by the driver when a run ends, whatever the end."""
        run.stop_progress()
        for slot in run.slots:
            slot.release()
        if run.transfer.id is not None and self.active.get(run.transfer.id) is run:
            del self.active[run.transfer.id]
            self.rt.observer.run_ended(run.transfer)
        run.done.set()

    async def run_planned(self, transfer: Transfer) -> None:
        """Drive a transfer the scheduler launched (a client transfer, or a server one
        that needs no partner) to an end state."""
        if transfer.id is not None:
            # The row is the truth: it may have been paused or cancelled since it was
            # picked, in the moment before this run started.
            fresh = await self.rt.store.get_transfer(transfer.id)
            if fresh is None or fresh.status != Status.RUNNING:
                return
            transfer = fresh
            if self.shutting_down:
                # Launched just as the gateway stops: interrupted, resumed at the next
                # start, never left RUNNING nor failed.
                lifecycle.apply(transfer, Event.SHUTDOWN)
                transfer.error_code = ErrorCode.TeShuttingDown
                transfer.error_msg = "gateway shutting down"
                await self.rt.store.save_transfer(transfer)
                return
        if transfer.step != Step.ERROR_TASKS:  # a cut error chain keeps its error
            transfer.error_code, transfer.error_msg = ErrorCode.TeOk, ""
            transfer.error_step = Step.NONE
        transfer.start = transfer.start or self.rt.clock.now()
        data: DataStep = Partnerless() if transfer.is_server else ClientData(self.rt.clients)
        run = self.start(transfer, data)
        await run.done.wait()

    async def goes_alone(self, transfer: Transfer) -> bool:
        """Whether the gateway can take `transfer` further without its partner: any
        client transfer; a server one whose data is complete, or whose received file a
        crash left placed but not recorded."""
        if not needs_partner(transfer):
            return True
        if transfer.is_send or transfer.step != Step.DATA or not transfer.tmp_filepath:
            return False
        loaded = self.rt.loaded
        tmp = beneath(loaded, transfer, transfer.tmp_filepath)
        final = beneath(loaded, transfer, transfer.local_filepath)
        policy = collision_policy(loaded, transfer)
        try:
            return await asyncio.to_thread(find_placed, tmp, final, policy) is not None
        except (OSError, TransferError):
            return False

    async def stop(self, transfer_id: int, reason: StopReason, timeout: float = 30.0) -> bool:
        """Stop a running transfer; returns once its row records the stop (False when
        it was not running here)."""
        run = self.active.get(transfer_id)
        if run is None:
            return False
        if run.stop_reason is None and not run.done.is_set():
            run.stop_reason = reason
            if run.task is not None:
                run.task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await run.done.wait()
        return True

    async def stop_all(self, timeout: float) -> None:
        """On shutdown: runs that a partner waits for (its close arrived) may finish
        within `timeout`; every other run ends INTERRUPTED at once with its state saved,
        and so do those still going at the deadline."""
        self.shutting_down = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiting = [r for r in self.active.values() if not r.completing]
        await self._stop_runs(waiting, timeout)
        completing = [r for r in self.active.values() if not r.done.is_set()]
        if completing:
            log.info("letting completing transfers finish", count=len(completing))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await asyncio.gather(*(r.done.wait() for r in completing))
        await self._stop_runs(list(self.active.values()), max(1.0, deadline - loop.time()))

    async def _stop_runs(self, runs: list[Run], timeout: float) -> None:
        if runs:
            await asyncio.gather(
                *(self.stop(r.transfer.id or 0, StopReason.SHUTDOWN, timeout) for r in runs),
                return_exceptions=True,
            )
