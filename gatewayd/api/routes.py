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
    from gatewayd.config import LoadedConfig
    from gatewayd.gateway import Gateway


@dataclass
class ApiContext:
    """What every handler reaches: the running gateway and the API's own state."""

    gateway: Gateway
    auth: Authenticator
    started: datetime
    # Rule changes (validate, write, reload, swap) happen one at a time.
    config_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def loaded(self) -> LoadedConfig:
        return self.gateway.loaded

    @property
    def tz(self) -> tzinfo:
        return self.gateway.loaded.tz


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
        await self.ctx.gateway.store.audit(self.principal.who, action, target, details)


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Param:
    """A query parameter, for the documentation."""

    name: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
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


ROUTES: list[Route] = []

# Schemas of the OpenAPI document's components that handler modules add (name -> JSON
# schema), next to those `openapi.py` writes.
SCHEMAS: dict[str, dict[str, Any]] = {}

ANONYMOUS = Principal("(anonymous)")


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
) -> Callable[[Handler], Handler]:
    """Register the decorated handler in `ROUTES`."""

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
            )
        )
        return handler

    return register
