"""The running gateway: ties the store, the pipeline, the scheduler and the servers.

The daemon (`gatewayd.daemon`) owns process concerns (lock, signals, logging) and drives
a `Gateway` through `start()` and `stop()`. Tests build one directly, with a manual
clock and pipeline hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING

import structlog

from gatewayd import ports
from gatewayd.clock import Clock, SystemClock
from gatewayd.config import LoadedConfig
from gatewayd.config.files import FileError, server_tls_context
from gatewayd.config.paths import absolute
from gatewayd.config.schema import ServerConfig
from gatewayd.errors import TaskError
from gatewayd.metrics import GatewayMetrics, LiveState
from gatewayd.model import Transfer
from gatewayd.pipeline.auth_throttle import AuthThrottle
from gatewayd.pipeline.clients import ClientPool
from gatewayd.pipeline.engine import Engine, Hooks, Runtime
from gatewayd.pipeline.limits import TransferLimits
from gatewayd.pipeline.logins import Logins
from gatewayd.pipeline.preregister import Expirer
from gatewayd.pipeline.server import CoreServerContext
from gatewayd.pipeline.service import TransferService
from gatewayd.pipeline.tree import VirtualTree
from gatewayd.requests import RequestError, TransferRequest
from gatewayd.scheduler import Scheduler
from gatewayd.store.base import Store

if TYPE_CHECKING:
    from gatewayd.api import ApiServer
    from gatewayd.api.routes import ApiDeps

log = structlog.get_logger("gatewayd")


class StartError(Exception):
    """The gateway cannot start: the message names the server (or the API) and the
    file or address at fault."""


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
            )
        )
        store.observe_commits(self.metrics.db_write.observe)
        self.clients = ClientPool(loaded)
        self.rt = Runtime(
            loaded,
            store,
            self.clock,
            self.clients,
            hooks or Hooks(),
            create_transfer=self._create_from_task,
            observer=self.metrics,
        )
        self.engine = Engine(self.rt)
        scheduler = loaded.config.scheduler
        self.scheduler = Scheduler(
            store,
            self.engine.run_planned,
            max_transfers=scheduler.max_transfers,
            max_per_partner=scheduler.max_per_partner,
            partner_limits=_partner_limits(loaded),
            clock=self.clock,
            goes_alone=self.engine.goes_alone,
            node=loaded.config.daemon.node_name(),
        )
        self.expirer = Expirer(store, self.clock)
        self.service = TransferService(
            self.engine, wake=self.scheduler.wake, preregistered=self.expirer.wake
        )
        # One of each for every server: login failures and an account's transfers add
        # up whatever the protocol.
        self.logins = Logins(lambda: self.config.accounts, on_failure=self.metrics.login_failed)
        self.limits = TransferLimits()
        self.tree = VirtualTree(self.engine)

    @property
    def auth_throttle(self) -> AuthThrottle:
        return self.logins.throttle

    def _sessions(self) -> list[tuple[str, str, int]]:
        found = []
        for name, server in list(self.servers.items()):
            count = server.session_count
            config = self.config.servers.get(name)
            if count is not None:
                found.append((name, config.protocol if config else "", count))
        return found

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
        prepared: list[tuple[str, ServerConfig, ports.ProtocolServer]] = []
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
        await self.scheduler.start()
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
            apply_config=self.apply_config,
            listeners=lambda: self.servers,
            scheduler=scheduler,
            metrics=self.metrics.render,
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
        scheduler = loaded.config.scheduler
        self.scheduler.set_limits(
            max_transfers=scheduler.max_transfers,
            max_per_partner=scheduler.max_per_partner,
            partner_limits=_partner_limits(loaded),
        )

    async def stop(self, timeout: float) -> None:
        """Stop accepting work, interrupt running transfers with their state saved
        (status INTERRUPTED), and return within about `timeout` seconds."""
        self.engine.shutting_down = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                if self.api is not None:
                    with contextlib.suppress(Exception):
                        await self.api.stop()
                await self.expirer.stop()
                await self.scheduler.stop()
                for server in self.servers.values():
                    with contextlib.suppress(Exception):
                        await server.stop()
        await self.engine.stop_all(max(1.0, timeout / 2))
        await self.clients.close_all()


def _partner_limits(loaded: LoadedConfig) -> dict[str, int]:
    return {
        name: p.max_transfers
        for name, p in loaded.config.partners.items()
        if p.max_transfers is not None
    }
