"""The admin API application and its listener.

`build_app` makes the aiohttp application from the route table; `ApiServer` runs it on
the configured address (HTTPS when a certificate is configured) inside the daemon's
event loop, next to the protocol servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import datetime
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

# The handler modules register their routes when imported.
from gatewayd.api import (  # noqa: F401
    about,
    console,
    inventory,
    keys,
    metrics,
    objects,
    openapi,
    pollers,
    r66,
    rules,
    schedules,
    tapis,
    tokens,
    transfers,
    watchers,
)
from gatewayd.api.auth import Authenticator, claimed_caller, open_authenticator
from gatewayd.api.errors import Handler, error_middleware
from gatewayd.api.refusals import CALLER, RefusedWrites
from gatewayd.api.routes import ANONYMOUS, CONTEXT, ROUTES, ApiContext, ApiDeps, Call, Route
from gatewayd.config.paths import absolute
from gatewayd.console.live import LiveFeed
from gatewayd.console.sessions import COOKIE
from gatewayd.model import Status
from gatewayd.store.base import Store, TransferFilter

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig

log = structlog.get_logger("gatewayd.api")

MAX_BODY = 1 << 20  # bytes; rules and transfer requests are far smaller
SHUTDOWN_GRACE = 2.0  # seconds
# Sent by the console's script with every request (see `_headers`).
CONSOLE_HEADER = "X-Gatewayd-Console"


def _endpoint(r: Route) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        if r.open_when is not None and r.open_when(ctx):
            return await r.handler(Call(request, ANONYMOUS, ctx))
        principal = await ctx.auth.authenticate(request)
        request[CALLER] = principal.who
        if r.area is not None and r.letter is not None:
            principal.require(r.area, r.letter)
        return await r.handler(Call(request, principal, ctx))

    handle.__name__ = r.handler.__name__
    return handle


REFUSED_WRITES = web.AppKey("gatewayd_refused_writes", RefusedWrites)


@web.middleware
async def _audit_refusals(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer passes here once it is final (errors already turned into JSON),
    whichever route, or none, took the request: refused writes go to the audit log."""
    response = await handler(request)
    if CALLER not in request:  # no route took it: nobody checked its credentials
        request[CALLER] = claimed_caller(request)
    await request.app[REFUSED_WRITES].record(request, response)
    return response


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    # Answers may carry tokens and private details: never cache them anywhere.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.headers.get(CONSOLE_HEADER) or COOKIE in request.cookies:
        # A Basic challenge would make the browser ask for a password in a dialog of
        # its own: the console asks with its login form.
        response.headers.popall("WWW-Authenticate", None)
    return response


def build_app(ctx: ApiContext) -> web.Application:
    """The application serving every route of `ROUTES` for the gateway of `ctx`."""
    app = web.Application(
        middlewares=[_headers, _audit_refusals, error_middleware], client_max_size=MAX_BODY
    )
    app[CONTEXT] = ctx
    app[REFUSED_WRITES] = RefusedWrites(ctx.store)
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _endpoint(r), name=r.operation_id)
    return app


async def _counts(store: Store) -> dict[str, int]:
    """Transfers per status in the database (every node's)."""
    found = {}
    for status in Status:
        _, total = await store.list_transfers(TransferFilter(statuses=(status,), limit=1))
        found[status.value] = total
    return found


def _tls_context(loaded: LoadedConfig) -> ssl.SSLContext | None:
    api = loaded.config.api
    if api.tls_cert is None or api.tls_key is None:
        return None
    home = loaded.paths.home
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(absolute(api.tls_cert, home), absolute(api.tls_key, home))
    return context


class ApiServer:
    """The API's listener inside the daemon."""

    def __init__(self, deps: ApiDeps, tls: ssl.SSLContext | None = None) -> None:
        self.deps = deps
        self.tls = tls  # prepared by Gateway.start() before anything listens
        self.auth: Authenticator | None = None
        self.refused_writes: RefusedWrites | None = None
        self._runner: web.AppRunner | None = None
        self.feed: LiveFeed | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.scheme = "http"

    async def start(self) -> None:
        """Listen; returns once connections are accepted (`port` is the bound port)."""
        deps = self.deps
        self.auth = await open_authenticator(
            lambda: deps.config().config.api,
            deps.store,
            deps.config().paths.state_dir,
            deps.clock.now,
            hashing=deps.hashing,
            shared=deps.config().config.database.backend == "postgresql",
        )
        started: datetime = deps.clock.now()
        self.feed = LiveFeed(
            running=lambda: [run.transfer for run in list(deps.service.engine.active.values())],
            node=deps.config().config.daemon.node_name(),
            tz=lambda: deps.config().tz,
            counts=lambda: _counts(deps.store),
        )
        context = ApiContext(**vars(deps), auth=self.auth, started=started, feed=self.feed)
        app = build_app(context)
        self.refused_writes = app[REFUSED_WRITES]
        tls = self.tls or _tls_context(deps.config())
        self.scheme = "https" if tls else "http"
        # Requests in flight at shutdown get a short grace, not aiohttp's minute.
        runner = web.AppRunner(
            app, access_log_format='%a "%r" %s %b %Tfs', shutdown_timeout=SHUTDOWN_GRACE
        )
        await runner.setup()
        api = deps.config().config.api
        site = web.TCPSite(runner, api.address, api.port, ssl_context=tls, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._feed_task = asyncio.create_task(self.feed.run(), name="console-live-feed")
        addresses = runner.addresses
        self.port = int(addresses[0][1]) if addresses else api.port
        log.info("api listening", address=api.address, port=self.port, scheme=self.scheme)

    async def stop(self) -> None:
        if self.feed is not None:
            self.feed.close()  # open event streams end now, not after the grace
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
