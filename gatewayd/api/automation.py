"""`/api/schedules` and `/api/pollers`: what each schedule and poller is, its state (last
and next run, last error, counts), and the actions: fire now, pause, resume.

They are configured as YAML files (`daemon.schedules_dir`, `daemon.pollers_dir`),
checked like the rules by `check-config`. They need the `rules` permission: read to
look, write to act.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api.errors import not_found
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339, transfer_json
from gatewayd.automation.pollers import PollerService, UnknownPoller
from gatewayd.automation.schedules import ScheduleService, UnknownSchedule
from gatewayd.store.base import ScheduleState

_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_COUNT = {"type": "integer", "minimum": 0}

SCHEDULE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "cron": {"type": "string"},
    "timezone": {"type": "string", "description": "the schedule's zone, or the gateway's"},
    "catchUp": {"enum": ["once", "skip"]},
    "state": {"enum": ["active", "paused"]},
    "transfer": {"type": "object", "description": "the request each firing makes"},
    "since": _TIME,
    "lastRun": _TIME,
    "lastTransferId": {"type": ["integer", "null"]},
    "nextRun": _TIME,
    "lastError": {"type": "string"},
    "fires": {**_COUNT, "description": "firings recorded in the database (all nodes)"},
    "fired": {**_COUNT, "description": "firings made by this node since it started"},
    "duplicates": {**_COUNT, "description": "firings another node (or run) made first"},
    "skipped": {**_COUNT, "description": "firings dropped: paused, or missed with skip"},
    "errors": {**_COUNT, "description": "firings whose transfer was refused"},
}
SCHEMAS["Schedule"] = {"type": "object", "properties": SCHEDULE_PROPERTIES}
SCHEMAS["ScheduleList"] = {
    "type": "object",
    "properties": {
        "schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}}
    },
}
SCHEMAS["ScheduleFire"] = {
    "type": "object",
    "properties": {
        "schedule": {"type": "string"},
        "fireTime": {"type": "string", "format": "date-time"},
        "duplicate": {"type": "boolean"},
        "error": {"type": "string"},
        "transfer": {"oneOf": [{"$ref": "#/components/schemas/Transfer"}, {"type": "null"}]},
    },
}
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
    "lastRun": _TIME,
    "nextRun": _TIME,
    "lastError": {"type": "string"},
    "polls": _COUNT,
    "seen": {**_COUNT, "description": "matching files in the last listing"},
    "taken": {**_COUNT, "description": "files this node made a transfer of"},
    "skipped": {**_COUNT, "description": "files whose transfer was refused (their name...)"},
    "standby": {**_COUNT, "description": "looks left to the node that runs the pollers"},
}
SCHEMAS["Poller"] = {"type": "object", "properties": POLLER_PROPERTIES}
SCHEMAS["PollerList"] = {
    "type": "object",
    "properties": {"pollers": {"type": "array", "items": {"$ref": "#/components/schemas/Poller"}}},
}


def _schedules(call: Call) -> ScheduleService:
    return call.ctx.schedules


def _schedule_json(call: Call, name: str, state: ScheduleState | None) -> dict[str, Any]:
    service, tz = _schedules(call), call.ctx.tz
    config, stats = service.config(name), service.stats(name)
    return {
        "name": name,
        "cron": config.cron,
        "timezone": config.timezone or str(tz),
        "catchUp": config.catch_up,
        "state": "paused" if state is not None and state.paused else "active",
        "transfer": config.transfer.request(),
        "since": rfc3339(state.since if state else None, tz),
        "lastRun": rfc3339(state.last_fire if state else None, tz),
        "lastTransferId": state.last_transfer_id if state else None,
        "nextRun": rfc3339(service.next_at(name), tz),
        "lastError": state.last_error if state else "",
        "fires": state.fires if state else 0,
        "fired": stats.fired,
        "duplicates": stats.duplicates,
        "skipped": stats.skipped,
        "errors": stats.errors,
    }


async def _one_schedule(call: Call) -> dict[str, Any]:
    name = call.request.match_info["name"]
    if name not in _schedules(call).names():
        raise not_found(f"no schedule '{name}'")
    return _schedule_json(call, name, await call.ctx.store.schedule_state(name))


@route(
    "GET",
    "/api/schedules",
    summary="List the schedules",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("Every schedule", "ScheduleList"), **_ERRORS},
)
async def list_schedules(call: Call) -> web.StreamResponse:
    states = await _schedules(call).states()
    found = [_schedule_json(call, n, states.get(n)) for n in _schedules(call).names()]
    return web.json_response({"schedules": found})


@route(
    "GET",
    "/api/schedules/{name}",
    summary="One schedule",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("The schedule", "Schedule"), 404: ("No such schedule", "Errors"), **_ERRORS},
)
async def get_schedule(call: Call) -> web.StreamResponse:
    return web.json_response(await _one_schedule(call))


@route(
    "POST",
    "/api/schedules/{name}/fire",
    summary="Fire a schedule now (its transfer is made at once, paused or not)",
    area="rules",
    letter="w",
    tag="automation",
    responses={
        201: ("Fired: the transfer made, or why none", "ScheduleFire"),
        404: ("No such schedule", "Errors"),
        **_ERRORS,
    },
)
async def fire_schedule(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        result = await _schedules(call).fire_now(name)
    except UnknownSchedule:
        raise not_found(f"no schedule '{name}'") from None
    await call.audit("fire schedule", name, {"fireTime": result.fire_time.isoformat()})
    tz = call.ctx.tz
    body = {
        "schedule": name,
        "fireTime": rfc3339(result.fire_time, tz),
        "duplicate": result.duplicate,
        "error": result.error,
        "transfer": transfer_json(result.transfer, tz) if result.transfer else None,
    }
    return web.json_response(body, status=201)


async def _pause(call: Call, paused: bool) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        await _schedules(call).set_paused(name, paused)
    except UnknownSchedule:
        raise not_found(f"no schedule '{name}'") from None
    await call.audit("pause schedule" if paused else "resume schedule", name)
    return web.json_response(await _one_schedule(call))


@route(
    "POST",
    "/api/schedules/{name}/pause",
    summary="Pause a schedule on every node (its times pass without firing)",
    area="rules",
    letter="w",
    tag="automation",
    responses={200: ("Paused", "Schedule"), 404: ("No such schedule", "Errors"), **_ERRORS},
)
async def pause_schedule(call: Call) -> web.StreamResponse:
    return await _pause(call, True)


@route(
    "POST",
    "/api/schedules/{name}/resume",
    summary="Resume a paused schedule (from its next time; nothing is caught up)",
    area="rules",
    letter="w",
    tag="automation",
    responses={200: ("Active", "Schedule"), 404: ("No such schedule", "Errors"), **_ERRORS},
)
async def resume_schedule(call: Call) -> web.StreamResponse:
    return await _pause(call, False)


# --------------------------------------------------------------------------- pollers


def _pollers(call: Call) -> PollerService:
    return call.ctx.pollers


def _poller_json(call: Call, name: str) -> dict[str, Any]:
    service, tz = _pollers(call), call.ctx.tz
    config, stats = service.config(name), service.stats(name)
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
    responses={200: ("Every poller", "PollerList"), **_ERRORS},
)
async def list_pollers(call: Call) -> web.StreamResponse:
    names = _pollers(call).names()
    return web.json_response({"pollers": [_poller_json(call, n) for n in names]})


@route(
    "GET",
    "/api/pollers/{name}",
    summary="One remote poller",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("The poller", "Poller"), 404: ("No such poller", "Errors"), **_ERRORS},
)
async def get_poller(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        return web.json_response(_poller_json(call, name))
    except UnknownPoller:
        raise not_found(f"no poller '{name}'") from None


@route(
    "POST",
    "/api/pollers/{name}/fire",
    summary="Look at the partner's folder now (files still need two looks to settle)",
    area="rules",
    letter="w",
    tag="automation",
    responses={202: ("Looking", "Poller"), 404: ("No such poller", "Errors"), **_ERRORS},
)
async def fire_poller(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    try:
        _pollers(call).fire(name)
    except UnknownPoller:
        raise not_found(f"no poller '{name}'") from None
    await call.audit("fire poller", name)
    return web.json_response(_poller_json(call, name), status=202)
