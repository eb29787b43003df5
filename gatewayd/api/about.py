"""`/api/about` (what is running and how it is) and `/api/audit` (who changed what)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gatewayd import __version__
from gatewayd.api.body import Query
from gatewayd.api.routes import Call, Param, int_param, route
from gatewayd.api.shapes import rfc3339

_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad query", "Errors"),
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
DB_TIMEOUT = 5.0


async def _database(call: Call) -> dict[str, Any]:
    try:
        async with asyncio.timeout(DB_TIMEOUT):
            version = await call.ctx.store.schema_version()
    except Exception as exc:  # reported, not raised: /about must answer when the DB does not
        return {"state": "error", "message": f"{type(exc).__name__}: {exc}"}
    return {
        "state": "ok",
        "backend": call.ctx.loaded.config.database.backend,
        "schemaVersion": version,
    }


async def _nodes(call: Call) -> list[dict[str, Any]]:
    """The nodes of the database, as their records say (the marker's token left out);
    [] when the database does not answer (`database` says why)."""
    this = call.ctx.loaded.config.daemon.node_name()
    tz = call.ctx.tz
    try:
        async with asyncio.timeout(DB_TIMEOUT):
            store = call.ctx.store
            nodes = await store.list_nodes(await store.db_now())
    except Exception:
        return []
    return [
        {
            "name": n.name,
            "this": n.name == this,
            "host": n.host,
            "pid": n.pid,
            "version": n.version,
            "api": n.api,
            "started": rfc3339(n.started, tz),
            "heartbeat": rfc3339(n.heartbeat, tz),
            "lease": n.lease,
            "alive": n.alive,
            "running": n.running,
            "stopped": None if n.stopped is None else rfc3339(n.stopped, tz),
            "takenOverBy": n.taken_over_by,
            "takenOverAt": None if n.taken_over_at is None else rfc3339(n.taken_over_at, tz),
        }
        for n in nodes
    ]


@route(
    "GET",
    "/api/about",
    summary=(
        "Version, uptime, and the state of each server, the database, the scheduler and the nodes"
    ),
    area=None,
    letter=None,
    tag="administration",
    responses={200: ("The gateway's state", "About"), **_ERRORS},
)
async def about(call: Call) -> web.StreamResponse:
    now = call.ctx.clock.now()
    servers = {}
    listeners = call.ctx.listeners()
    for name, config in sorted(call.ctx.loaded.config.servers.items()):
        running = listeners.get(name)
        servers[name] = {
            "protocol": config.protocol,
            "state": "running" if running else "stopped" if config.enabled else "disabled",
            "address": config.address,
            "port": running.bound_port if running else config.port,
        }
    scheduler = call.ctx.scheduler()
    return web.json_response(
        {
            "name": "gatewayd",
            "version": __version__,
            "started": rfc3339(call.ctx.started, call.ctx.tz),
            "uptime": round(max(0.0, (now - call.ctx.started).total_seconds()), 3),
            "timezone": str(call.ctx.tz),
            "user": call.principal.user,
            "permissions": dict(call.principal.permissions),
            "servers": servers,
            "database": await _database(call),
            "node": call.ctx.loaded.config.daemon.node_name(),
            "nodes": await _nodes(call),
            "scheduler": {
                "state": scheduler.state,
                "running": scheduler.running,
                "queued": scheduler.queued,
            },
        }
    )


@route(
    "GET",
    "/api/audit",
    summary="The audit log: changes made through the API, newest first",
    area="administration",
    letter="r",
    tag="administration",
    query=(
        Param("limit", "Page size (default 100, at most 1000)", int_param(1, 1000)),
        Param("offset", "Entries to skip", int_param(0, 2**62)),
    ),
    responses={200: ("Audit entries", "AuditList"), **_ERRORS},
)
async def audit(call: Call) -> web.StreamResponse:
    query = Query(call.request, ("limit", "offset"))
    limit = query.integer("limit", 100, 1, 1000)
    offset = query.integer("offset", 0, 0, 2**62)
    query.check()
    entries = await call.ctx.store.list_audit(limit=limit, offset=offset)
    return web.json_response(
        {"entries": [{**entry, "at": rfc3339(entry["at"], call.ctx.tz)} for entry in entries]}
    )
