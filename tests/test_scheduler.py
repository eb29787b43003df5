"""The scheduler against a real store of either backend, with a manual clock: no real
sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gatewayd import scheduler as scheduler_module
from gatewayd.clock import ManualClock, SystemClock
from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.scheduler import Scheduler
from gatewayd.store import Store
from tests.store_backends import Backend

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
WAIT = 5.0  # bound on every wait for something the scheduler does at once

pytestmark = pytest.mark.timeout(30)


async def bounded(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """Either backend: the claims are the store's (parametrized, every test runs twice)."""
    st = backend.make()
    await st.open()
    yield st
    await st.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


MakeScheduler = Callable[..., Scheduler]
Outcome = Callable[["Call"], Awaitable[None]]


class Call:
    """One invocation of the test runner: what it saw, and a gate the test may hold."""

    def __init__(self, transfer: Transfer, at: datetime, stored: Transfer | None) -> None:
        self.transfer = transfer
        self.id: int = transfer.id  # type: ignore[assignment]
        self.at = at
        self.stored_status = stored.status if stored else None
        self.step = transfer.step
        self.progress = transfer.progress
        self.task_number = transfer.task_number
        self.gate = asyncio.Event()


class RecordingRunner:
    """Stands in for the pipeline: records each call, optionally blocks on a gate, then
    applies the outcome the test chose (which saves the end state, as the pipeline does)."""

    def __init__(self, store: Store, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.calls: list[Call] = []
        self.block = False
        self.outcome: Outcome = self.succeed
        self.active = 0
        self.max_active = 0
        self._changed = asyncio.Condition()

    async def __call__(self, transfer: Transfer) -> None:
        assert transfer.id is not None
        stored = await self.store.get_transfer(transfer.id)
        call = Call(transfer, self.clock.now(), stored)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()
        try:
            if self.block:
                await call.gate.wait()
            await self.outcome(call)
        finally:
            self.active -= 1

    async def wait_calls(self, n: int) -> None:
        async def reached() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls) >= n)

        await bounded(reached(), f"{n} runner calls (got {len(self.calls)})")

    def ids(self) -> list[int]:
        return [c.id for c in self.calls]

    async def succeed(self, call: Call) -> None:
        t = call.transfer
        t.status = Status.DONE
        t.step = Step.NONE
        t.stop = self.clock.now()
        await self.store.save_transfer(t)

    async def fail(self, call: Call) -> None:
        # Fails in DATA after writing 100 more bytes, as a broken connection would.
        t = call.transfer
        t.status = Status.ERROR
        t.step = Step.DATA
        t.task_number = 2
        t.progress += 100
        t.error_code = ErrorCode.TeDataTransfer
        t.error_msg = f"connection lost (call {len(self.calls)})"
        t.error_step = Step.DATA
        await self.store.save_transfer(t)


@pytest.fixture
def runner(store: Store, clock: ManualClock) -> RecordingRunner:
    return RecordingRunner(store, clock)


@pytest.fixture
async def make_scheduler(
    store: Store, clock: ManualClock, runner: RecordingRunner
) -> AsyncIterator[MakeScheduler]:
    made: list[tuple[Scheduler, RecordingRunner]] = []

    def make(**kw: Any) -> Scheduler:
        kw.setdefault("max_transfers", 10)
        kw.setdefault("max_per_partner", 10)
        sched = Scheduler(store, runner, clock=clock, **kw)
        made.append((sched, runner))
        return sched

    yield make
    for sched, run in made:
        await sched.stop()
        for call in run.calls:
            call.gate.set()
        await bounded(sched.wait_idle(), "runners to end at teardown")


async def add(
    store: Store,
    *,
    partner: str = "p1",
    start: datetime | None = T0,
    status: Status = Status.PLANNED,
    is_server: bool = False,
    attempts: int = 0,
    delay: int = 0,
    factor: float = 1.0,
    **kw: Any,
) -> Transfer:
    t = Transfer(
        rule="out",
        is_server=is_server,
        is_send=True,
        requester="gw",
        requested=partner,
        protocol="sftp",
        partner=None if is_server else partner,
        account="acct" if is_server else None,
        src_filename="a.txt",
        dest_filename="a.txt",
        start=start,
        status=status,
        remaining_attempts=attempts,
        next_retry_delay=delay,
        retry_increment_factor=factor,
        **kw,
    )
    return await store.insert_transfer(t)


async def row(store: Store, transfer_id: int | None) -> Transfer:
    assert transfer_id is not None
    got = await store.get_transfer(transfer_id)
    assert got is not None
    return got


async def settle(sched: Scheduler) -> None:
    """Until every runner has ended and the scheduler sleeps with nothing left to do now."""
    await bounded(sched.wait_idle(), "runners to end")
    await settle_running(sched)


async def settle_running(sched: Scheduler) -> None:
    """Until the scheduler sleeps (runners may still be in progress)."""
    await bounded(sched.wait_settled(), "the scheduler to go back to sleep")


# ---------------------------------------------------------------------------- the clock


async def test_manual_clock_wait_ends_only_when_time_passes_the_deadline() -> None:
    clock = ManualClock(T0)
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 10))
    await asyncio.sleep(0)  # let it register (a yield, not a timed sleep)
    assert clock.timed_waiters == 1
    clock.advance(9.5)
    await asyncio.sleep(0)
    assert not waiter.done()
    clock.advance(0.5)
    assert await bounded(waiter, "the wait to time out") is False
    assert clock.now() == T0 + timedelta(seconds=10)
    assert clock.timed_waiters == 0


async def test_manual_clock_wait_ends_when_the_event_is_set() -> None:
    clock = ManualClock(T0)
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, 3600))
    untimed = asyncio.create_task(clock.wait(event, None))
    await asyncio.sleep(0)
    event.set()
    assert await bounded(waiter, "the wait to see the event") is True
    assert await bounded(untimed, "the untimed wait to see the event") is True
    assert clock.timed_waiters == 0  # the timer of the ended wait is forgotten
    assert clock.now() == T0
    assert await clock.wait(asyncio.Event(), 0) is False


def test_manual_clock_refuses_naive_start_and_going_back() -> None:
    with pytest.raises(ValueError):
        ManualClock(datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        ManualClock(T0).advance(-1)


async def test_system_clock() -> None:
    clock = SystemClock()
    now = clock.now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    event = asyncio.Event()
    assert await clock.wait(event, 0.001) is False
    event.set()
    assert await clock.wait(event, 10) is True
    assert await clock.wait(event, None) is True


# ---------------------------------------------------------------------------- when transfers run


async def test_due_transfer_runs_once_after_being_claimed(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    t = await add(store, start=T0 - timedelta(hours=1))
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await settle(sched)
    assert runner.ids() == [t.id]
    # The row was RUNNING in the store before the runner got it.
    assert runner.calls[0].stored_status == Status.RUNNING
    got = await row(store, t.id)
    assert got.status == Status.DONE
    assert got.start == T0 - timedelta(hours=1)  # the planned time is kept
    assert sched.running == frozenset()
    assert len(runner.calls) == 1


async def test_future_transfer_waits_for_its_start(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    t = await add(store, start=T0 + timedelta(seconds=100))
    sched = make_scheduler()
    await sched.start()
    await settle(sched)
    clock.advance(99)
    await settle(sched)
    assert runner.calls == []
    assert (await row(store, t.id)).status == Status.PLANNED
    clock.advance(1)
    await runner.wait_calls(1)
    assert runner.calls[0].at == T0 + timedelta(seconds=100)


async def test_far_future_transfer_is_reached_past_the_safety_cap(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    await add(store, start=T0 + timedelta(hours=2))
    sched = make_scheduler()
    await sched.start()
    for _ in range(119):
        await settle(sched)
        clock.advance(60)
    await settle(sched)
    assert runner.calls == []
    clock.advance(60)
    await runner.wait_calls(1)


async def test_wake_runs_a_new_transfer_without_time_moving(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    sched = make_scheduler()
    await sched.start()
    await settle(sched)
    t = await add(store, start=clock.now())
    sched.wake()
    await runner.wait_calls(1)
    assert runner.ids() == [t.id]
    assert clock.now() == T0


# ---------------------------------------------------------------------------- attempts


async def test_failing_transfer_is_attempted_with_exponential_backoff(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    runner.outcome = runner.fail
    t = await add(store, attempts=3, delay=10, factor=2)
    sched = make_scheduler()
    await sched.start()

    await runner.wait_calls(1)
    await settle(sched)
    got = await row(store, t.id)
    assert got.status == Status.PLANNED
    assert got.next_attempt == T0 + timedelta(seconds=10)
    assert (got.remaining_attempts, got.next_retry_delay) == (2, 20)
    # The error stays visible until the next attempt, and the step and progress are kept.
    assert got.error_code == ErrorCode.TeDataTransfer
    assert got.error_msg == "connection lost (call 1)"
    assert (got.step, got.task_number, got.progress) == (Step.DATA, 2, 100)

    for at, calls in ((10, 2), (30, 3), (70, 4)):
        clock.advance(at - 1 - (clock.now() - T0).total_seconds())
        await settle(sched)
        assert len(runner.calls) == calls - 1, f"ran before t={at}"
        clock.advance(1)
        await runner.wait_calls(calls)
        await settle(sched)

    assert [(c.at - T0).total_seconds() for c in runner.calls] == [0, 10, 30, 70]
    # Each attempt resumed where the previous one failed.
    assert [(c.step, c.progress) for c in runner.calls] == [
        (Step.NONE, 0),
        (Step.DATA, 100),
        (Step.DATA, 200),
        (Step.DATA, 300),
    ]
    got = await row(store, t.id)
    assert got.status == Status.ERROR
    assert got.remaining_attempts == 0
    assert got.progress == 400
    clock.advance(10_000)
    await settle(sched)
    assert len(runner.calls) == 4


async def test_transfer_that_succeeds_on_second_attempt_ends_done(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    async def fail_then_succeed(call: Call) -> None:
        await (runner.fail if len(runner.calls) == 1 else runner.succeed)(call)

    runner.outcome = fail_then_succeed
    t = await add(store, attempts=3, delay=5, factor=3)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await settle(sched)
    clock.advance(5)
    await runner.wait_calls(2)
    await settle(sched)
    got = await row(store, t.id)
    assert got.status == Status.DONE
    assert got.remaining_attempts == 2
    clock.advance(10_000)
    await settle(sched)
    assert len(runner.calls) == 2


async def test_fractional_factor_rounds_the_delay(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    runner.outcome = runner.fail
    t = await add(store, attempts=1, delay=3, factor=1.5)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await settle(sched)
    got = await row(store, t.id)
    assert (got.next_retry_delay, got.next_attempt) == (4, T0 + timedelta(seconds=3))


async def test_cancelled_while_running_is_not_attempted_again(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    async def error_in_memory_only(call: Call) -> None:
        # The runner's own object says ERROR, but the row (changed by the API) is the truth.
        call.transfer.status = Status.ERROR

    runner.block = True
    runner.outcome = error_in_memory_only
    t = await add(store, attempts=3, delay=10, factor=2)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    cancelled = await row(store, t.id)
    cancelled.status = Status.CANCELLED
    cancelled.error_code = ErrorCode.TeCanceled
    await store.save_transfer(cancelled)
    runner.calls[0].gate.set()
    await settle(sched)
    got = await row(store, t.id)
    assert got.status == Status.CANCELLED
    assert got.remaining_attempts == 3
    clock.advance(10_000)
    await settle(sched)
    assert len(runner.calls) == 1


async def test_runner_that_raises_leaves_the_row_in_error(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    async def crash(call: Call) -> None:
        call.transfer.step = Step.PRE_TASKS
        raise RuntimeError("boom in the pipeline")

    runner.outcome = crash
    t = await add(store, attempts=2, delay=1, factor=1)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await settle(sched)
    got = await row(store, t.id)
    assert got.status == Status.ERROR
    assert got.error_code == ErrorCode.TeInternal
    assert "boom in the pipeline" in got.error_msg
    assert got.stop == T0
    # A bug is not retried automatically.
    clock.advance(1000)
    await settle(sched)
    assert len(runner.calls) == 1
    # The scheduler goes on with other transfers.
    runner.outcome = runner.succeed
    other = await add(store)
    sched.wake()
    await runner.wait_calls(2)
    await settle(sched)
    assert (await row(store, other.id)).status == Status.DONE


async def test_runner_that_returns_without_an_end_state_leaves_error(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    async def forget(call: Call) -> None:
        return None

    runner.outcome = forget
    t = await add(store)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await settle(sched)
    got = await row(store, t.id)
    assert (got.status, got.error_code) == (Status.ERROR, ErrorCode.TeInternal)
    assert "without a final status" in got.error_msg


# ---------------------------------------------------------------------------- limits


async def test_global_limit_runs_two_at_once_and_fills_freed_slots(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    runner.block = True
    ids = [(await add(store, partner=f"p{i}")).id for i in range(5)]
    sched = make_scheduler(max_transfers=2)
    await sched.start()
    await runner.wait_calls(2)
    await settle_running(sched)
    assert len(runner.calls) == 2
    assert sched.running == frozenset(runner.ids())
    assert sched.queue_depth() == 3
    statuses = [(await row(store, i)).status for i in ids]
    assert statuses.count(Status.RUNNING) == 2
    assert statuses.count(Status.PLANNED) == 3

    for done in range(3):
        runner.calls[done].gate.set()
        await runner.wait_calls(3 + done)
        await settle_running(sched)
        assert len(runner.calls) == 3 + done
        assert len(sched.running) == 2
    for call in runner.calls:
        call.gate.set()
    await settle(sched)
    assert sorted(runner.ids()) == sorted(ids)  # each ran exactly once
    assert runner.max_active == 2
    assert sched.queue_depth() == 0
    assert all([(await row(store, i)).status == Status.DONE for i in ids])


async def test_per_partner_limits(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    runner.block = True
    for _ in range(3):
        await add(store, partner="a")
        await add(store, partner="b")
        await add(store, partner="c")
    # a: the default of 1; b: its own limit of 2; c: its own limit of 1.
    sched = make_scheduler(max_transfers=10, max_per_partner=1, partner_limits={"b": 2})
    await sched.start()
    await runner.wait_calls(4)
    await settle_running(sched)

    def partners() -> list[str | None]:
        return sorted(c.transfer.partner for c in runner.calls if not c.gate.is_set())

    assert partners() == ["a", "b", "b", "c"]
    assert sched.queue_depth() == 5
    # Freeing a's slot starts the next a, nothing else.
    next(c for c in runner.calls if c.transfer.partner == "a").gate.set()
    await runner.wait_calls(5)
    await settle_running(sched)
    assert len(runner.calls) == 5
    assert partners() == ["a", "b", "b", "c"]


async def test_raising_a_limit_launches_held_back_transfers(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    runner.block = True
    for _ in range(3):
        await add(store)
    sched = make_scheduler(max_transfers=1)
    await sched.start()
    await runner.wait_calls(1)
    await settle_running(sched)
    assert sched.queue_depth() == 2
    sched.set_limits(max_transfers=2, max_per_partner=10)
    await runner.wait_calls(2)
    await settle_running(sched)
    assert len(runner.calls) == 2
    assert sched.queue_depth() == 1


async def test_blocked_partner_does_not_delay_a_later_transfer_of_another(
    store: Store,
    clock: ManualClock,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
) -> None:
    runner.block = True
    await add(store, partner="a")
    await add(store, partner="a")
    later = await add(store, partner="b", start=T0 + timedelta(seconds=30))
    sched = make_scheduler(max_per_partner=1)
    await sched.start()
    await runner.wait_calls(1)
    await settle_running(sched)
    clock.advance(30)
    await runner.wait_calls(2)
    assert runner.calls[1].id == later.id


async def test_stop_stops_launching_but_lets_runners_finish(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    runner.block = True
    first = await add(store)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(1)
    await sched.stop()
    assert sched.running == frozenset({first.id})
    second = await add(store)
    sched.wake()
    runner.calls[0].gate.set()
    await bounded(sched.wait_idle(), "the runner to end")
    assert (await row(store, first.id)).status == Status.DONE
    assert (await row(store, second.id)).status == Status.PLANNED
    assert len(runner.calls) == 1


# ---------------------------------------------------------------------------- start-up


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Several pages of interrupted rows without inserting hundreds of them.
    monkeypatch.setattr(scheduler_module, "RESUME_PAGE", 2)
    yield


async def test_interrupted_client_transfers_resume_at_start_up(
    store: Store,
    runner: RecordingRunner,
    make_scheduler: MakeScheduler,
    small_pages: None,
) -> None:
    clients = [
        await add(
            store,
            status=Status.INTERRUPTED,
            step=Step.DATA,
            progress=500 + i,
            task_number=1,
            next_attempt=T0 + timedelta(days=1),
            attempts=2,
        )
        for i in range(5)
    ]
    server = await add(store, status=Status.INTERRUPTED, is_server=True, step=Step.DATA)
    sched = make_scheduler()
    await sched.start()
    await runner.wait_calls(5)
    await settle(sched)
    assert sorted(runner.ids()) == sorted(t.id for t in clients)
    # They resume where they were, without spending an attempt.
    assert sorted((c.step, c.progress, c.task_number) for c in runner.calls) == [
        (Step.DATA, 500 + i, 1) for i in range(5)
    ]
    for t in clients:
        assert (await row(store, t.id)).remaining_attempts == 2
    assert (await row(store, server.id)).status == Status.INTERRUPTED


async def test_paused_and_error_rows_are_not_run(
    store: Store, runner: RecordingRunner, make_scheduler: MakeScheduler
) -> None:
    paused = await add(store, status=Status.PAUSED)
    errored = await add(store, status=Status.ERROR, attempts=3)
    sched = make_scheduler()
    await sched.start()
    await settle(sched)
    assert runner.calls == []
    assert (await row(store, paused.id)).status == Status.PAUSED
    assert (await row(store, errored.id)).status == Status.ERROR
