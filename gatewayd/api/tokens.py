"""`/api/tokens`: bearer tokens that admin users issue for scripts, and revoke.

A token is a signed JWT with an expiry, recorded in the database so that it can be
listed and revoked; the token string itself is shown once, in the answer that creates
it, and never stored. A token is issued only to a caller who gave their password (a
token cannot mint tokens), for that caller, with at most their permissions.

Listing and revoking tokens is for password logins, and for tokens issued with
`manageTokens: true`: a token made for a scraper or a script (`permissions: {}`) cannot
revoke its user's other tokens. Others' tokens need the `users` area besides.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from gatewayd.api.body import Query, read_object
from gatewayd.api.errors import ApiError, Problem, bad_request, not_found
from gatewayd.api.routes import Call, Param, route
from gatewayd.api.shapes import token_json
from gatewayd.requests import TokenRequest, parse

_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad request: every problem is listed", "Errors"),
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}


@route(
    "POST",
    "/api/tokens",
    summary="Issue a bearer token for the calling user (password authentication only)",
    description="The answer carries the token once; keep it. It expires after "
    "`expiresIn` seconds (default one day, at most 366 days) and can be limited to some "
    "of the user's permissions.",
    area=None,
    letter=None,
    tag="tokens",
    body="TokenRequest",
    responses={201: ("The token (shown once) and its record", "NewToken"), **_ERRORS},
)
async def create_token(call: Call) -> web.StreamResponse:
    if call.principal.token_id is not None:
        raise ApiError(
            403,
            [Problem("tokens are issued to a user name and password, not to a token", "forbidden")],
        )
    parsed = parse(TokenRequest, await read_object(call.request))
    problems = [Problem(e.message, e.code, e.field or None) for e in parsed.errors]
    request = parsed.request
    permissions = request.permissions
    if permissions:
        beyond = [
            f"{area}:{letter}"
            for area, letters in permissions.items()
            for letter in letters
            if not call.principal.can(area, letter)
        ]
        if beyond:
            problems.append(
                Problem(
                    f"cannot grant what user '{call.principal.user}' does not have: "
                    + ", ".join(beyond),
                    "not_allowed",
                    "permissions",
                )
            )
    if problems:
        raise bad_request(*problems)
    token, record = await call.ctx.auth.issue(
        call.principal,
        timedelta(seconds=float(request.expires_in)),
        {area: letters for area, letters in permissions.items()}
        if permissions is not None
        else None,
        request.comment,
        manage_tokens=request.manage_tokens,
    )
    await call.audit(
        "token.create",
        f"token/{record.id}",
        {
            "expires": record.expires.isoformat(),
            "permissions": dict(record.permissions),
            "manageTokens": record.manage_tokens,
        },
    )
    return web.json_response(
        {"token": token, **token_json(record, call.ctx.tz)},
        status=201,
        headers={"Location": f"/api/tokens/{record.id}"},
    )


@route(
    "GET",
    "/api/tokens",
    summary="Tokens: the caller's own, or everyone's with the users:r permission",
    description="For password logins, and tokens issued with `manageTokens`.",
    area=None,
    letter=None,
    tag="tokens",
    query=(Param("user", "Only this user's tokens (others' need users:r)"),),
    responses={200: ("Token records (never the tokens themselves)", "TokenList"), **_ERRORS},
)
async def list_tokens(call: Call) -> web.StreamResponse:
    call.principal.require_token_management()
    query = Query(call.request, ("user",))
    user = query.text("user")
    query.check()
    if user is None and not call.principal.can("users", "r"):
        user = call.principal.user
    if user != call.principal.user:
        call.principal.require("users", "r")
    tokens = await call.ctx.store.list_tokens(user)
    return web.json_response({"tokens": [token_json(t, call.ctx.tz) for t in tokens]})


@route(
    "DELETE",
    "/api/tokens/{id}",
    summary="Revoke a token: the caller's own, or anyone's with the users:d permission",
    description="For password logins, and tokens issued with `manageTokens`.",
    area=None,
    letter=None,
    tag="tokens",
    responses={
        204: ("Revoked", None),
        404: ("No such token, or already revoked", "Errors"),
        **_ERRORS,
    },
)
async def revoke_token(call: Call) -> web.StreamResponse:
    call.principal.require_token_management()
    token_id = call.request.match_info["id"]
    store = call.ctx.store
    record = await store.get_token(token_id)
    if record is None:
        raise not_found(f"no token '{token_id}'")
    if record.user != call.principal.user:
        call.principal.require("users", "d")
    if not await store.revoke_token(token_id, call.ctx.clock.now()):
        raise not_found(f"token '{token_id}' is already revoked")
    await call.audit("token.revoke", f"token/{token_id}", {"user": record.user})
    return web.Response(status=204)
