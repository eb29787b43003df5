"""The route table of the admin API: each handler declares its method, path, permission
and documentation in one place, so that the application (`app.py`) and the OpenAPI
document (`openapi.py`) are built from the same list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gatewayd.api.auth import Authenticator, Principal

if TYPE_CHECKING:
    from gatewayd.automation.pollers import PollerService
    from gatewayd.automation.schedules import ScheduleService
    from gatewayd.automation.watchers import Watchers
    from gatewayd.clock import Clock
    from gatewayd.config import LoadedConfig
    from gatewayd.console.live import LiveFeed
    from gatewayd.passwords import PasswordHashing
    from gatewayd.pipeline.service import TransferService
    from gatewayd.ports import ProtocolServer
    from gatewayd.store.base import Store


@dataclass(frozen=True)
class SchedulerState:
    """What `/api/about` says of the scheduler."""

    state: str  # running, stopping, stopped
    running: int  # transfers it launched that are still running
    queued: int  # due transfers waiting for a free slot


@dataclass
class ApiDeps:
    """The API's collaborators in the running gateway, given explicitly (the API never
    reaches the gateway itself)."""

    store: Store
    service: TransferService
    clock: Clock
    # The configuration in force now, and how to put a new one in force (rule changes).
    config: Callable[[], LoadedConfig]
    apply_config: Callable[[LoadedConfig], None]
    # The protocol listeners running now, by server name.
    listeners: Callable[[], Mapping[str, ProtocolServer]]
    scheduler: Callable[[], SchedulerState]
    # The Prometheus exposition of the gateway's metrics.
    metrics: Callable[[], bytes]
    # Password checks and hashes, off the event loop (shared with the protocol servers).
    hashing: PasswordHashing
    # The local folder watchers (None: a gateway without them, e.g. some tests).
    watchers: Watchers | None
    # Schedules and remote pollers (gatewayd.automation).
    schedules: ScheduleService
    pollers: PollerService


@dataclass
class ApiContext(ApiDeps):
    """What every handler reaches: the collaborators and the API's own state."""

    auth: Authenticator
    started: datetime
    # Rule changes (validate, write, reload, swap) happen one at a time.
    config_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The console's live stream of this node's running transfers (None: not running).
    feed: LiveFeed | None = None

    @property
    def loaded(self) -> LoadedConfig:
        return self.config()

    @property
    def tz(self) -> tzinfo:
        return self.config().tz


CONTEXT = web.AppKey("gatewayd_api", ApiContext)


@dataclass
class Call:
    """One authenticated request, as a handler sees it."""

    request: web.Request
    principal: Principal
    ctx: ApiContext

    async def audit(
        self, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record a change made through the API (returns once committed)."""
        await self.ctx.store.audit(self.principal.who, action, target, details)


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


# Schemas of query parameters, as the parsers (`body.Query`) check them: the document
# must refuse what the handler refuses, and allow what it accepts.
TEXT: Mapping[str, Any] = {"type": "string", "minLength": 1}
TIME_PARAM: Mapping[str, Any] = {"type": "string", "format": "date-time"}


def int_param(low: int, high: int | None = None) -> Mapping[str, Any]:
    """An integer query parameter of `low` to `high` (no bound: None)."""
    schema: dict[str, Any] = {"type": "integer", "minimum": low}
    if high is not None:
        schema["maximum"] = high
    return schema


@dataclass(frozen=True)
class Param:
    """A query parameter, for the documentation."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: dict(TEXT))
    repeated: bool = False
    required: bool = False


@dataclass(frozen=True)
class Route:
    """One operation. `area`/`letter` is the permission it needs (None: any
    authenticated user). `body` and the response schemas name components of the OpenAPI
    document."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    area: str | None
    letter: str | None
    tag: str
    responses: Mapping[int, tuple[str, str | None]]
    body: str | None = None
    body_yaml: bool = False  # the body may also be YAML (rules)
    query: tuple[Param, ...] = ()
    description: str = ""
    # When this says True for the running gateway, no credentials are asked (the
    # handler gets an anonymous principal).
    open_when: Callable[[ApiContext], bool] | None = None
    # The media type of the successful answers (errors are always JSON).
    answer_type: str = "application/json"
    # Needs no credentials at all (the console's page and login): `open_when` is always
    # true, and the OpenAPI document says so.
    public: bool = False


ROUTES: list[Route] = []

# Schemas of the OpenAPI document's components that handler modules add (name -> JSON
# schema), next to those `openapi.py` writes.
SCHEMAS: dict[str, dict[str, Any]] = {}

ANONYMOUS = Principal("(anonymous)")


def _always(ctx: ApiContext) -> bool:
    return True


def route(
    method: str,
    path: str,
    *,
    summary: str,
    area: str | None,
    letter: str | None,
    tag: str,
    responses: Mapping[int, tuple[str, str | None]],
    body: str | None = None,
    body_yaml: bool = False,
    query: tuple[Param, ...] = (),
    description: str = "",
    open_when: Callable[[ApiContext], bool] | None = None,
    answer_type: str = "application/json",
    public: bool = False,
) -> Callable[[Handler], Handler]:
    """Register the decorated handler in `ROUTES`."""

    if public:
        open_when = _always

    def register(handler: Handler) -> Handler:
        ROUTES.append(
            Route(
                method=method,
                path=path,
                handler=handler,
                operation_id=handler.__name__.strip("_"),
                summary=summary,
                area=area,
                letter=letter,
                tag=tag,
                responses=responses,
                body=body,
                body_yaml=body_yaml,
                query=query,
                description=description,
                open_when=open_when,
                answer_type=answer_type,
                public=public,
            )
        )
        return handler

    return register
