"""The schedule service: decides *when* each schedule fires and makes its transfer.

Each firing is recorded in the database in the same commit as the PLANNED transfer it
makes, under the key (schedule, fire time): a firing happens once whichever node, or
which run of the daemon, tries it (gatewayd.store `insert_fire`). The scheduler then
runs the transfer like any other.

On a shared database one node fires the schedules: the one that runs the pollers
(gatewayd.automation.leader); the others follow the times without firing. The record
stays the arbiter (a handover in the middle of a firing, `fire` through the API of
another node).

Missed firings (the daemon was down, or the node that fired them died) are counted
from the last firing, or from when the schedule became known: `catch_up: once` fires
the latest of them once when a node starts firing the schedules (at start, or when it
takes over), `skip` drops them. Times come from a `gatewayd.clock.Clock`, so tests
drive it exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

import structlog

from gatewayd.automation.cron import Cron, CronError
from gatewayd.automation.leader import Leader
from gatewayd.clock import Clock
from gatewayd.config import LoadedConfig
from gatewayd.config.schedules import ScheduleConfig
from gatewayd.model import Transfer
from gatewayd.pipeline.service import TransferService
from gatewayd.requests import RequestError
from gatewayd.store.base import ScheduleState, Store

log = structlog.get_logger("gatewayd.schedules")

# The longest the loop sleeps without looking again (a reload, a clock that jumped).
_SAFETY_CAP = 60.0


@dataclass
class FireResult:
    """What a firing did: its transfer, or why none (another node fired it first, the
    request was refused)."""

    schedule: str
    fire_time: datetime
    transfer: Transfer | None = None
    duplicate: bool = False
    error: str = ""


@dataclass
class ScheduleStats:
    """Counts since this node started, for the API and the metrics."""

    fired: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    # Times left to the node that fires the schedules (see the module's docstring).
    standby: int = 0


@dataclass
class _Entry:
    config: ScheduleConfig
    cron: Cron
    next_at: datetime | None
    stats: ScheduleStats = field(default_factory=ScheduleStats)


class UnknownSchedule(LookupError):
    """No schedule of that name is configured."""


class ScheduleService:
    """Fires the configured schedules at their times (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        service: TransferService,
        clock: Clock,
        loaded: LoadedConfig,
        node: str,
        on_fire: Callable[[FireResult], None] = lambda result: None,
    ) -> None:
        self._store = store
        self._service = service
        self._clock = clock
        self._loaded = loaded
        self._node = node
        self._on_fire = on_fire
        self._entries: dict[str, _Entry] = {}
        self._pending: LoadedConfig | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()
        self._leader = Leader(store, node)
        # Whether this node fired the schedules at its last pass (None: not known yet).
        self._leading: bool | None = None
        # Passes of the loop so far: tests driving a manual clock wait for the next one.
        self.passes = 0

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Know the configured schedules (in the database too), fire what was missed
        as their `catch_up` says, then run the loop."""
        await self._sync(self._loaded)
        await self._lead()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="schedules")

    def reload(self, loaded: LoadedConfig) -> None:
        """Switch to the schedules of a new configuration (applied by the loop). A new
        or changed schedule counts its firings from now on: nothing to catch up."""
        self._pending = loaded
        self._wake.set()

    async def apply(self, loaded: LoadedConfig) -> None:
        """`reload` now, for a caller that shows the result (the API after a write)."""
        await self._sync(loaded)
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ reads

    def names(self) -> list[str]:
        return sorted(self._entries)

    def config(self, name: str) -> ScheduleConfig:
        return self._entry(name).config

    def next_at(self, name: str) -> datetime | None:
        return self._entry(name).next_at

    def stats(self, name: str) -> ScheduleStats:
        return self._entry(name).stats

    def counts(self) -> list[tuple[str, dict[str, int]]]:
        """Per schedule, what its firings did on this node (for the metrics)."""
        return [
            (
                name,
                {
                    "fired": e.stats.fired,
                    "duplicate": e.stats.duplicates,
                    "skipped": e.stats.skipped,
                    "error": e.stats.errors,
                },
            )
            for name, e in sorted(self._entries.items())
        ]

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownSchedule(name)
        return entry

    # ------------------------------------------------------------------ actions

    async def fire_now(self, name: str) -> FireResult:
        """Fire `name` at once (the API's `fire`), paused or not; its fire time is now."""
        entry = self._entry(name)
        return await self._fire(entry, self._clock.now(), manual=True)

    async def set_paused(self, name: str, paused: bool, by: str = "") -> None:
        """Pause or resume `name` on every node (the state is in the database)."""
        self._entry(name)
        await self._store.set_paused("schedule", name, paused, by, self._clock.now())

    # ------------------------------------------------------------------ loop

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                pending, self._pending = self._pending, None
                if pending is not None:
                    await self._sync(pending)
                await self._fire_due(await self._lead())
            except Exception:
                log.exception("schedule pass failed")
            self.passes += 1
            if self._stopping:
                break
            await self._clock.wait(self._wake, self._timeout())

    def _timeout(self) -> float:
        times = [e.next_at for e in self._entries.values() if e.next_at is not None]
        if not times:
            return _SAFETY_CAP
        seconds = (min(times) - self._clock.now()).total_seconds()
        return min(max(seconds, 0.0), _SAFETY_CAP)

    @property
    def leading(self) -> bool:
        """Whether this node fired the schedules at its last pass."""
        return bool(self._leading)

    async def _lead(self) -> bool:
        """Whether this node fires the schedules now; when it just became the one (its
        start, or the previous one died), it first catches up what was missed."""
        mine = await self._leader.mine()
        if mine and not self._leading:
            await self._catch_up()
        self._leading = mine
        return mine

    async def _fire_due(self, leading: bool = True) -> None:
        now = self._clock.now()
        due_now = [e for e in self._entries.values() if e.next_at is not None and e.next_at <= now]
        if not due_now:
            return
        if not leading:
            for entry in due_now:
                entry.next_at = self._next(entry.cron, now)
                entry.stats.standby += 1
            return
        # One read for the pass: paused (on any node) and last errors.
        states = {s.name: s for s in await self._store.schedule_states()}
        for entry in due_now:
            assert entry.next_at is not None
            # Woken late (a busy loop, a clock that jumped): the latest due time, once.
            due = entry.cron.latest_until(now) or entry.next_at
            entry.next_at = self._next(entry.cron, now)
            state = states.get(entry.config.name)
            if state is not None and state.paused:
                entry.stats.skipped += 1
                continue
            await self._fire(entry, due, state=state)

    async def _sync(self, loaded: LoadedConfig) -> None:
        """Follow `loaded`'s schedules. A new or changed one counts from now: nothing
        to catch up (that is `_catch_up`'s, when this node starts firing)."""
        async with self._lock:
            self._loaded = loaded
            now = self._clock.now()
            configs = {n: c for n, c in loaded.schedules.items() if c.enabled}
            await self._store.ensure_schedules(sorted(configs), now)
            entries: dict[str, _Entry] = {}
            for name, config in configs.items():
                old = self._entries.get(name)
                cron = Cron(config.cron, _zone(config, loaded.tz))
                if old is not None and old.cron == cron:
                    old.config = config
                    entries[name] = old
                    continue
                entry = _Entry(config, cron, self._next(cron, now))
                if old is not None:
                    entry.stats = old.stats
                entries[name] = entry
            self._entries = entries

    async def _catch_up(self) -> None:
        """Fire (`catch_up: once`) or drop (`skip`) the latest firing each schedule
        missed since its last one, as the database knows them."""
        states = {s.name: s for s in await self._store.schedule_states()}
        now = self._clock.now()
        missed: list[tuple[_Entry, datetime, ScheduleState]] = []
        for name, entry in sorted(self._entries.items()):
            state = states.get(name)
            due = None if state is None else _missed(entry.cron, state, now)
            if state is None or due is None:
                continue
            # Caught up (or dropped) here: the pass's due times are not tried again.
            entry.next_at = self._next(entry.cron, now)
            if entry.config.catch_up == "once" and not state.paused:
                missed.append((entry, due, state))
            else:
                entry.stats.skipped += 1
                log.info("missed firing skipped", schedule=name, fire_time=due.isoformat())
        for entry, due, state in missed:
            log.info(
                "catching up a missed firing",
                schedule=entry.config.name,
                fire_time=due.isoformat(),
            )
            await self._fire(entry, due, state=state)

    @staticmethod
    def _next(cron: Cron, now: datetime) -> datetime | None:
        try:
            return cron.next_after(now)
        except CronError:
            log.error("schedule never fires again", cron=cron.expression)
            return None

    async def _fire(
        self,
        entry: _Entry,
        fire_time: datetime,
        manual: bool = False,
        state: ScheduleState | None = None,
    ) -> FireResult:
        """Make the firing's transfer and record, in one commit. `state`: the schedule's
        state as read for this pass (None: read it when needed)."""
        config = entry.config
        result = FireResult(config.name, fire_time)
        request = config.transfer.request()
        info = dict(request.get("transferInfo", {}))
        info.update({"schedule": config.name, "fireTime": fire_time.isoformat()})
        request["transferInfo"] = info
        try:
            transfer = self._service.build(request)
            inserted = await self._store.insert_fire(config.name, fire_time, [transfer], self._node)
        except RequestError as exc:
            result.error = str(exc)
            entry.stats.errors += 1
            log.warning("schedule cannot make its transfer", schedule=config.name, error=str(exc))
            await self._store.set_schedule_error(config.name, result.error, self._clock.now())
            self._on_fire(result)
            return result
        if not inserted:
            result.duplicate = True
            entry.stats.duplicates += 1
            log.info(
                "schedule firing made already",
                schedule=config.name,
                fire_time=fire_time.isoformat(),
            )
        else:
            result.transfer = transfer
            entry.stats.fired += 1
            self._service.wake()
            log.info(
                "schedule fired",
                schedule=config.name,
                fire_time=fire_time.isoformat(),
                transfer_id=transfer.id,
                manual=manual,
            )
            if state is None:
                state = await self._store.schedule_state(config.name)
            if state is not None and state.last_error:
                await self._store.set_schedule_error(config.name, "", self._clock.now())
        self._on_fire(result)
        return result

    async def states(self) -> dict[str, ScheduleState]:
        """What the database knows of the configured schedules."""
        return {s.name: s for s in await self._store.schedule_states() if s.name in self._entries}


def _zone(config: ScheduleConfig, default: tzinfo) -> tzinfo:
    return ZoneInfo(config.timezone) if config.timezone else default


def _missed(cron: Cron, state: ScheduleState, now: datetime) -> datetime | None:
    """The latest firing missed between the last one (or `since`) and `now`, or None."""
    base = state.last_fire if state.last_fire is not None else state.since
    base = max(base, state.since)
    latest = cron.latest_until(now)
    if latest is None or latest <= base:
        return None
    return latest
