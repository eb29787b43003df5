"""What the routes of schedules and pollers (gatewayd.api.schedules, .pollers) share:
error answers, schema pieces, and the writing of their YAML files through the API
(checked first like check-config, then the configuration reloaded as for a rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gatewayd.api.body import parse_json, read_text
from gatewayd.api.errors import Problem, bad_request, not_found
from gatewayd.api.routes import Call
from gatewayd.api.rules import change_file
from gatewayd.config.pollers import check_poller
from gatewayd.config.schedules import check_schedule
from gatewayd.config.yamlsource import parse_yaml

ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
TIME = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}


WRITE_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Invalid: every problem is listed, with its line", "Errors"),
    409: ("The configuration on disk does not load; nothing was changed", "Errors"),
    **ERRORS,
}


def _folder(call: Call, kind: str) -> Path:
    paths = call.ctx.loaded.paths
    folder = paths.schedules_dir if kind == "schedule" else paths.pollers_dir
    if folder is None:
        raise bad_request(Problem(f"no {kind}s folder is configured", "not_configured"))
    return folder


async def put_file(
    call: Call,
    kind: str,
    applied: Callable[[], Awaitable[None]],
    shown: Callable[[str], Awaitable[dict[str, Any]]],
) -> web.StreamResponse:
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
    await applied()
    await call.audit(f"{kind}.replace" if name in known else f"{kind}.create", f"{kind}/{name}")
    return web.json_response(await shown(name), status=200 if name in known else 201)


async def delete_file(
    call: Call, kind: str, applied: Callable[[], Awaitable[None]]
) -> web.StreamResponse:
    """Remove the file of schedule or poller `name`, then reload (rolled back when the
    configuration does not load without it)."""
    name = call.request.match_info["name"]
    known = call.ctx.loaded.schedules if kind == "schedule" else call.ctx.loaded.pollers
    config = known.get(name)
    if config is None or config.source is None:
        raise not_found(f"no {kind} '{name}'")
    async with call.ctx.config_lock:
        await change_file(call, config.source, None)
    await applied()
    await call.audit(f"{kind}.delete", f"{kind}/{name}", {"file": str(config.source)})
    return web.Response(status=204)
