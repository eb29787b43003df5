"""`/api/pollers`: what each remote poller is, its state (last and next look, files
seen, taken, skipped), `fire` (look now), `pause` and `resume` (kept in the database:
on every node, across restarts); `PUT` and `DELETE` write and remove its file in
`daemon.pollers_dir` (gatewayd.api.automation). The `rules` permission: read to
look, write to act, delete to delete.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api.automation import COUNT, ERRORS, TIME, WRITE_ERRORS, delete_file, put_file
from gatewayd.api.errors import not_found
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339
from gatewayd.automation.pollers import PollerService, UnknownPoller

POLLER_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "partner": {"type": "string"},
    "rule": {"type": "string"},
    "remoteDir": {"type": "string"},
    "globs": {"type": "array", "items": {"type": "string"}},
    "interval": {"type": ["number", "null"]},
    "cron": {"type": ["string", "null"]},
    "after": {"enum": ["keep", "delete", "move"]},
    "moveTo": {"type": ["string", "null"]},
    "lastRun": TIME,
    "nextRun": TIME,
    "lastError": {"type": "string"},
    "state": {"enum": ["active", "paused"]},
    "pausedBy": {"type": "string", "description": "who paused it last"},
    "pausedAt": TIME,
    "pausedLooks": {**COUNT, "description": "looks not made on this node: paused"},
    "polls": COUNT,
    "seen": {**COUNT, "description": "matching files in the last listing"},
    "taken": {**COUNT, "description": "files this node made a transfer of"},
    "skipped": {**COUNT, "description": "files whose transfer was refused (their name...)"},
    "standby": {**COUNT, "description": "looks left to the node that runs the pollers"},
}
SCHEMAS["Poller"] = {"type": "object", "properties": POLLER_PROPERTIES}
SCHEMAS["PollerList"] = {
    "type": "object",
    "properties": {"pollers": {"type": "array", "items": {"$ref": "#/components/schemas/Poller"}}},
}


SCHEMAS["PollerConfig"] = {
    "type": "object",
    "description": "A poller's file (gatewayd.config.pollers) as JSON",
    "properties": {
        "partner": {"type": "string"},
        "rule": {"type": "string"},
        "remote_dir": {"type": "string"},
        "globs": {"type": "array", "items": {"type": "string"}},
        "interval": {"type": "number"},
        "cron": {"type": "string"},
        "timezone": {"type": "string"},
        "after": {"enum": ["keep", "delete", "move"]},
        "move_to": {"type": "string"},
        "enabled": {"type": "boolean"},
    },
    "required": ["partner", "rule"],
}


def _pollers(call: Call) -> PollerService:
    return call.ctx.pollers


async def _poller_json(call: Call, name: str) -> dict[str, Any]:
    service, tz = _pollers(call), call.ctx.tz
    config, stats = service.config(name), await service.read_pause(name)
    return {
        "name": name,
        "partner": config.partner,
        "rule": config.rule,
        "remoteDir": config.remote_dir,
        "globs": list(config.globs),
        "interval": config.interval,
        "cron": config.cron,
        "after": config.after,
        "moveTo": config.move_to,
        "lastRun": rfc3339(stats.last_poll, tz),
        "nextRun": rfc3339(stats.next_poll, tz),
        "lastError": stats.last_error,
        "state": "paused" if stats.paused else "active",
        "pausedBy": stats.paused_by,
        "pausedAt": rfc3339(stats.paused_at, tz),
        "pausedLooks": stats.paused_looks,
        "polls": stats.polls,
        "seen": stats.seen,
        "taken": stats.taken,
        "skipped": stats.skipped,
        "standby": stats.standby,
    }


@route(
    "GET",
    "/api/pollers",
    summary="List the remote pollers",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("Every poller", "PollerList"), **ERRORS},
)
async def list_pollers(call: Call) -> web.StreamResponse:
    names = _pollers(call).names()
    return web.json_response({"pollers": [await _poller_json(call, n) for n in names]})


@route(
    "GET",
    "/api/pollers/{name}",
    summary="One remote poller",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("The poller", "Poller"), 404: ("No such poller", "Errors"), **ERRORS},
)
async def get_poller(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        return web.json_response(await _poller_json(call, name))
    except UnknownPoller:
        raise not_found(f"no poller '{name}'") from None


@route(
    "POST",
    "/api/pollers/{name}/fire",
    summary="Look at the partner's folder now (files still need two looks to settle)",
    area="rules",
    letter="w",
    tag="automation",
    responses={202: ("Looking", "Poller"), 404: ("No such poller", "Errors"), **ERRORS},
)
async def fire_poller(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        _pollers(call).fire(name)
    except UnknownPoller:
        raise not_found(f"no poller '{name}'") from None
    await call.audit("fire poller", name)
    return web.json_response(await _poller_json(call, name), status=202)


async def _pause(call: Call, paused: bool) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        await _pollers(call).set_paused(name, paused, call.principal.user)
    except UnknownPoller:
        raise not_found(f"no poller '{name}'") from None
    await call.audit("pause poller" if paused else "resume poller", name)
    return web.json_response(await _poller_json(call, name))


@route(
    "POST",
    "/api/pollers/{name}/pause",
    summary="Pause a poller on every node, across restarts (no look until resumed)",
    area="rules",
    letter="w",
    tag="automation",
    responses={200: ("Paused", "Poller"), 404: ("No such poller", "Errors"), **ERRORS},
)
async def pause_poller(call: Call) -> web.StreamResponse:
    return await _pause(call, True)


@route(
    "POST",
    "/api/pollers/{name}/resume",
    summary="Resume a paused poller (it looks at once)",
    area="rules",
    letter="w",
    tag="automation",
    responses={200: ("Active", "Poller"), 404: ("No such poller", "Errors"), **ERRORS},
)
async def resume_poller(call: Call) -> web.StreamResponse:
    return await _pause(call, False)


@route(
    "PUT",
    "/api/pollers/{name}",
    summary="Create or replace a remote poller (its file in daemon.pollers_dir)",
    area="rules",
    letter="w",
    tag="automation",
    body="PollerConfig",
    responses={200: ("Replaced", "Poller"), 201: ("Created", "Poller"), **WRITE_ERRORS},
)
async def put_poller(call: Call) -> web.StreamResponse:
    async def applied() -> None:
        return None  # the pollers apply a reload at once

    async def shown(name: str) -> dict[str, Any]:
        return await _poller_json(call, name)

    return await put_file(call, "poller", applied, shown)


@route(
    "DELETE",
    "/api/pollers/{name}",
    summary="Delete a remote poller (its file); the files it took stay recorded",
    area="rules",
    letter="d",
    tag="automation",
    responses={204: ("Deleted", None), 404: ("No such poller", "Errors"), **WRITE_ERRORS},
)
async def delete_poller(call: Call) -> web.StreamResponse:
    async def applied() -> None:
        return None

    return await delete_file(call, "poller", applied)
