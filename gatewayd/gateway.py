"""The running gateway: ties the store, the pipeline, the scheduler and the servers.

The daemon (`gatewayd.daemon`) owns process concerns (lock, signals, logging) and drives
a `Gateway` through `start()` and `stop()`. Tests build one directly, with a manual
clock and pipeline hooks.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from gatewayd import ports
from gatewayd.api.shapes import transfer_json
from gatewayd.automation.pollers import PollerService
from gatewayd.automation.retention import AutomationRetention
from gatewayd.automation.schedules import ScheduleService
from gatewayd.automation.watchers import Watchers
from gatewayd.clock import Clock, SystemClock
from gatewayd.cluster.bus import Bus
from gatewayd.config import LoadedConfig
from gatewayd.config.files import FileError, server_tls_context
from gatewayd.config.paths import absolute
from gatewayd.config.schema import ServerConfig
from gatewayd.crypto.keyring import Keyring, KeyringError
from gatewayd.errors import TaskError
from gatewayd.metrics import GatewayMetrics, LiveState
from gatewayd.model import Status, Transfer
from gatewayd.passwords import Argon2Parameters, PasswordHashing
from gatewayd.pipeline.auth_throttle import LoginThrottle
from gatewayd.pipeline.clients import ClientPool
from gatewayd.pipeline.engine import Engine, Hooks, Runtime
from gatewayd.pipeline.leftovers import sweep_placed_temps
from gatewayd.pipeline.limits import TransferLimits
from gatewayd.pipeline.logins import Logins
from gatewayd.pipeline.preregister import Expirer
from gatewayd.pipeline.server import CoreServerContext
from gatewayd.pipeline.service import TransferService
from gatewayd.pipeline.shared_throttle import login_throttle
from gatewayd.pipeline.tree import VirtualTree
from gatewayd.requests import RequestError, TransferRequest
from gatewayd.scheduler import Scheduler
from gatewayd.store.base import Store, TransferFilter

if TYPE_CHECKING:
    from gatewayd.api import ApiServer
    from gatewayd.api.routes import ApiDeps

log = structlog.get_logger("gatewayd")

_Prepared = tuple[str, ServerConfig, ports.ProtocolServer]


class StartError(Exception):
    """The gateway cannot start: the message names the server (or the API) and the
    file or address at fault."""


@dataclass(frozen=True)
class Stopped:
    """How a stop ended: clean when no run was left going and no row of ours is left
    RUNNING (`running_rows` is -1 when the store could not tell)."""

    seconds: float
    runs_left: int = 0
    running_rows: int = 0
    # Some of the rows left RUNNING, for the log.
    running_ids: list[int] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.runs_left == 0 and self.running_rows == 0


class Gateway:
    """Everything that runs inside the daemon once the store is open."""

    def __init__(
        self,
        loaded: LoadedConfig,
        store: Store,
        *,
        clock: Clock | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.store = store
        self.clock = clock or SystemClock()
        self.servers: dict[str, ports.ProtocolServer] = {}
        self.api: ApiServer | None = None
        # Built first: the engine is given its observer, the store its commit callback.
        self.metrics = GatewayMetrics(
            LiveState(
                running=lambda: [run.transfer for run in list(self.engine.active.values())],
                sessions=self._sessions,
                queue_depth=lambda: self.scheduler.queue_depth(),
                schedules=lambda: self.schedules.counts(),
                pollers=lambda: self.pollers.counts(),
                keys=self._key_expiry,
            ),
            node=loaded.config.daemon.node_name(),
        )
        store.observe_commits(self.metrics.db_write.observe)
        # Password hashes run in worker processes of their own (started by start()),
        # never on the event loop or on the threads that write files.
        passwords = loaded.config.passwords
        self.hashing = PasswordHashing(
            workers=passwords.workers,
            max_queue=passwords.max_queue,
            params=Argon2Parameters(**passwords.argon2.model_dump()),
            nice=passwords.nice,
        )
        self.clients = ClientPool(loaded)
        # The OpenPGP keys of `keys:`, imported into a keyring of our own by prepare().
        self.keyring = Keyring(loaded.paths.state_dir, loaded.config.daemon.node_name())
        self.rt = Runtime(
            loaded,
            store,
            self.clock,
            self.clients,
            hooks or Hooks(),
            create_transfer=self._create_from_task,
            observer=self.metrics,
            keyring=self.keyring,
            # NOTIFY posts a transfer in the API's shape.
            transfer_json=lambda t: transfer_json(t, self.rt.loaded.tz),
        )
        self.engine = Engine(self.rt)
        scheduler = loaded.config.scheduler
        self.scheduler = Scheduler(
            store,
            self._run_planned,
            max_transfers=scheduler.max_transfers,
            max_per_partner=scheduler.max_per_partner,
            partner_limits=_partner_limits(loaded),
            clock=self.clock,
            goes_alone=self.engine.goes_alone,
            node=loaded.config.daemon.node_name(),
        )
        self.expirer = Expirer(store, self.clock)
        self.service = TransferService(
            self.engine, wake=self._new_work, preregistered=self.expirer.wake
        )
        # Local folder watchers: they make client transfers through the service.
        self.watchers = Watchers(
            loaded,
            store,
            self.service,
            self.clock,
            self.metrics,
            node=loaded.config.daemon.node_name(),
            real_time=isinstance(self.clock, SystemClock),
        )
        # Several nodes on one database: control from any node, wake-ups, rule notices.
        daemon = loaded.config.daemon
        self.bus = Bus(
            store,
            daemon.node_name(),
            self.service,
            wake=self.scheduler.wake,
            timeout=daemon.command_timeout,
            poll=daemon.cluster_poll,
            notify=daemon.cluster_notify,
        )
        if self.bus.enabled:
            self.service.forwarder = self.bus
        self.schedules = ScheduleService(
            store, self.service, self.clock, loaded, daemon.node_name()
        )
        self.pollers = PollerService(
            store, self.service, self.clients, self.clock, loaded, daemon.node_name()
        )
        self.retention = AutomationRetention(store, self.clock, daemon.automation_retention)
        # One of each for every server: login failures and an account's transfers add
        # up whatever the protocol.
        # Counted in the database when nodes share it: guesses add up over the nodes.
        self.logins = Logins(
            lambda: self.config.accounts,
            on_failure=self.metrics.login_failed,
            throttle=login_throttle(
                store, "partners", shared=loaded.config.database.backend == "postgresql"
            ),
            hashing=self.hashing,
        )
        self.limits = TransferLimits()
        self.tree = VirtualTree(self.engine)
        self._prepared: tuple[list[_Prepared], ssl.SSLContext | None] | None = None

    @property
    def auth_throttle(self) -> LoginThrottle:
        return self.logins.throttle

    def _key_expiry(self) -> list[tuple[str, float | None]]:
        now = self.clock.now().timestamp()
        return [
            (name, key.info.expires.timestamp() - now if key.info.expires else None)
            for name, key in self.keyring.keys().items()
        ]

    async def load_keys(self, loaded: LoadedConfig) -> None:
        """Import the keys of `loaded` into a fresh keyring and put it in use (at start
        and on reload); KeyringError when one fails (the keyring in use is kept)."""
        if not loaded.config.keys and self.keyring.current is None:
            return
        await self.keyring.load(loaded.config.keys, loaded.key_infos, loaded.paths.home)

    def _sessions(self) -> list[tuple[str, str, int]]:
        found = []
        for name, server in list(self.servers.items()):
            count = server.session_count
            config = self.config.servers.get(name)
            if count is not None:
                found.append((name, config.protocol if config else "", count))
        return found

    def _new_work(self) -> None:
        """Transfers were created or resumed: this node's scheduler and the others' look."""
        self.scheduler.wake()
        self.bus.due()

    async def _run_planned(self, transfer: Transfer) -> None:
        try:
            await self.engine.run_planned(transfer)
        finally:
            self.bus.slot_freed(self.scheduler.queue_depth(), self.engine.shutting_down)

    def _apply_from_api(self, loaded: LoadedConfig) -> None:
        self.apply_config(loaded)
        self.bus.rules_changed()

    async def _create_from_task(self, request: TransferRequest, *, parent: Transfer) -> Transfer:
        try:
            return await self.service.create(request, parent=parent, trusted=True)
        except RequestError as exc:
            raise TaskError(f"invalid transfer request: {exc}") from None

    def server_context(self, name: str, protocol: str) -> CoreServerContext:
        """What a protocol server named `name` gets from the core."""
        return CoreServerContext(
            self.engine, name, protocol, logins=self.logins, limits=self.limits, tree=self.tree
        )

    async def prepare(self) -> tuple[list[_Prepared], ssl.SSLContext | None]:
        """Everything of `start()` that touches no transfer row and listens nowhere:
        every enabled server prepared (keys and certificates loaded), the API's TLS
        context, the password workers. Slow (imports, keys, processes), so the daemon
        does it before its node joins the cluster: the lease then starts on a node
        ready to go. Done once; `start()` calls it when nobody did."""
        if self._prepared is not None:
            return self._prepared
        prepared: list[_Prepared] = []
        for name, server_config in self.config.servers.items():
            if not server_config.enabled:
                continue
            spec = ports.get(server_config.protocol)
            if spec is None or spec.server_factory is None:
                raise StartError(
                    f"server '{name}': protocol {server_config.protocol} has no server side"
                )
            server = spec.server_factory(
                name, server_config, self.server_context(name, server_config.protocol)
            )
            try:
                await server.prepare()
            except Exception as exc:
                raise StartError(f"server '{name}': {exc}") from exc
            prepared.append((name, server_config, server))
        api_tls = await self._prepare_api_tls()
        try:
            await self.load_keys(self.loaded)
        except KeyringError as exc:
            raise StartError(f"OpenPGP keys: {exc}") from exc
        if self.config.api.enabled:
            import gatewayd.api  # noqa: F401  (aiohttp: imported here, not at the start)
        await self.hashing.start()
        self._prepared = (prepared, api_tls)
        return self._prepared

    async def start(self) -> None:
        """Prepare every enabled server and the API's TLS context, then start the
        scheduler, the servers and the API; return once all listen.

        Nothing listens before everything is known to load: a server whose preparation
        fails (a key file gone, a certificate that does not load) raises StartError
        before any listener opens. A listener that then cannot bind raises StartError
        too (the servers already started are left for `stop()`). The scheduler starts
        before the servers: it plans what a restart may take further alone (server
        transfers whose data is complete, or placed by a crash) before any partner can
        reconnect to such a transfer.
        """
        prepared, api_tls = await self.prepare()
        # Before any partner connects, and on a shared database only names older than
        # a lease: another node may be placing a file right now.
        lease = self.config.daemon.lease if self.store.shared else 0.0
        await sweep_placed_temps(
            self.loaded, self.store, grace=3 * lease, unrecorded=not self.store.shared
        )
        await self.scheduler.start()
        await self.bus.start()
        await self.schedules.start()
        await self.pollers.start()
        self.retention.start()
        for name, server_config, server in prepared:
            try:
                await server.start()
            except OSError as exc:
                raise StartError(
                    f"server '{name}': cannot listen on {server_config.address}:"
                    f"{server_config.port}: {exc.strerror or exc}"
                ) from exc
            self.servers[name] = server
            log.info(
                "server listening",
                server=name,
                protocol=server_config.protocol,
                address=server_config.address,
                port=server.bound_port,
            )
        self.expirer.start()
        await self.watchers.start()
        if self.config.api.enabled:
            from gatewayd.api import ApiServer  # the API pulls in aiohttp: only when used

            self.api = ApiServer(self._api_deps(), tls=api_tls)
            try:
                await self.api.start()
            except OSError as exc:
                api = self.config.api
                raise StartError(
                    f"the API: cannot listen on {api.address}:{api.port}: {exc.strerror or exc}"
                ) from exc

    def _api_deps(self) -> ApiDeps:
        from gatewayd.api.routes import ApiDeps, SchedulerState

        def scheduler() -> SchedulerState:
            if self.engine.shutting_down:
                state = "stopping"
            else:
                state = "running" if self.scheduler.alive else "stopped"
            return SchedulerState(state, len(self.scheduler.running), self.scheduler.queue_depth())

        return ApiDeps(
            store=self.store,
            service=self.service,
            clock=self.clock,
            config=lambda: self.loaded,
            apply_config=self._apply_from_api,
            listeners=lambda: self.servers,
            scheduler=scheduler,
            metrics=self.metrics.render,
            hashing=self.hashing,
            watchers=self.watchers,
            schedules=self.schedules,
            pollers=self.pollers,
        )

    async def _prepare_api_tls(self) -> ssl.SSLContext | None:
        api = self.config.api
        if not api.enabled or api.tls_cert is None or api.tls_key is None:
            return None
        home = self.loaded.paths.home
        cert, key = absolute(api.tls_cert, home), absolute(api.tls_key, home)
        try:
            return await asyncio.to_thread(server_tls_context, cert, key)
        except FileError as exc:
            raise StartError(f"the API: {exc}") from exc

    @property
    def api_port(self) -> int | None:
        """The port the admin API listens on (None when it does not)."""
        return self.api.port if self.api is not None else None

    def apply_config(self, loaded: LoadedConfig) -> None:
        """Switch the running gateway to a new valid configuration (rules changed through
        the API; a reload). Running transfers keep the chains they were created with;
        new limits apply to the next launches. Servers and the API keep their listeners
        until a restart."""
        self.loaded = loaded
        self.config = loaded.config
        self.rt.loaded = loaded
        self.clients.loaded = loaded
        self.watchers.apply(loaded)
        scheduler = loaded.config.scheduler
        self.scheduler.set_limits(
            max_transfers=scheduler.max_transfers,
            max_per_partner=scheduler.max_per_partner,
            partner_limits=_partner_limits(loaded),
        )
        self.schedules.reload(loaded)
        self.pollers.reload(loaded)
        self.retention.retention = loaded.config.daemon.automation_retention

    async def stop(self, timeout: float) -> Stopped:
        """Stop within about `timeout` seconds, so that no partner loses an answer:

        1. nothing new is taken: the engine refuses new transfers, every server stops
           accepting connections, logins and requests (open sessions stay), the API,
           the expirer and the scheduler stop;
        2. the engine stops: uploads in the middle of their data end INTERRUPTED at once
           (durable bytes kept), transfers a partner waits for (its close arrived) run
           to their end within what is left of the timeout;
        3. each server waits (within what is left) until the answers of those
           completions are written to their partners, then closes its sessions.

        Returns how it ended: clean only when no run is left and no row is RUNNING.
        """
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        deadline = loop.time() + timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        self.engine.shutting_down = True
        servers = list(self.servers.items())
        await _all(left(), [("stop accepting", n, s.stop_accepting) for n, s in servers])
        if self.api is not None:
            await _all(left(), [("stop", "api", self.api.stop)])
        await _all(left(), [("stop", "expirer", self.expirer.stop)])
        await _all(left(), [("stop", "watchers", self.watchers.stop)])
        await _all(
            left(),
            [
                ("stop", "schedules", self.schedules.stop),
                ("stop", "pollers", self.pollers.stop),
                ("stop", "retention", self.retention.stop),
            ],
        )
        await _all(left(), [("stop", "cluster bus", self.bus.stop)])
        await _all(left(), [("stop", "scheduler", self.scheduler.stop)])

        await self.engine.stop_all(left())

        # A completion that ended at the deadline still gets a moment for its answer.
        grace = max(left(), 0.2)
        await _all(
            grace + 1.0,
            [("stop", n, functools.partial(s.stop, grace)) for n, s in servers],
        )
        # The scheduler's runners record how their runs ended (another attempt...).
        await _all(max(left(), 0.5), [("finish", "scheduler", self.scheduler.wait_idle)])
        await self.clients.close_all()
        await self.hashing.close()
        await self.keyring.close()
        return await self._stopped(began)

    async def _stopped(self, began: float) -> Stopped:
        """What the stop left: runs still going, and rows of ours still RUNNING (with
        SQLite, one node, every RUNNING row is ours; with PostgreSQL, those it owns:
        the other nodes' are theirs)."""
        runs_left = len([r for r in self.engine.active.values() if not r.done.is_set()])
        shared = self.config.database.backend == "postgresql"
        owner = self.config.daemon.node_name() if shared else None
        try:
            rows, total = await self.store.list_transfers(
                TransferFilter(statuses=(Status.RUNNING,), owner=owner, limit=20)
            )
        except Exception:
            log.exception("cannot tell which transfers are left running")
            return Stopped(time.monotonic() - began, runs_left, -1)
        ids = [t.id for t in rows if t.id is not None]
        return Stopped(time.monotonic() - began, runs_left, total, ids)


async def _all(timeout: float, steps: list[tuple[str, str, Callable[[], Awaitable[None]]]]) -> None:
    """Run the `(what, whose, step)` steps at once, bounded by `timeout`: a step that
    fails or overruns is logged, and the stop goes on."""
    if not steps:
        return
    tasks = {asyncio.ensure_future(step()): (what, whose) for what, whose, step in steps}
    done, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
    for task in pending:
        what, whose = tasks[task]
        log.warning("stop step overran its time", step=what, of=whose, timeout=round(timeout, 2))
        task.cancel()
    for task in done:
        if not task.cancelled() and (error := task.exception()) is not None:
            what, whose = tasks[task]
            log.error("stop step failed", step=what, of=whose, error=repr(error))
    if pending:
        await asyncio.wait(pending, timeout=1.0)


def _partner_limits(loaded: LoadedConfig) -> dict[str, int]:
    return {
        name: p.max_transfers
        for name, p in loaded.config.partners.items()
        if p.max_transfers is not None
    }
