"""`/api/watchers`: list, get, create, replace, delete, pause, resume, fire.

A watcher is written like a rule (gatewayd.api.rules): JSON with the YAML file's field
names, or the YAML itself, checked as `check-config` checks the watchers folder, written
atomically as `watchers/<name>.yaml`, then the whole configuration is loaded again and
swapped in (and, with several nodes, announced to the others). Pause and resume are
kept in the database: they hold on every node and across restarts, until resumed
(`enabled: false` in the file is the configuration's switch). Permissions: the `rules`
area.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api import rules as rule_api
from gatewayd.api.errors import ApiError, Problem, bad_request, conflict, not_found
from gatewayd.api.offloop import OverTime
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339
from gatewayd.automation.watchers import OUTCOMES, ScanResult, Watchers, WatcherState
from gatewayd.config import ConfigError, LoadedConfig
from gatewayd.config.loader import load_watcher_text
from gatewayd.config.watchers import WatcherConfig

_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
_MISSING: dict[int, tuple[str, str | None]] = {404: ("No such watcher", "Errors")}
_BAD: dict[int, tuple[str, str | None]] = {
    400: ("Invalid watcher: every problem is listed", "Errors"),
    413: ("Larger than a watcher may be (256 KiB)", "Errors"),
    415: ("Neither JSON nor YAML", "Errors"),
    503: ("The watcher could not be checked in time; nothing was changed", "Errors"),
}


def _watcher(call: Call, name: str) -> WatcherConfig:
    watcher = call.ctx.loaded.watchers.get(name)
    if watcher is None:
        raise not_found(f"no watcher '{name}'")
    return watcher


def _service(call: Call) -> Watchers:
    watchers = call.ctx.watchers
    if watchers is None:
        raise ApiError(503, [Problem("the watchers do not run here", "unavailable")])
    return watchers


def scan_json(result: ScanResult) -> dict[str, Any]:
    return {
        "seen": result.seen,
        "taken": result.outcomes.get("taken", 0),
        "skipped": {k: v for k, v in result.outcomes.items() if k != "taken"},
        "transfers": list(result.transfers),
        "seconds": round(result.seconds, 6),
        "error": result.error,
        "notScanned": result.skipped,
    }


async def watcher_json(call: Call, config: WatcherConfig) -> dict[str, Any]:
    """A watcher's configuration (the YAML's field names), its state on this node, and
    the files it ever took (the database's records, whichever node took them)."""
    body = config.model_dump(mode="json", exclude={"source"})
    watchers = call.ctx.watchers
    watch = watchers.get(config.name) if watchers is not None else None
    if watchers is not None and watch is not None:
        await watchers.read_pause(config.name)
    state = watch.state if watch is not None else WatcherState(config.name, state="stopped")
    totals = {key: state.totals.get(key, 0) for key in OUTCOMES}
    body["status"] = {
        "state": state.state,
        "paused": state.paused,
        "pausedBy": state.paused_by,
        "pausedAt": rfc3339(state.paused_at, call.ctx.loaded.tz),
        "lastScan": rfc3339(state.last_scan, call.ctx.loaded.tz),
        "lastError": state.last_error,
        "seen": state.seen,
        "taken": totals.pop("taken"),
        "skipped": totals,
        "lastResult": scan_json(state.last_result) if state.last_result is not None else None,
        "recorded": await call.ctx.store.count_watched(config.name),
    }
    return body


@route(
    "GET",
    "/api/watchers",
    summary="List the local folder watchers, with their state on this node",
    area="rules",
    letter="r",
    tag="watchers",
    responses={200: ("Every watcher", "WatcherList"), **_ERRORS},
)
async def list_watchers(call: Call) -> web.StreamResponse:
    found = sorted(call.ctx.loaded.watchers.values(), key=lambda w: w.name)
    return web.json_response({"watchers": [await watcher_json(call, w) for w in found]})


@route(
    "GET",
    "/api/watchers/{name}",
    summary="One watcher, with its state on this node",
    area="rules",
    letter="r",
    tag="watchers",
    responses={200: ("The watcher", "Watcher"), **_MISSING, **_ERRORS},
)
async def get_watcher(call: Call) -> web.StreamResponse:
    watcher = _watcher(call, call.request.match_info["name"])
    return web.json_response(await watcher_json(call, watcher))


def _checked(
    loaded: LoadedConfig, raw: str, as_yaml: bool, name: str | None, user: str
) -> tuple[WatcherConfig, str]:
    """Blocking (a worker thread): the watcher parsed and checked, and its YAML text."""
    text = rule_api._yaml_text(raw, as_yaml, name, user)
    try:
        return load_watcher_text(loaded, text, rule_api._SOURCE), text
    except ConfigError as exc:
        raise bad_request(*rule_api._problems(exc, as_yaml, "invalid_watcher")) from None


async def _save(call: Call, url_name: str | None) -> tuple[WatcherConfig, bool]:
    raw, as_yaml = await rule_api._body(call)
    async with call.ctx.config_lock:
        loaded = call.ctx.loaded
        try:
            watcher, text = await rule_api._CHECKS.run(
                _checked, loaded, raw, as_yaml, url_name, call.principal.user,
                timeout=rule_api.CHECK_TIMEOUT,
            )  # fmt: skip
        except OverTime:
            raise ApiError(
                503, [Problem("the watcher could not be checked in time", "check_timeout")]
            ) from None
        if url_name is not None and watcher.name != url_name:
            raise bad_request(
                Problem(
                    f"the watcher is named '{watcher.name}' but the URL names '{url_name}'",
                    "name_mismatch",
                    "name",
                )
            )
        exists = watcher.name in loaded.watchers
        if url_name is None and exists:
            raise conflict(f"watcher '{watcher.name}' already exists", "already_exists")
        path = loaded.watcher_file(watcher.name)
        await rule_api._change(call, path, text)
        saved = call.ctx.loaded.watchers[watcher.name]
    await call.audit(
        "watcher.replace" if exists else "watcher.create",
        f"watcher/{watcher.name}",
        {"file": str(path), "watcher": saved.model_dump(mode="json", exclude={"source"})},
    )
    return saved, not exists


@route(
    "POST",
    "/api/watchers",
    summary="Create a watcher (JSON with the YAML field names, or YAML)",
    area="rules",
    letter="w",
    tag="watchers",
    body="WatcherConfig",
    body_yaml=True,
    responses={
        201: ("Created and started; `Location` names it", "Watcher"),
        409: ("A watcher of that name exists", "Errors"),
        **_BAD,
        **_ERRORS,
    },
)
async def create_watcher(call: Call) -> web.StreamResponse:
    watcher, _ = await _save(call, None)
    return web.json_response(
        await watcher_json(call, watcher),
        status=201,
        headers={"Location": f"/api/watchers/{watcher.name}"},
    )


@route(
    "PUT",
    "/api/watchers/{name}",
    summary="Create or replace a watcher (JSON with the YAML field names, or YAML)",
    area="rules",
    letter="w",
    tag="watchers",
    body="WatcherConfig",
    body_yaml=True,
    responses={
        200: ("Replaced (files taken stay taken)", "Watcher"),
        201: ("Created and started", "Watcher"),
        409: ("The configuration on disk does not load", "Errors"),
        **_BAD,
        **_ERRORS,
    },
)
async def replace_watcher(call: Call) -> web.StreamResponse:
    watcher, created = await _save(call, call.request.match_info["name"])
    headers = {"Location": f"/api/watchers/{watcher.name}"} if created else None
    return web.json_response(
        await watcher_json(call, watcher), status=201 if created else 200, headers=headers
    )


@route(
    "DELETE",
    "/api/watchers/{name}",
    summary="Delete a watcher (its file); the transfers it made go on",
    area="rules",
    letter="d",
    tag="watchers",
    responses={
        204: ("Deleted", None),
        409: ("The configuration on disk does not load", "Errors"),
        **_MISSING,
        **_ERRORS,
    },
)
async def delete_watcher(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    async with call.ctx.config_lock:
        watcher = _watcher(call, name)
        path = watcher.source or call.ctx.loaded.watcher_file(name)
        await rule_api._change(call, path, None)
    await call.audit("watcher.delete", f"watcher/{name}", {"file": str(path)})
    return web.Response(status=204)


async def _act(call: Call, action: str) -> web.StreamResponse:
    name = call.request.match_info["name"]
    config = _watcher(call, name)
    watchers = _service(call)
    if watchers.get(name) is None:
        raise conflict(f"watcher '{name}' is not running", "not_running")
    await watchers.set_paused(name, action == "pause", call.principal.user)
    await call.audit(f"watcher.{action}", f"watcher/{name}", {})
    return web.json_response(await watcher_json(call, config))


@route(
    "POST",
    "/api/watchers/{name}/pause",
    summary="Pause a watcher on every node, across restarts, until resumed",
    area="rules",
    letter="w",
    tag="watchers",
    responses={200: ("Paused", "Watcher"), **_MISSING, **_ERRORS},
)
async def pause_watcher(call: Call) -> web.StreamResponse:
    return await _act(call, "pause")


@route(
    "POST",
    "/api/watchers/{name}/resume",
    summary="Resume a paused watcher",
    area="rules",
    letter="w",
    tag="watchers",
    responses={200: ("Resumed", "Watcher"), **_MISSING, **_ERRORS},
)
async def resume_watcher(call: Call) -> web.StreamResponse:
    return await _act(call, "resume")


@route(
    "POST",
    "/api/watchers/{name}/fire",
    summary="Scan a watcher's folder now (settle still applies) and say what it found",
    description="A paused watcher scans too. With several nodes, only the node that "
    "holds the watcher scans it: elsewhere `notScanned` says so.",
    area="rules",
    letter="w",
    tag="watchers",
    responses={200: ("What the scan found", "WatcherScan"), **_MISSING, **_ERRORS},
)
async def fire_watcher(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    _watcher(call, name)
    watchers = _service(call)
    if watchers.get(name) is None:
        raise conflict(f"watcher '{name}' is not running", "not_running")
    result = await watchers.fire(name)
    await call.audit("watcher.fire", f"watcher/{name}", {"taken": len(result.transfers)})
    return web.json_response(scan_json(result))


_INT = {"type": "integer"}
_STR = {"type": "string"}
_SKIPPED = {
    "type": "object",
    "properties": {k: _INT for k in OUTCOMES if k != "taken"},
    "description": "Files not taken, by reason",
}
SCHEMAS["WatcherScan"] = {
    "type": "object",
    "properties": {
        "seen": _INT,
        "taken": _INT,
        "skipped": _SKIPPED,
        "transfers": {"type": "array", "items": _INT},
        "seconds": {"type": "number"},
        "error": _STR,
        "notScanned": {**_STR, "description": "Why nothing was scanned (empty: scanned)"},
    },
    "required": ["seen", "taken", "skipped", "transfers", "seconds", "error", "notScanned"],
}
_config_schema = WatcherConfig.model_json_schema(ref_template="#/components/schemas/{model}")
_config_schema["properties"].pop("source", None)
SCHEMAS["WatcherConfig"] = _config_schema
SCHEMAS["Watcher"] = {
    "allOf": [
        {"$ref": "#/components/schemas/WatcherConfig"},
        {
            "type": "object",
            "properties": {
                "status": {
                    "type": "object",
                    "properties": {
                        "state": {
                            "type": "string",
                            "enum": [
                                "starting",
                                "running",
                                "paused",
                                "disabled",
                                "standby",
                                "error",
                                "stopped",
                            ],
                        },
                        "paused": {"type": "boolean"},
                        "pausedBy": {**_STR, "description": "Who paused it last"},
                        "pausedAt": {"type": ["string", "null"], "format": "date-time"},
                        "lastScan": {"type": ["string", "null"], "format": "date-time"},
                        "lastError": _STR,
                        "seen": _INT,
                        "taken": _INT,
                        "skipped": _SKIPPED,
                        "recorded": {
                            **_INT,
                            "description": "Files ever taken (every node, every run)",
                        },
                        "lastResult": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/WatcherScan"},
                                {"type": "null"},
                            ]
                        },
                    },
                }
            },
        },
    ]
}
SCHEMAS["WatcherList"] = {
    "type": "object",
    "properties": {
        "watchers": {"type": "array", "items": {"$ref": "#/components/schemas/Watcher"}}
    },
    "required": ["watchers"],
}
