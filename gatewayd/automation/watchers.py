"""The local folder watchers: scan each watched folder, take the files that settled,
make each one a client transfer through the transfer service, exactly once.

Scanning only (no inotify): a scan lists the folder (in a thread), compares each file
with what it saw before (settle) and with the database's records of the files taken
(already sent), and records the files taken together with their transfers in one
commit (`Store.insert_watched`): the unique key of the record is the arbiter, so a
rescan after a crash or a kill -9, or a second node, never makes a second transfer of
the same file, and a file whose record did not commit is taken again by the next scan.

What is "the same file": a record holds the path below the watched folder, the inode,
the size and the modification time (ns). A file at a recorded path with the same inode
but another size or time has changed: sent again only with `resend_changed`. Another
inode at that path is a new file. A recorded file renamed within the folder (same
inode, size and time under another path) is not sent again. A record whose path was
seen missing (sent and then moved away or deleted, e.g. by the rule's post tasks) is
marked gone: a file that appears there later is new.

Pause and resume are kept in the database (`Store.set_paused`, kind "watcher"): each
scan reads them first, so a pause holds on every node and across restarts.

On PostgreSQL one node scans each watcher (a session advisory lock per watcher, taken
before each scan and released when the watcher stops); when that node dies its
database session ends with it and another node takes the watcher at its next scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog

from gatewayd.automation.scan import Entry, Listing, list_folder
from gatewayd.clock import Clock
from gatewayd.config import LoadedConfig
from gatewayd.config.watchers import WatcherConfig, watched_folder
from gatewayd.errors import TransferError
from gatewayd.model import Transfer
from gatewayd.pipeline.service import TransferService
from gatewayd.requests import RequestError, TransferRequest
from gatewayd.safepath import Beneath
from gatewayd.store.base import LiveWatched, Store, WatchedFile
from gatewayd.tasks.base import TaskContext
from gatewayd.tasks.markers import substitute

log = structlog.get_logger("gatewayd.watchers")

# What becomes of each file a scan sees. `refused`: the transfer service refused it (a
# name that cannot be sent): the scan's error says why, the other files go on.
# Seconds between two full reads of a watcher's records (a safety net: the records are
# read incrementally in between).
FULL_RELOAD = 60.0
OUTCOMES = ("taken", "too_young", "too_small", "already_sent", "excluded", "refused")


class WatcherObserver(Protocol):
    def watcher_scanned(
        self, watcher: str, seconds: float, outcomes: dict[str, int], error: bool
    ) -> None: ...


@dataclass
class ScanResult:
    """What one scan found: files seen, and what became of them."""

    seen: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    transfers: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""
    # Not scanned: another node holds the watcher, or it is paused or disabled.
    skipped: str = ""


@dataclass
class WatcherState:
    """A watcher as the API shows it."""

    name: str
    state: str = "starting"  # running, paused, disabled, standby (another node), error
    last_scan: datetime | None = None
    last_error: str = ""
    last_result: ScanResult | None = None
    # Totals since this node started the watcher.
    seen: int = 0
    totals: Counter[str] = field(default_factory=Counter)
    paused: bool = False
    paused_by: str = ""
    paused_at: datetime | None = None


class _Watch:
    """One watcher's loop and memory (the settle times of the files not taken yet)."""

    def __init__(self, owner: Watchers, config: WatcherConfig) -> None:
        self.owner = owner
        self.config = config
        self.state = WatcherState(config.name)
        self.first_seen: dict[str, tuple[tuple[int, int, int], float]] = {}
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        # The records not gone (see `_live`): valid while this node holds the watcher.
        self.live: dict[int, LiveWatched] = {}
        self.live_upto = 0
        self.live_loaded = 0.0
        self.live_valid = False

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:  # a scan's own errors are recorded; this is a bug
                log.exception("watcher scan failed", watcher=self.config.name)
            self.wake.clear()
            await self.owner.clock.wait(self.wake, self.config.interval)

    async def scan(self, *, forced: bool = False) -> ScanResult:
        async with self.lock:
            return await self._scan(forced)

    async def _scan(self, forced: bool) -> ScanResult:
        config, state, store = self.config, self.state, self.owner.store
        if not config.enabled:
            state.state = "disabled"
            return ScanResult(skipped="disabled")
        try:
            await self.owner.read_pause(config.name)
        except Exception as exc:  # the database away: the state last read holds
            log.warning("watcher pause state unread", watcher=config.name, error=str(exc))
        if state.paused and not forced:
            state.state = "paused"
            return ScanResult(skipped="paused")
        began = time.monotonic()
        result = ScanResult()
        try:
            if not await store.try_watch_lock(config.name):
                state.state = "standby"
                self.live_valid = False  # the holder records files meanwhile
                return ScanResult(skipped="another node scans this watcher")
            await self._take(result)
        except (OSError, RequestError, TransferError) as exc:
            result.error = _error_text(exc)
        except Exception as exc:  # the database refused (lease lost, connection)
            result.error = f"{type(exc).__name__}: {exc}"
        if result.error:
            self.live_valid = False
        result.seconds = time.monotonic() - began
        state.last_scan = self.owner.clock.now()
        state.last_result = result
        state.last_error = result.error
        state.state = "error" if result.error else ("paused" if state.paused else "running")
        state.seen += result.seen
        state.totals.update(result.outcomes)
        self.owner.observer.watcher_scanned(
            config.name, result.seconds, result.outcomes, bool(result.error)
        )
        if result.error:
            log.warning("watcher scan failed", watcher=config.name, error=result.error)
        return result

    async def _take(self, result: ScanResult) -> None:
        config, owner = self.config, self.owner
        loaded = owner.loaded()
        rule = loaded.config.rules[config.rule]
        folder = watched_folder(loaded.paths, rule, config)
        root = loaded.paths.rule_folder(rule)
        listing = await asyncio.to_thread(_list, folder, root, config)
        live = await self._live()
        now = time.monotonic() if owner.real_time else owner.clock.now().timestamp()
        # Pure computation, but thousands of files long: off the event loop too.
        candidates, gone = await asyncio.to_thread(self._compare, listing, live, now, result)
        if gone:
            await self.owner.store.mark_watched_gone(gone, self.owner.clock.now())
            for record_id in gone:
                self.live.pop(record_id, None)
        if candidates:
            await self._record(loaded, folder, candidates[: config.batch], result)

    async def _live(self) -> list[LiveWatched]:
        """The records not gone, kept in memory while this node holds the watcher: each
        scan reads only those recorded since, and all of them again now and then."""
        store, name = self.owner.store, self.config.name
        if not self.live_valid or time.monotonic() - self.live_loaded > FULL_RELOAD:
            self.live = {r.id: r for r in await store.live_watched(name)}
            self.live_loaded = time.monotonic()
            self.live_valid = True
        else:
            for record in await store.live_watched(name, after_id=self.live_upto):
                self.live[record.id] = record
        self.live_upto = max(self.live_upto, max(self.live, default=0))
        return list(self.live.values())

    def _settled(
        self, listing: Listing, live: list[LiveWatched], now: float, result: ScanResult
    ) -> list[Entry]:
        config = self.config
        by_path = {r.path: r for r in live}  # by id: the newest record of a path wins
        idents = {r.ident for r in live}
        outcomes = result.outcomes
        result.seen = len(listing.entries) + listing.excluded
        outcomes["excluded"] += listing.excluded
        candidates: list[Entry] = []
        for entry in listing.entries:
            record = by_path.get(entry.path)
            if record is not None and record.inode == entry.inode:
                if (record.size, record.mtime_ns) == (entry.size, entry.mtime_ns):
                    outcomes["already_sent"] += 1
                    continue
                if not config.resend_changed:
                    outcomes["already_sent"] += 1
                    continue
            elif record is None and entry.ident in idents:
                outcomes["already_sent"] += 1  # a taken file, renamed
                continue
            seen = self.first_seen.get(entry.path)
            if seen is None or seen[0] != entry.ident:
                self.first_seen[entry.path] = (entry.ident, now)
                since = now
            else:
                since = seen[1]
            if now - since < config.settle:
                outcomes["too_young"] += 1
                continue
            if entry.size < config.min_size:
                outcomes["too_small"] += 1
                continue
            candidates.append(entry)
        for path in [p for p in self.first_seen if p not in listing.present]:
            del self.first_seen[path]
        return candidates

    def _compare(
        self, listing: Listing, live: list[LiveWatched], now: float, result: ScanResult
    ) -> tuple[list[Entry], list[int]]:
        """The files to take, and the records gone (a worker thread: the scan holds the
        watcher's lock, nothing else touches its memory meanwhile)."""
        return self._settled(listing, live, now, result), self._gone(listing, live)

    @staticmethod
    def _gone(listing: Listing, live: list[LiveWatched]) -> list[int]:
        """Records whose path is missing, or holds another file now."""
        by_path: dict[str, list[LiveWatched]] = {}
        for record in live:
            by_path.setdefault(record.path, []).append(record)
        current = {e.path: e for e in listing.entries}
        # A taken file renamed within the folder is still the file taken.
        idents = {e.ident for e in listing.entries}
        gone: list[int] = []
        for path, records in by_path.items():
            entry = current.get(path)
            for record in records:
                missing = path not in listing.present and record.ident not in idents
                if missing or (entry is not None and entry.inode != record.inode):
                    gone.append(record.id)
        return gone

    async def _record(
        self, loaded: LoadedConfig, folder: Path, entries: list[Entry], result: ScanResult
    ) -> None:
        config, owner = self.config, self.owner
        rule = loaded.config.rules[config.rule]
        root = loaded.paths.rule_folder(rule)
        below = folder.relative_to(root).as_posix() if folder != root else ""
        items: list[tuple[WatchedFile, list[Transfer]]] = []
        taken_at = owner.clock.now()
        for index, entry in enumerate(entries):
            if index and not index % 50:
                await asyncio.sleep(0)  # building is CPU: let the servers and the API in
            file = posixpath.join(below, entry.path) if below else entry.path
            try:
                transfers = [self._build(loaded, p, file, entry) for p in config.targets]
            except RequestError as exc:
                result.outcomes["refused"] += 1
                result.error = f"{entry.path}: {exc}"
                continue
            record = WatchedFile(
                watcher=config.name,
                path=entry.path,
                inode=entry.inode,
                size=entry.size,
                mtime_ns=entry.mtime_ns,
                taken=taken_at,
                node=owner.node,
            )
            items.append((record, transfers))
        if not items:
            return
        recorded = await owner.service.insert_watched(items)
        result.outcomes["taken"] += len(recorded)
        # Files recorded by someone else meanwhile (another node, before a crash).
        result.outcomes["already_sent"] += len(items) - len(recorded)
        for index in recorded:
            record, transfers = items[index]
            self.first_seen.pop(record.path, None)
            result.transfers += [t.id for t in transfers if t.id is not None]
        if recorded:
            log.info("watcher took files", watcher=config.name, files=len(recorded))

    def _build(self, loaded: LoadedConfig, partner: str, file: str, entry: Entry) -> Transfer:
        config, service = self.config, self.owner.service
        info = {**config.transfer_info, "watcher": config.name, "watchedPath": entry.path}
        request = TransferRequest(
            rule=config.rule, partner=partner, file=file, output=entry.path, transfer_info=info
        )
        t = service.build(request)
        if config.output is None and not any(isinstance(v, str) for v in info.values()):
            return t
        ctx = TaskContext(transfer=t, now=self.owner.clock.now, timezone=loaded.tz)
        info = {k: substitute(v, ctx) if isinstance(v, str) else v for k, v in info.items()}
        output = substitute(config.output, ctx) if config.output is not None else entry.path
        request = request.model_copy(update={"output": output, "transfer_info": info})
        return service.build(request)


def _list(folder: Path, rule_folder: Path, config: WatcherConfig) -> Listing:
    """Blocking: the listing; the rule's own folder is made when missing (as at start)."""
    root = Path(os.path.normpath(rule_folder))
    if folder == root and not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
    return list_folder(
        Beneath.of(root, folder),
        recursive=config.recursive,
        include=config.include,
        exclude=config.exclude,
    )


def _error_text(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
    return str(exc)


class Watchers:
    """Every configured watcher's scan loop; started and stopped by the Gateway beside
    the scheduler. It decides which files become transfers, never how they run."""

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        service: TransferService,
        clock: Clock,
        observer: WatcherObserver,
        *,
        node: str,
        real_time: bool = True,
    ) -> None:
        self._loaded = loaded
        self.store = store
        self.service = service
        self.clock = clock
        self.observer = observer
        self.node = node
        # Settle times on the monotonic clock (the daemon), or on `clock` (tests that
        # drive a ManualClock).
        self.real_time = real_time
        self.watches: dict[str, _Watch] = {}
        self.running = False
        self._releasing: set[asyncio.Task[None]] = set()

    def loaded(self) -> LoadedConfig:
        return self._loaded

    async def start(self) -> None:
        self.running = True
        self.apply(self._loaded)

    def apply(self, loaded: LoadedConfig) -> None:
        """Follow a new configuration: new watchers start, removed ones stop, changed
        ones keep their settle memory and pause state."""
        self._loaded = loaded
        if not self.running:
            return
        for name in [n for n in self.watches if n not in loaded.watchers]:
            self._cancel(self.watches.pop(name))
        for name, config in loaded.watchers.items():
            known = self.watches.get(name)
            if known is None:
                watch = self.watches[name] = _Watch(self, config)
                watch.task = asyncio.create_task(watch.run(), name=f"watcher {name}")
            else:
                known.config = config
                known.live_valid = False
                known.wake.set()

    def _cancel(self, watch: _Watch) -> None:
        if watch.task is not None:
            watch.task.cancel()
        name = watch.config.name

        async def release() -> None:
            if watch.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch.task
            with contextlib.suppress(Exception):
                await self.store.release_watch_lock(name)

        task = asyncio.create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def stop(self) -> None:
        self.running = False
        watches = list(self.watches.values())
        self.watches.clear()
        for watch in watches:
            if watch.task is not None:
                watch.task.cancel()
        for watch in watches:
            if watch.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch.task
            with contextlib.suppress(Exception):
                await self.store.release_watch_lock(watch.config.name)

    def get(self, name: str) -> _Watch | None:
        return self.watches.get(name)

    async def fire(self, name: str) -> ScanResult:
        """Scan `name` now (even when paused), and say what it found."""
        watch = self.watches[name]
        return await watch.scan(forced=True)

    async def read_pause(self, name: str) -> None:
        """Copy the database's pause state of `name` into its state (a scan, the API)."""
        watch = self.watches.get(name)
        if watch is None:
            return
        found = (await self.store.pause_states("watcher")).get(name)
        state = watch.state
        state.paused = found is not None and found.paused
        state.paused_by = found.paused_by if found is not None else ""
        state.paused_at = found.paused_at if found is not None else None

    async def set_paused(self, name: str, paused: bool, by: str) -> None:
        """Pause or resume `name` on every node (the database keeps it, see above)."""
        watch = self.watches[name]
        await self.store.set_paused("watcher", name, paused, by, self.clock.now())
        await self.read_pause(name)
        if paused:
            watch.state.state = "paused"
        watch.wake.set()
