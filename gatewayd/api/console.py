"""The web console's endpoints: its page and static files at `/`, the session of a
logged-in browser (`/api/session`: log in, who am I, log out), the live stream of this
node's running transfers (`/api/transfers/events`, Server-Sent Events) and the YAML
text of a rule (what the console's editor starts from).

Every other route of the API accepts the session cookie as credentials
(`Authenticator`); a change made that way must carry the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from gatewayd.api.auth import SESSION
from gatewayd.api.body import Query, read_object
from gatewayd.api.errors import ApiError, Problem, bad_request, not_found
from gatewayd.api.refusals import CALLER
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339
from gatewayd.console.assets import CSP, INDEX, Assets
from gatewayd.console.sessions import COOKIE, CSRF_HEADER

HEARTBEAT = 15.0  # seconds between keep-alive comments of an idle event stream
ASSETS = Assets()
# The headers of every file of the console.
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}

SCHEMAS["ConsoleFile"] = {"type": "string", "description": "A file of the web console"}
SCHEMAS["Login"] = {
    "type": "object",
    "required": ["user", "password"],
    "properties": {
        "user": {"type": "string", "minLength": 1},
        "password": {"type": "string", "minLength": 1},
    },
    "additionalProperties": False,
}
SCHEMAS["Session"] = {
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "permissions": {"type": "object", "additionalProperties": {"type": "string"}},
        "csrfToken": {
            "type": ["string", "null"],
            "description": f"Send it as `{CSRF_HEADER}` with every change made with the "
            "session cookie (null: the request did not use a session)",
        },
        "expiresIn": {"type": ["integer", "null"], "description": "Seconds"},
        "timezone": {"type": "string"},
        "node": {"type": "string"},
        "now": {"type": "string", "format": "date-time"},
    },
}
SCHEMAS["TransferEvents"] = {
    "type": "string",
    "description": "text/event-stream: one `transfers` event a second with a JSON "
    "snapshot (`node`, `time`, `running` with progress, rate in bytes/s and ETA in s, "
    "`throughput` [[time, bytes/s]...] of the last minutes, `counts` by status from the "
    "database); a comment line every 15 s when idle. The stream ends when the daemon stops.",
}
SCHEMAS["RuleSource"] = {"type": "string", "description": "The rule's YAML file"}


async def _asset(name: str) -> web.Response:
    asset = await ASSETS.get(name)
    if asset is None:
        raise not_found(f"no console file '{name}'")
    headers = {"Content-Type": asset.content_type, **PAGE_HEADERS}
    return web.Response(body=asset.body, headers=headers)


@route(
    "GET",
    "/",
    summary="The web console (log in with an API user)",
    area=None,
    letter=None,
    tag="console",
    responses={200: ("The console's page", "ConsoleFile")},
    public=True,
    answer_type="text/html",
)
async def console_page(call: Call) -> web.StreamResponse:
    return await _asset(INDEX)


@route(
    "GET",
    "/console/{file}",
    summary="A static file of the web console (script, style sheet, icon)",
    area=None,
    letter=None,
    tag="console",
    responses={200: ("The file", "ConsoleFile"), 404: ("No such file", "Errors")},
    public=True,
    answer_type="text/plain",
)
async def console_file(call: Call) -> web.StreamResponse:
    return await _asset(call.request.match_info["file"])


def _session_json(call: Call, csrf: str | None, expires_in: int | None) -> dict[str, Any]:
    ctx = call.ctx
    return {
        "user": call.principal.user,
        "permissions": dict(call.principal.permissions),
        "csrfToken": csrf,
        "expiresIn": expires_in,
        "timezone": str(ctx.tz),
        "node": ctx.loaded.config.daemon.node_name(),
        "now": rfc3339(ctx.clock.now(), ctx.tz),
    }


@route(
    "POST",
    "/api/session",
    summary="Log in to the console: a session cookie (HttpOnly, SameSite=Strict, Secure "
    "under TLS) and the CSRF token its changes must carry",
    description="The password is checked like HTTP Basic credentials (same throttle). "
    "The session ends after 30 minutes without a request, 12 hours after the login, at "
    "logout; it is kept in the database, so every node of a cluster knows it and a "
    "restart keeps it.",
    area=None,
    letter=None,
    tag="console",
    body="Login",
    responses={
        201: ("Logged in", "Session"),
        400: ("Bad request: every problem is listed", "Errors"),
        401: ("Bad user name or password", "Errors"),
    },
    public=True,
)
async def login(call: Call) -> web.StreamResponse:
    body = await read_object(call.request)
    problems = [
        Problem(f"'{key}' is required (a string)", "bad_value", key)
        for key in ("user", "password")
        if not isinstance(body.get(key), str) or not body[key]
    ]
    problems += [
        Problem(f"unknown field '{key}'", "unknown_field", key)
        for key in body
        if key not in ("user", "password")
    ]
    if problems:
        raise bad_request(*problems)
    auth = call.ctx.auth
    principal = await auth.login(call.request, body["user"], body["password"])
    session = await auth.sessions.open(principal.user)
    max_age = auth.sessions.max_age(session)
    answer = _session_json(Call(call.request, principal, call.ctx), session.csrf, max_age)
    response = web.json_response(answer, status=201)
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=call.request.secure,
    )
    await call.ctx.store.audit(principal.user, "session.login", f"user/{principal.user}", {})
    return response


@route(
    "GET",
    "/api/session",
    summary="Who is logged in, with which permissions, and the session's CSRF token",
    description="Without credentials (or with a session that ended) the answer is 200 "
    "with `user` null: the console asks whether to show its login form without an error.",
    area=None,
    letter=None,
    tag="console",
    responses={200: ("The caller, or `user` null", "Session"), **_ERRORS},
    public=True,
)
async def get_session(call: Call) -> web.StreamResponse:
    Query(call.request, ()).check()
    request = call.request
    auth = call.ctx.auth
    session_id = request.cookies.get(COOKIE)
    if "Authorization" not in request.headers and (
        session_id is None or await auth.sessions.get(session_id) is None
    ):
        answer = _session_json(call, None, None)
        response = web.json_response({**answer, "user": None, "permissions": {}})
        if session_id is not None:
            response.del_cookie(COOKIE, path="/", samesite="Strict", secure=request.secure)
        return response
    principal = await auth.authenticate(request)
    request[CALLER] = principal.who
    call = Call(request, principal, call.ctx)
    session = request.get(SESSION)
    if session is None:
        return web.json_response(_session_json(call, None, None))
    return web.json_response(_session_json(call, session.csrf, auth.sessions.max_age(session)))


@route(
    "DELETE",
    "/api/session",
    summary="Log out: the session ends at once (its cookie is cleared); without a "
    "session, nothing to do",
    area=None,
    letter=None,
    tag="console",
    responses={204: ("Logged out", None), **_ERRORS},
)
async def logout(call: Call) -> web.StreamResponse:
    session = call.request.get(SESSION)
    response = web.Response(status=204)
    if session is None:  # nothing to end (credentials of another kind): done already
        return response
    await call.ctx.auth.sessions.close(session.id)
    await call.audit("session.logout", f"user/{session.user}")
    response.del_cookie(COOKIE, path="/", samesite="Strict", secure=call.request.secure)
    return response


@route(
    "GET",
    "/api/transfers/events",
    summary="Live progress of the transfers running on this node (Server-Sent Events)",
    description="The node the client is connected to: on a cluster, each node streams "
    "its own running transfers, while `counts` come from the shared database.",
    area="transfers",
    letter="r",
    tag="transfers",
    responses={200: ("The stream", "TransferEvents"), **_ERRORS},
    answer_type="text/event-stream",
)
async def transfer_events(call: Call) -> web.StreamResponse:
    Query(call.request, ()).check()
    feed = call.ctx.feed
    if feed is None:
        raise ApiError(503, [Problem("the live feed is not running", "unavailable")])
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            # A reverse proxy must pass each event on at once.
            "X-Accel-Buffering": "no",
        }
    )
    session = call.request.get(SESSION)
    sessions = call.ctx.auth.sessions
    await response.prepare(call.request)
    with contextlib.suppress(ConnectionError):
        async with feed.listen() as queue:
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        item = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None or (session is not None and not await sessions.alive(session.id)):
                    break  # the daemon stops, or the session ended (logout, expiry)
                data = json.dumps(item, separators=(",", ":")).encode()
                await response.write(b"event: transfers\ndata: " + data + b"\n\n")
        await response.write_eof()
    return response


def _read_source(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


@route(
    "GET",
    "/api/rules/{name}/source",
    summary="A rule's YAML file as it is on disk (what `PUT /api/rules/NAME` replaces)",
    area="rules",
    letter="r",
    tag="rules",
    responses={200: ("The YAML text", "RuleSource"), 404: ("No such rule", "Errors"), **_ERRORS},
    # Text: the file as written, comments and all (a YAML reader would make it a mapping).
    answer_type="text/plain",
)
async def rule_source(call: Call) -> web.StreamResponse:
    Query(call.request, ()).check()
    name = call.request.match_info["name"]
    rule = call.ctx.loaded.config.rules.get(name)
    if rule is None:
        raise not_found(f"no rule '{name}'")
    path = rule.source or call.ctx.loaded.rule_file(name)
    text = await asyncio.to_thread(_read_source, path)
    if text is None:
        raise not_found(f"rule '{name}' has no file (defined in the main configuration?)")
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
