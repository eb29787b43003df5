"""Runs due transfers within the concurrency limits, and plans automatic attempts.

Due transfers are PLANNED ones: client transfers, and server transfers that the gateway
finishes without their partner after a restart (their data complete).

The scheduler owns when a client transfer runs, never how: it has the store claim due
PLANNED rows (`Store.claim_due`: RUNNING and owned by this node, committed in one
transaction before anything else happens, so that a row is launched once even when
several nodes share the database, and a partner's limit holds across them), hands each
to the runner (the pipeline), and when the runner is done reads the row back to decide
what comes next. A transfer that ended in ERROR with attempts left is
planned again with exponential backoff, keeping its step, task and progress: the next
run resumes it.

The loop does not poll: it sleeps until the next row becomes due or until `wake()` (a
transfer was created or resumed, a runner finished, limits changed), with a safety cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from gatewayd.clock import Clock
from gatewayd.lifecycle import Event, apply
from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import Store, TransferFilter

Runner = Callable[[Transfer], Awaitable[None]]

# Longest sleep without a wake-up: guards against a missed wake() or a clock jump.
SAFETY_CAP = 60.0
# After an unexpected failure of the loop itself (e.g. the database is unavailable).
LOOP_ERROR_BACKOFF = 5.0
# How many due rows a claim reads at a time (it reads on past full partners).
SCAN_BATCH = 256
# Rows read per page when resuming interrupted transfers at start-up.
RESUME_PAGE = 500
# Longest error message recorded for a runner that crashed.
MAX_ERROR_MSG = 1000


class Logger(Protocol):
    """The structlog-style logger the scheduler writes to."""

    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def exception(self, event: str, **kw: Any) -> Any: ...


async def _client_only(transfer: Transfer) -> bool:
    return not transfer.is_server


def due_time(transfer: Transfer) -> datetime | None:
    """When a PLANNED transfer may run: the later of its start (without one, its
    creation) and its next attempt, as the store's `due_transfers` reads it."""
    start = transfer.start if transfer.start is not None else transfer.created
    times = [t for t in (start, transfer.next_attempt) if t is not None]
    return max(times) if times else None


class Scheduler:
    """Launches due client transfers through `runner`, at most `max_transfers` at once
    on this node and at most the partner's limit (`partner_limits[partner]`, else
    `max_per_partner`) per partner, counted across every node of the database. `node`
    names this node: the owner of the rows it claims."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        *,
        max_transfers: int,
        max_per_partner: int,
        partner_limits: Mapping[str, int] | None = None,
        clock: Clock,
        goes_alone: Callable[[Transfer], Awaitable[bool]] | None = None,
        log: Logger | None = None,
        node: str = "local",
    ) -> None:
        self._store = store
        self._node = node
        self._runner = runner
        # Whether an interrupted transfer can resume without its partner (the engine
        # knows); by default only client transfers can.
        self._goes_alone = goes_alone or _client_only
        self._clock = clock
        self._log: Logger = log if log is not None else structlog.get_logger("gatewayd.scheduler")
        self._max_transfers = max_transfers
        self._max_per_partner = max_per_partner
        self._partner_limits: dict[str, int] = dict(partner_limits or {})
        # transfer id -> partner of every runner in progress (claimed rows included).
        self._running: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        # Futures of callers waiting for a state change (wait_idle, wait_settled).
        self._watchers: list[asyncio.Future[None]] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sleeping = False
        self._sleep_until: datetime | None = None
        self._queue_depth = 0

    # ------------------------------------------------------------------ public interface

    @property
    def running(self) -> frozenset[int]:
        """Ids of the transfers whose runner is in progress."""
        return frozenset(self._running)

    @property
    def alive(self) -> bool:
        """Whether the loop is running (started, not stopped, not crashed)."""
        return self._loop_task is not None and not self._loop_task.done()

    def queue_depth(self) -> int:
        """Due transfers not launched (for lack of a slot, here or at their partner), as
        of the loop's last look."""
        return self._queue_depth

    def set_limits(
        self,
        *,
        max_transfers: int,
        max_per_partner: int,
        partner_limits: Mapping[str, int] | None = None,
    ) -> None:
        """Change the limits (configuration reload); running transfers are not touched."""
        self._max_transfers = max_transfers
        self._max_per_partner = max_per_partner
        self._partner_limits = dict(partner_limits or {})
        self.wake()

    async def start(self) -> None:
        """Plan the INTERRUPTED client transfers to resume at once, then start the loop."""
        if self._loop_task is not None:
            raise RuntimeError("scheduler already started")
        await self._resume_interrupted()
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop launching transfers. Runners in progress go on (the caller stops them)."""
        self._stopping = True
        self.wake()
        if self._loop_task is not None:
            await self._loop_task
        self._changed()

    def wake(self) -> None:
        """Look at the store now: a transfer was created or resumed, or a slot freed."""
        self._wake.set()

    async def wait_idle(self) -> None:
        """Until no runner is in progress (for tests and orderly shutdown)."""
        await self._wait_for(lambda: not self._running)

    async def wait_settled(self) -> None:
        """Until the loop has handled every wake-up and passed deadline and is asleep
        (for tests: after this, nothing more launches until time moves or a wake-up)."""
        await self._wait_for(self._is_settled)

    # ------------------------------------------------------------------ the loop

    def _is_settled(self) -> bool:
        if self._stopping:
            return self._loop_task is None or self._loop_task.done()
        return (
            self._sleeping
            and not self._wake.is_set()
            and (self._sleep_until is None or self._clock.now() < self._sleep_until)
        )

    def _changed(self) -> None:
        """Let every waiter re-check its condition."""
        watchers, self._watchers = self._watchers, []
        for future in watchers:
            if not future.done():
                future.set_result(None)

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(future)
            await future

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                timeout = await self._look()
            except Exception:
                self._log.exception("scheduler pass failed")
                timeout = LOOP_ERROR_BACKOFF
            if self._stopping:
                break
            self._sleep_until = self._clock.now() + timedelta(seconds=timeout)
            self._sleeping = True
            self._changed()
            try:
                await self._clock.wait(self._wake, timeout)
            finally:
                self._sleeping = False
        self._changed()

    async def _look(self) -> float:
        """Launch what is due and fits the limits; return how long to sleep."""
        now = self._clock.now()
        blocked = await self._launch_due(now)
        next_due = await self._store.next_due_time()
        if next_due is not None and next_due <= now:
            # The earliest due row is one the limits held back (a finished runner will
            # wake us); look for the first row that becomes due later.
            next_due = await self._next_due_after(now) if blocked else None
        if next_due is None:
            return SAFETY_CAP
        # A row that became due during this look gives 0: look again at once.
        seconds = (next_due - self._clock.now()).total_seconds()
        return min(max(seconds, 0.0), SAFETY_CAP)

    async def _next_due_after(self, now: datetime) -> datetime | None:
        return await self._store.next_due_after(now)

    async def _launch_due(self, now: datetime) -> int:
        """Claim and launch the due rows that fit; returns how many due rows are left."""
        free = self._max_transfers - len(self._running)
        if free > 0 and not self._stopping:
            claimed = await self._store.claim_due(
                now,
                SCAN_BATCH,
                self._node,
                free,
                self._partner_limits,
                self._max_per_partner,
            )
            # Claimed rows are RUNNING and ours: launch them all, even when a stop came
            # meanwhile (the engine's stop interrupts them with their state saved).
            for transfer in claimed:
                self._launch(transfer)
        blocked = await self._store.count_due(now)
        self._queue_depth = blocked
        return blocked

    def _launch(self, transfer: Transfer) -> None:
        assert transfer.id is not None
        transfer_id, partner = transfer.id, transfer.partner or ""
        self._running[transfer_id] = partner
        self._log.info("transfer launched", transfer_id=transfer_id, partner=partner)
        task = asyncio.create_task(self._run(transfer), name=f"transfer-{transfer_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self, transfer_id: int) -> None:
        self._running.pop(transfer_id, None)

    # ------------------------------------------------------------------ after a run

    async def _run(self, transfer: Transfer) -> None:
        assert transfer.id is not None
        transfer_id = transfer.id
        failure: Exception | None = None
        try:
            try:
                await self._runner(transfer)
            except Exception as exc:
                failure = exc
                self._log.exception("transfer runner failed", transfer_id=transfer_id)
            try:
                await self._after_run(transfer_id, failure)
            except Exception:
                self._log.exception("cannot record the end of a run", transfer_id=transfer_id)
        finally:
            # Also on cancellation (shutdown): the row stays as the runner left it, and
            # RUNNING rows become INTERRUPTED at the next start-up.
            self._release(transfer_id)
            self.wake()
            self._changed()

    async def _after_run(self, transfer_id: int, failure: Exception | None) -> None:
        row = await self._store.get_transfer(transfer_id)
        if row is None:
            return
        now = self._clock.now()
        if row.status == Status.RUNNING:
            # The runner must leave an end state; a bug must not leave the row RUNNING.
            # No automatic attempt: waiting does not fix a bug; the operator can resume.
            if failure is not None:
                message = f"internal error: {type(failure).__name__}: {failure}"
            else:
                message = "internal error: the transfer ended without a final status"
            apply(row, Event.FAIL)
            row.error_code = ErrorCode.TeInternal
            row.error_msg = message[:MAX_ERROR_MSG]
            row.error_step = row.step
            row.stop = now
            await self._store.save_transfer(row)
            return
        if row.status == Status.ERROR and row.remaining_attempts > 0:
            self._plan_next_attempt(row, now)
            await self._store.save_transfer(row)
            self._log.info(
                "transfer planned for another attempt",
                transfer_id=transfer_id,
                next_attempt=row.next_attempt.isoformat() if row.next_attempt else None,
                remaining_attempts=row.remaining_attempts,
            )

    @staticmethod
    def _plan_next_attempt(row: Transfer, now: datetime) -> None:
        """Back to PLANNED after a delay that grows with each attempt. The step, task
        number, progress and error stay: the attempt resumes where the run failed, and
        the error shows until then."""
        apply(row, Event.ATTEMPT)
        row.next_attempt = now + timedelta(seconds=row.next_retry_delay)
        row.next_retry_delay = round(row.next_retry_delay * row.retry_increment_factor)
        row.remaining_attempts -= 1

    # ------------------------------------------------------------------ start-up

    async def _resume_interrupted(self) -> None:
        # Collect every page first: the rows leave the filter as they are changed.
        interrupted: list[Transfer] = []
        offset = 0
        while True:
            page, _total = await self._store.list_transfers(
                TransferFilter(statuses=(Status.INTERRUPTED,), limit=RESUME_PAGE, offset=offset)
            )
            interrupted.extend(page)
            if len(page) < RESUME_PAGE:
                break
            offset += len(page)
        await self.resume_interrupted(interrupted)

    async def resume_interrupted(self, interrupted: list[Transfer]) -> list[Transfer]:
        """Plan to resume at once those of the INTERRUPTED `interrupted` rows that go on
        without their partner (client transfers, server transfers whose data is
        complete), and wake the loop; returns the rows planned. At start-up: every
        INTERRUPTED row; after a takeover: the dead node's. Server transfers that only
        their partner can continue wait for it."""
        alone = [t.id for t in interrupted if t.id is not None and await self._goes_alone(t)]
        # One bulk change, not read-then-save: a row another node starting at the same
        # time resumed (and may already run) is left to it.
        resumed = await self._store.plan_interrupted(alone)
        if resumed:
            self._log.info("interrupted transfers planned to resume", count=len(resumed))
            self.wake()
        return resumed
