"""`/api/schedules` and `/api/pollers`: what each schedule and poller is, its state (last
and next run, last error, counts), and the actions: fire now, pause, resume.

They are YAML files (`daemon.schedules_dir`, `daemon.pollers_dir`), checked like the
rules by `check-config`; `PUT` writes one (JSON with the file's field names, checked
first, then the configuration reloaded as for a rule), `DELETE` removes it. They need
the `rules` permission: read to look, write to act, delete to delete.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gatewayd.api.body import parse_json, read_text
from gatewayd.api.errors import Problem, bad_request, not_found
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.rules import change_file
from gatewayd.api.shapes import rfc3339, transfer_json
from gatewayd.automation.pollers import PollerService, UnknownPoller
from gatewayd.automation.schedules import ScheduleService, UnknownSchedule
from gatewayd.config.pollers import check_poller
from gatewayd.config.schedules import check_schedule
from gatewayd.config.yamlsource import parse_yaml
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


# --------------------------------------------------------------------------- writing

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
_WRITE_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Invalid: every problem is listed, with its line", "Errors"),
    409: ("The configuration on disk does not load; nothing was changed", "Errors"),
    **_ERRORS,
}


def _folder(call: Call, kind: str) -> Path:
    paths = call.ctx.loaded.paths
    folder = paths.schedules_dir if kind == "schedule" else paths.pollers_dir
    if folder is None:
        raise bad_request(Problem(f"no {kind}s folder is configured", "not_configured"))
    return folder


async def _put(call: Call, kind: str) -> web.StreamResponse:
    """Write `<folder>/<name>.yaml` from a JSON body, checked first like check-config,
    then reload (rolled back when the whole configuration does not load)."""
    name = call.request.match_info["name"]
    body = parse_json(await read_text(call.request))
    if not isinstance(body, dict):
        raise bad_request(Problem(f"the body must be a JSON object (a {kind})", "bad_value"))
    body = {"name": name, **{k: v for k, v in body.items() if k != "name"}}
    folder = _folder(call, kind)
    loaded = call.ctx.loaded
    known = loaded.schedules if kind == "schedule" else loaded.pollers
    path = known[name].source if name in known and known[name].source else None
    path = path or folder / f"{name}.yaml"
    text = f"# Written through the admin API by {call.principal.user}.\n" + yaml.safe_dump(
        body, sort_keys=False, allow_unicode=True
    )
    source = parse_yaml(text, path)
    partners = set(loaded.config.partners)
    problems = (
        check_schedule(source, loaded.config.rules, partners).problems
        if kind == "schedule"
        else check_poller(source, loaded.config.rules, partners).problems
    )
    if problems:
        raise bad_request(*(Problem(str(p), f"invalid_{kind}") for p in problems))
    async with call.ctx.config_lock:
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        await change_file(call, path, text)
    if kind == "schedule":
        await _schedules(call).apply(call.ctx.loaded)
    await call.audit(f"{kind}.replace" if name in known else f"{kind}.create", f"{kind}/{name}")
    status = 200 if name in known else 201
    if kind == "schedule":
        return web.json_response(await _one_schedule(call), status=status)
    return web.json_response(_poller_json(call, name), status=status)


async def _delete(call: Call, kind: str) -> web.StreamResponse:
    name = call.request.match_info["name"]
    known = call.ctx.loaded.schedules if kind == "schedule" else call.ctx.loaded.pollers
    config = known.get(name)
    if config is None or config.source is None:
        raise not_found(f"no {kind} '{name}'")
    async with call.ctx.config_lock:
        await change_file(call, config.source, None)
    if kind == "schedule":
        await _schedules(call).apply(call.ctx.loaded)
    await call.audit(f"{kind}.delete", f"{kind}/{name}", {"file": str(config.source)})
    return web.Response(status=204)


@route(
    "PUT",
    "/api/schedules/{name}",
    summary="Create or replace a schedule (its file in daemon.schedules_dir)",
    area="rules",
    letter="w",
    tag="automation",
    body="ScheduleConfig",
    responses={200: ("Replaced", "Schedule"), 201: ("Created", "Schedule"), **_WRITE_ERRORS},
)
async def put_schedule(call: Call) -> web.StreamResponse:
    return await _put(call, "schedule")


@route(
    "DELETE",
    "/api/schedules/{name}",
    summary="Delete a schedule (its file); its firings stay recorded",
    area="rules",
    letter="d",
    tag="automation",
    responses={204: ("Deleted", None), 404: ("No such schedule", "Errors"), **_WRITE_ERRORS},
)
async def delete_schedule(call: Call) -> web.StreamResponse:
    return await _delete(call, "schedule")


@route(
    "PUT",
    "/api/pollers/{name}",
    summary="Create or replace a remote poller (its file in daemon.pollers_dir)",
    area="rules",
    letter="w",
    tag="automation",
    body="PollerConfig",
    responses={200: ("Replaced", "Poller"), 201: ("Created", "Poller"), **_WRITE_ERRORS},
)
async def put_poller(call: Call) -> web.StreamResponse:
    return await _put(call, "poller")


@route(
    "DELETE",
    "/api/pollers/{name}",
    summary="Delete a remote poller (its file); the files it took stay recorded",
    area="rules",
    letter="d",
    tag="automation",
    responses={204: ("Deleted", None), 404: ("No such poller", "Errors"), **_WRITE_ERRORS},
)
async def delete_poller(call: Call) -> web.StreamResponse:
    return await _delete(call, "poller")
