"""`/api/schedules`: what each schedule is, its state (last and next run, last error,
counts) and the actions: fire now, pause, resume; `PUT` and `DELETE` write and remove
its file in `daemon.schedules_dir` (gatewayd.api.automation). The `rules` permission:
read to look, write to act, delete to delete.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api.automation import COUNT, ERRORS, TIME, WRITE_ERRORS, delete_file, put_file
from gatewayd.api.errors import not_found
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339, transfer_json
from gatewayd.automation.schedules import ScheduleService, UnknownSchedule
from gatewayd.store.base import PauseState, ScheduleState

SCHEDULE_PROPERTIES: dict[str, Any] = {
    "name": {"type": "string"},
    "cron": {"type": "string"},
    "timezone": {"type": "string", "description": "the schedule's zone, or the gateway's"},
    "catchUp": {"enum": ["once", "skip"]},
    "state": {"enum": ["active", "paused"]},
    "pausedBy": {"type": "string", "description": "who paused it last"},
    "pausedAt": TIME,
    "transfer": {"type": "object", "description": "the request each firing makes"},
    "since": TIME,
    "lastRun": TIME,
    "lastTransferId": {"type": ["integer", "null"]},
    "nextRun": TIME,
    "lastError": {"type": "string"},
    "fires": {**COUNT, "description": "firings recorded in the database (all nodes)"},
    "fired": {**COUNT, "description": "firings made by this node since it started"},
    "duplicates": {**COUNT, "description": "firings another node (or run) made first"},
    "skipped": {**COUNT, "description": "firings dropped: paused, or missed with skip"},
    "errors": {**COUNT, "description": "firings whose transfer was refused"},
    "standby": {**COUNT, "description": "times left to the node that fires the schedules"},
    "firesHere": {"type": "boolean", "description": "this node fires the schedules now"},
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
SCHEMAS["ScheduleConfig"] = {
    "type": "object",
    "description": "A schedule's file (gatewayd.config.schedules) as JSON",
    "properties": {
        "cron": {"type": "string"},
        "timezone": {"type": "string"},
        "catch_up": {"enum": ["once", "skip"]},
        "enabled": {"type": "boolean"},
        "transfer": {
            "type": "object",
            "properties": {
                "rule": {"type": "string"},
                "partner": {"type": "string"},
                "file": {"type": "string"},
                "output": {"type": "string"},
                "transfer_info": {"type": "object"},
            },
            "required": ["rule", "partner", "file"],
        },
    },
    "required": ["cron", "transfer"],
}


def _schedules(call: Call) -> ScheduleService:
    return call.ctx.schedules


def _schedule_json(
    call: Call, name: str, state: ScheduleState | None, pause: PauseState | None
) -> dict[str, Any]:
    service, tz = _schedules(call), call.ctx.tz
    config, stats = service.config(name), service.stats(name)
    return {
        "name": name,
        "cron": config.cron,
        "timezone": config.timezone or str(tz),
        "catchUp": config.catch_up,
        "state": "paused" if state is not None and state.paused else "active",
        "pausedBy": pause.paused_by if pause else "",
        "pausedAt": rfc3339(pause.paused_at if pause else None, tz),
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
        "standby": stats.standby,
        "firesHere": service.leading,
    }


async def _one_schedule(call: Call, name: str | None = None) -> dict[str, Any]:
    name = name or call.request.match_info["name"]
    if name not in _schedules(call).names():
        raise not_found(f"no schedule '{name}'")
    pause = (await call.ctx.store.pause_states("schedule")).get(name)
    return _schedule_json(call, name, await call.ctx.store.schedule_state(name), pause)


@route(
    "GET",
    "/api/schedules",
    summary="List the schedules",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("Every schedule", "ScheduleList"), **ERRORS},
)
async def list_schedules(call: Call) -> web.StreamResponse:
    states = await _schedules(call).states()
    pauses = await call.ctx.store.pause_states("schedule")
    found = [
        _schedule_json(call, n, states.get(n), pauses.get(n)) for n in _schedules(call).names()
    ]
    return web.json_response({"schedules": found})


@route(
    "GET",
    "/api/schedules/{name}",
    summary="One schedule",
    area="rules",
    letter="r",
    tag="automation",
    responses={200: ("The schedule", "Schedule"), 404: ("No such schedule", "Errors"), **ERRORS},
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
        **ERRORS,
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
        await _schedules(call).set_paused(name, paused, call.principal.user)
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
    responses={200: ("Paused", "Schedule"), 404: ("No such schedule", "Errors"), **ERRORS},
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
    responses={200: ("Active", "Schedule"), 404: ("No such schedule", "Errors"), **ERRORS},
)
async def resume_schedule(call: Call) -> web.StreamResponse:
    return await _pause(call, False)


@route(
    "PUT",
    "/api/schedules/{name}",
    summary="Create or replace a schedule (its file in daemon.schedules_dir)",
    area="rules",
    letter="w",
    tag="automation",
    body="ScheduleConfig",
    responses={200: ("Replaced", "Schedule"), 201: ("Created", "Schedule"), **WRITE_ERRORS},
)
async def put_schedule(call: Call) -> web.StreamResponse:
    async def applied() -> None:
        await _schedules(call).apply(call.ctx.loaded)

    return await put_file(call, "schedule", applied, lambda name: _one_schedule(call, name))


@route(
    "DELETE",
    "/api/schedules/{name}",
    summary="Delete a schedule (its file); its firings stay recorded",
    area="rules",
    letter="d",
    tag="automation",
    responses={204: ("Deleted", None), 404: ("No such schedule", "Errors"), **WRITE_ERRORS},
)
async def delete_schedule(call: Call) -> web.StreamResponse:
    async def applied() -> None:
        await _schedules(call).apply(call.ctx.loaded)

    return await delete_file(call, "schedule", applied)
