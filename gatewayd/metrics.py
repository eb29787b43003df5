"""Prometheus metrics of the gateway (served at `/metrics` by the admin API).

Counters and histograms are fed as things happen, through the engine's `Observer`
(transfers, bytes, tasks, login failures) and the store's commit callback (write
latency). Gauges (running transfers, sessions, the scheduler's queue) are read from
the running gateway at each scrape, so they can never drift.

Each gateway has its own registry: several gateways in one process (tests) never mix.
Every series carries the label `node` (`daemon.node`, else the host name): each node of a
cluster reports its own, and a Prometheus scraping them all can tell them apart or add
them up. It is added at scrape time (`_NodeLabel`), so the metrics are defined and fed
without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from gatewayd.model import Transfer
from gatewayd.pipeline.engine import Observer

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "LiveState"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a small file on loopback to a large one over a slow link.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600)
# A batch commit takes a fraction of a millisecond to a disk's worst moments.
DB_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def _direction(t: Transfer) -> str:
    return "send" if t.is_send else "receive"


class _Live:
    """Per running transfer: when it started and what has been counted of its bytes."""

    __slots__ = ("began", "counted")

    def __init__(self, counted: int) -> None:
        self.began = time.monotonic()
        self.counted = counted


@dataclass(frozen=True)
class LiveState:
    """What the gauges read from the running gateway at each scrape."""

    # The transfers running now.
    running: Callable[[], Iterable[Transfer]]
    # (server, protocol, sessions open now) of the servers that count them.
    sessions: Callable[[], Iterable[tuple[str, str, int]]]
    # Due transfers waiting for a free slot.
    queue_depth: Callable[[], int]
    # Per schedule, what its firings did on this node: {outcome: count}.
    schedules: Callable[[], Iterable[tuple[str, Mapping[str, int]]]] = lambda: ()
    # Per poller: {outcome: count} of its files, its looks, the matching files seen now.
    pollers: Callable[[], Iterable[tuple[str, Mapping[str, int], int, int]]] = lambda: ()
    # OpenPGP keys: (name, seconds until it expires; None: it never does).
    keys: Callable[[], Iterable[tuple[str, float | None]]] = lambda: ()


class GatewayMetrics(Observer):
    """The metrics of one gateway and the observer that feeds them (the engine's
    observer and the store's commit callback, given when they are built)."""

    def __init__(self, state: LiveState, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter(
            "gatewayd_transfers_started",
            "Transfer runs started (a resumed transfer starts again)",
            ["protocol", "direction", "rule"],
            registry=r,
        )
        self.finished = Counter(
            "gatewayd_transfers_finished",
            "Transfer runs ended, by the status they ended in",
            ["protocol", "direction", "rule", "status"],
            registry=r,
        )
        self.bytes = Counter(
            "gatewayd_transfer_bytes",
            "Bytes durably received or confirmed sent",
            ["protocol", "direction"],
            registry=r,
        )
        self.duration = Histogram(
            "gatewayd_transfer_duration_seconds",
            "Duration of transfer runs, by the status they ended in",
            ["protocol", "direction", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.task_runs = Counter(
            "gatewayd_task_runs", "Tasks run (pre, post and error chains)", ["type"], registry=r
        )
        self.task_failures = Counter(
            "gatewayd_task_failures", "Tasks that failed", ["type"], registry=r
        )
        self.login_failures = Counter(
            "gatewayd_login_failures",
            "Refused partner logins (bad password, or banned after too many)",
            ["server", "protocol"],
            registry=r,
        )
        self.db_write = Histogram(
            "gatewayd_db_write_seconds",
            "Time to write and commit one batch of database writes",
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.watcher_scans = Counter(
            "gatewayd_watcher_scans",
            "Scans of its folder by each local watcher, by how they ended (ok, error)",
            ["watcher", "result"],
            registry=r,
        )
        self.watcher_files = Counter(
            "gatewayd_watcher_files",
            "Files seen by each local watcher's scans, by what became of them "
            "(taken, too_young, too_small, already_sent, excluded, refused)",
            ["watcher", "outcome"],
            registry=r,
        )
        self.watcher_scan_seconds = Histogram(
            "gatewayd_watcher_scan_seconds",
            "Time of one scan of a local watcher (listing, settle, recording)",
            ["watcher"],
            buckets=DB_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(state))
        self._live: dict[int, _Live] = {}
        self._exposed = CollectorRegistry(auto_describe=False)
        self._exposed.register(_NodeLabel(self.registry, node))

    def render(self) -> bytes:
        """The text exposition format of every metric, each series labelled `node`."""
        return generate_latest(self._exposed)

    # ------------------------------------------------------------------ the observer

    def run_started(self, transfer: Transfer) -> None:
        if transfer.id is None:
            return
        self._live[transfer.id] = _Live(transfer.progress)
        self.started.labels(transfer.protocol, _direction(transfer), transfer.rule).inc()

    def progress(self, transfer: Transfer, offset: int) -> None:
        live = self._live.get(transfer.id) if transfer.id is not None else None
        if live is not None and offset > live.counted:
            self.bytes.labels(transfer.protocol, _direction(transfer)).inc(offset - live.counted)
            live.counted = offset

    def run_ended(self, transfer: Transfer) -> None:
        if transfer.id is None:
            return
        self.progress(transfer, transfer.progress)  # the last bytes, not throttled
        live = self._live.pop(transfer.id, None)
        status = transfer.status.value
        direction = _direction(transfer)
        self.finished.labels(transfer.protocol, direction, transfer.rule, status).inc()
        if live is not None:
            self.duration.labels(transfer.protocol, direction, status).observe(
                time.monotonic() - live.began
            )

    def task_ran(self, task_type: str, ok: bool) -> None:
        self.task_runs.labels(task_type).inc()
        if not ok:
            self.task_failures.labels(task_type).inc()

    def login_failed(self, server: str, protocol: str) -> None:
        self.login_failures.labels(server, protocol).inc()

    def watcher_scanned(
        self, watcher: str, seconds: float, outcomes: dict[str, int], error: bool
    ) -> None:
        """One scan of `watcher` ended (the watchers' observer)."""
        self.watcher_scans.labels(watcher, "error" if error else "ok").inc()
        self.watcher_scan_seconds.labels(watcher).observe(seconds)
        for outcome, count in outcomes.items():
            if count:
                self.watcher_files.labels(watcher, outcome).inc(count)


class _StateCollector(Collector):
    """Gauges read from the running gateway at scrape time."""

    def __init__(self, state: LiveState) -> None:
        self.state = state

    def describe(self) -> Iterable[Metric]:
        return list(self._families(empty=True))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(empty=False))

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        state = self.state
        running = GaugeMetricFamily(
            "gatewayd_transfers_running",
            "Transfers running now",
            labels=["protocol", "direction"],
        )
        sessions = GaugeMetricFamily(
            "gatewayd_sessions",
            "Sessions open now on each server (HTTP: requests in progress)",
            labels=["server", "protocol"],
        )
        queue = GaugeMetricFamily(
            "gatewayd_scheduler_queue_depth",
            "Due client transfers waiting for a free slot",
        )
        if not empty:
            counts: dict[tuple[str, str], int] = {}
            for t in state.running():
                key = (t.protocol, _direction(t))
                counts[key] = counts.get(key, 0) + 1
            for (protocol, direction), count in sorted(counts.items()):
                running.add_metric([protocol, direction], count)
            for name, protocol, count in sorted(state.sessions()):
                sessions.add_metric([name, protocol], count)
            queue.add_metric([], state.queue_depth())
        yield running
        yield sessions
        yield queue
        yield from _automation(state, empty=empty)
        yield from _keys(state, empty=empty)


# A key expiring within this many seconds counts in gatewayd_keys_expiring_soon.
_KEY_SOON = 30 * 86400


def _keys(state: LiveState, *, empty: bool) -> Iterator[Metric]:
    """The OpenPGP keys' expiry, computed at scrape time."""
    left = GaugeMetricFamily(
        "gatewayd_key_expiry_seconds",
        "Seconds until each configured OpenPGP key expires (negative: expired; keys "
        "that never expire are not listed)",
        labels=["key"],
    )
    soon = GaugeMetricFamily(
        "gatewayd_keys_expiring_soon",
        "Configured OpenPGP keys that expire within 30 days (or have expired)",
    )
    if not empty:
        count = 0
        for name, seconds in sorted(state.keys(), key=lambda item: item[0]):
            if seconds is None:
                continue
            left.add_metric([name], seconds)
            count += seconds < _KEY_SOON
        soon.add_metric([], count)
    yield left
    yield soon


def _automation(state: LiveState, *, empty: bool) -> Iterator[Metric]:
    """Schedules and pollers, read from their services' counts at scrape time."""
    firings = CounterMetricFamily(
        "gatewayd_schedule_firings",
        "Firings of each schedule on this node: fired (transfer made), duplicate (another "
        "node or run made it), skipped (paused, or missed with catch_up: skip), error",
        labels=["schedule", "outcome"],
    )
    files = CounterMetricFamily(
        "gatewayd_poller_files",
        "Remote files a poller made a transfer of (taken) or could not (skipped)",
        labels=["poller", "outcome"],
    )
    polls = CounterMetricFamily(
        "gatewayd_poller_polls", "Looks at the partner's folder", labels=["poller"]
    )
    seen = GaugeMetricFamily(
        "gatewayd_poller_files_seen",
        "Matching files in the poller's last listing",
        labels=["poller"],
    )
    if not empty:
        for name, counts in sorted(state.schedules()):
            for outcome, count in sorted(counts.items()):
                firings.add_metric([name, outcome], count)
        for name, counts, looks, now_seen in sorted(state.pollers()):
            for outcome, count in sorted(counts.items()):
                files.add_metric([name, outcome], count)
            polls.add_metric([name], looks)
            seen.add_metric([name], now_seen)
    yield firings
    yield files
    yield polls
    yield seen


class _NodeLabel(Collector):
    """The metrics of `registry`, each sample with the label `node` added."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self.registry = registry
        self.node = node

    def collect(self) -> Iterable[Metric]:
        found = []
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "node": self.node})
                for sample in family.samples
            ]
            found.append(labelled)
        return found
