"""Remote pollers: each looks at a partner's folder at its interval (or cron times) and
makes one receive transfer per new remote file.

A file is known by (name, size, modification time). It is taken only once it has
settled: the same size and time on two consecutive looks, so that a file the partner
is still writing is not fetched half-written. Taking it inserts its transfer and the
record of the file in one commit under that key (gatewayd.store `insert_take`): it is
fetched once, whichever node looked, and across restarts. On a shared database one
node looks at a time (gatewayd.automation.leader). The first look of a file is kept
in the database too (`poller_seen`): after a restart, or when another node takes over,
the next look settles what the last one saw instead of starting again. Each look also
marks the files taken that it no longer lists (`note_poller_listing`): the retention
purges only those (gatewayd.automation.retention). Pause and resume are kept in the
database (kind "poller"): they hold on every node and across restarts.

`after: delete` / `move` end the transfer's post chain with REMOTEDELETE / REMOTEMOVE,
which run only once the file is here whole and the rule's own post tasks passed. A
poller whose configuration changes while the daemon runs starts its first looks again
(what it took stays taken).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from gatewayd.automation.cron import Cron
from gatewayd.automation.leader import Leader
from gatewayd.clock import Clock
from gatewayd.config import LoadedConfig
from gatewayd.config.pollers import PollerConfig
from gatewayd.errors import TransferError
from gatewayd.model import TaskSpec
from gatewayd.pipeline.clients import ClientPool
from gatewayd.pipeline.service import TransferService
from gatewayd.ports import RemoteStat
from gatewayd.requests import RequestError
from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.pollers")

Key = tuple[str, int, str]


@dataclass
class PollerStats:
    """What a poller did since this node started, for the API and the metrics."""

    polls: int = 0
    seen: int = 0
    taken: int = 0
    skipped: int = 0
    # Looks left to another node (the leader, see gatewayd.automation.leader).
    standby: int = 0
    last_poll: datetime | None = None
    next_poll: datetime | None = None
    last_error: str = ""
    paused: bool = False
    paused_by: str = ""
    paused_at: datetime | None = None
    # Looks not made because the poller is paused.
    paused_looks: int = 0


@dataclass
class _Poller:
    config: PollerConfig
    cron: Cron | None
    stats: PollerStats = field(default_factory=PollerStats)
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The next look is the API's `fire`: made even when paused.
    forced: bool = False
    # Its configuration changed: the first looks recorded before do not count.
    fresh: bool = False


class UnknownPoller(LookupError):
    """No poller of that name is configured."""


def _mtime_text(entry: RemoteStat) -> str:
    return entry.mtime.isoformat() if entry.mtime is not None else ""


class PollerService:
    """Runs the configured pollers, one task each (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        service: TransferService,
        clients: ClientPool,
        clock: Clock,
        loaded: LoadedConfig,
        node: str,
    ) -> None:
        self._store = store
        self._service = service
        self._clients = clients
        self._clock = clock
        self._loaded = loaded
        self._node = node
        self._pollers: dict[str, _Poller] = {}
        self._leader = Leader(store, node)
        self._stopping = False
        # Looks done so far (all pollers): tests driving a manual clock wait on it.
        self.passes = 0

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        self._apply(self._loaded)

    def reload(self, loaded: LoadedConfig) -> None:
        """Switch to the pollers of a new configuration: a changed poller starts again
        (it has to see its files settle again; what it took stays taken)."""
        self._loaded = loaded
        if not self._stopping:
            self._apply(loaded)

    def _apply(self, loaded: LoadedConfig) -> None:
        configs = {n: c for n, c in loaded.pollers.items() if c.enabled}
        changed = set()
        for name, poller in list(self._pollers.items()):
            if configs.get(name) != poller.config:
                self._cancel(poller)
                del self._pollers[name]
                changed.add(name)
        for name, config in configs.items():
            if name in self._pollers:
                continue
            tz = ZoneInfo(config.timezone) if config.timezone else loaded.tz
            cron = Cron(config.cron, tz) if config.cron else None
            poller = _Poller(config, cron, fresh=name in changed)
            poller.task = asyncio.create_task(self._run(poller), name=f"poller-{name}")
            self._pollers[name] = poller

    @staticmethod
    def _cancel(poller: _Poller) -> None:
        if poller.task is not None:
            poller.task.cancel()

    async def stop(self) -> None:
        """Let each poller end its look (a take is one commit: never cut in the middle);
        the gateway's stop bounds the wait, and cancels what overruns it."""
        self._stopping = True
        tasks = [p.task for p in self._pollers.values() if p.task is not None]
        for poller in self._pollers.values():
            poller.wake.set()
        try:
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            for task in tasks:
                task.cancel()

    # ------------------------------------------------------------------ reads

    def names(self) -> list[str]:
        return sorted(self._pollers)

    def config(self, name: str) -> PollerConfig:
        return self._get(name).config

    def stats(self, name: str) -> PollerStats:
        return self._get(name).stats

    def counts(self) -> list[tuple[str, dict[str, int], int, int]]:
        """Per poller: its files taken and skipped, its looks, the files seen now."""
        return [
            (
                name,
                {"taken": p.stats.taken, "skipped": p.stats.skipped},
                p.stats.polls,
                p.stats.seen,
            )
            for name, p in sorted(self._pollers.items())
        ]

    def _get(self, name: str) -> _Poller:
        poller = self._pollers.get(name)
        if poller is None:
            raise UnknownPoller(name)
        return poller

    def fire(self, name: str) -> None:
        """Look now (the API's `fire`, paused or not), then go on at the usual times."""
        poller = self._get(name)
        poller.forced = True
        poller.wake.set()

    async def read_pause(self, name: str) -> PollerStats:
        """`name`'s stats with the database's pause state copied in (the API)."""
        poller = self._get(name)
        found = (await self._store.pause_states("poller")).get(name)
        stats = poller.stats
        stats.paused = found is not None and found.paused
        stats.paused_by = found.paused_by if found is not None else ""
        stats.paused_at = found.paused_at if found is not None else None
        return stats

    async def set_paused(self, name: str, paused: bool, by: str) -> PollerStats:
        """Pause or resume `name` on every node (kept in the database)."""
        poller = self._get(name)
        await self._store.set_paused("poller", name, paused, by, self._clock.now())
        if not paused:
            poller.wake.set()
        return await self.read_pause(name)

    # ------------------------------------------------------------------ loop

    def _next(self, poller: _Poller, now: datetime) -> datetime:
        if poller.cron is not None:
            return poller.cron.next_after(now)
        assert poller.config.interval is not None
        return now + timedelta(seconds=poller.config.interval)

    async def _run(self, poller: _Poller) -> None:
        while not self._stopping:
            poller.wake.clear()
            forced, poller.forced = poller.forced, False
            try:
                await self.poll(poller, forced=forced)
            except Exception as exc:
                poller.stats.last_error = str(exc)
                log.exception("poll failed", poller=poller.config.name)
            now = self._clock.now()
            poller.stats.next_poll = nxt = self._next(poller, now)
            self.passes += 1
            await self._clock.wait(poller.wake, (nxt - now).total_seconds())

    async def poll(self, poller: _Poller, *, forced: bool = False) -> int:
        """One look at the partner's folder; how many files it took. A paused poller
        looks only when `forced` (the API's `fire`)."""
        config = poller.config
        stats = poller.stats
        if not await self._leader.mine():
            stats.standby += 1
            return 0
        await self.read_pause(config.name)
        if stats.paused and not forced:
            stats.paused_looks += 1
            return 0
        stats.polls += 1
        stats.last_poll = self._clock.now()
        try:
            lease = await self._clients.acquire_partner(config.partner)
            try:
                entries = await lease.client.list(config.remote_dir)
            finally:
                lease.release()
        except TransferError as exc:
            stats.last_error = f"{exc.code}: {exc}"
            log.warning("cannot list the partner's folder", poller=config.name, error=str(exc))
            return 0
        files = [
            e
            for e in entries
            if not e.is_dir and any(fnmatch.fnmatchcase(e.name, g) for g in config.globs)
        ]
        stats.seen = len(files)
        store, name, at = self._store, config.name, self._clock.now()
        taken = await store.poller_taken(name)
        previous = await store.poller_seen(name)
        stale: list[str] = []
        if poller.fresh:
            stale, previous, poller.fresh = list(previous), {}, False
        now_seen = {e.name: (e.size, _mtime_text(e)) for e in files}
        await store.note_poller_listing(name, {(n, *v) for n, v in now_seen.items()}, at)
        count = 0
        # What the next look compares with: the files not taken, as seen now.
        changed: dict[str, tuple[int, str]] = {}
        done: list[str] = []
        for entry in files:
            key: Key = (entry.name, *now_seen[entry.name])
            if key in taken:
                if entry.name in previous or entry.name in stale:
                    done.append(entry.name)
                continue
            if previous.get(entry.name) != now_seen[entry.name]:
                # New or still changing: taken once it looks the same twice.
                changed[entry.name] = now_seen[entry.name]
                continue
            if await self._take(poller, key):
                count += 1
                done.append(entry.name)
            # Else refused, or another node took it first: the next look sees it taken.
        done += [n for n in previous if n not in now_seen]
        done += [n for n in stale if n not in now_seen]  # the others are in `changed`
        await store.set_poller_seen(name, changed, done, at)
        stats.last_error = ""
        return count

    async def _take(self, poller: _Poller, key: Key) -> bool:
        config = poller.config
        name = key[0]
        request = {
            "rule": config.rule,
            "partner": config.partner,
            "isSend": False,
            "file": posixpath.join(config.remote_dir, name) if config.remote_dir else name,
            "output": name,
            "transferInfo": {"poller": config.name, "remoteSize": key[1], "remoteMtime": key[2]},
        }
        try:
            transfer = self._service.build(request)
        except RequestError as exc:
            poller.stats.skipped += 1
            log.warning("remote file skipped", poller=config.name, file=name, error=str(exc))
            return False
        if config.after == "delete":
            transfer.post_tasks.append(TaskSpec("REMOTEDELETE"))
        elif config.after == "move" and config.move_to is not None:
            transfer.post_tasks.append(TaskSpec("REMOTEMOVE", {"to": config.move_to}))
        if not await self._store.insert_take(config.name, key, transfer, self._node):
            return False  # another node took it first
        poller.stats.taken += 1
        self._service.wake()
        log.info("remote file taken", poller=config.name, file=name, transfer_id=transfer.id)
        return True
