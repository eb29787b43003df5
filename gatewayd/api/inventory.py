"""`/api/servers`, `/api/partners`, `/api/accounts`, `/api/users`: what is configured
(accounts, partners and users are written by gatewayd.api.objects).

No response ever carries a secret: fields marked `repr=False` in the configuration
models (passwords, hashes) and any field whose name looks secret are left out; a
response says whether a password is set, never what it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from gatewayd.api.errors import not_found
from gatewayd.api.routes import Call, route
from gatewayd.config.schema import AccountConfig, AdminUserConfig, PartnerConfig, ServerConfig
from gatewayd.logs import is_secret_key

_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}


def public_fields(model: BaseModel, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The model's fields that may be shown: not `repr=False`, not secret-looking."""
    skipped = set(skip)
    hidden = {
        name
        for name, info in type(model).model_fields.items()
        if info.repr is False or is_secret_key(name) or name in skipped
    }
    return model.model_dump(mode="json", exclude=hidden)


def server_json(call: Call, name: str, server: ServerConfig) -> dict[str, Any]:
    running = call.ctx.listeners().get(name)
    fields = public_fields(server, ("protocol", "address", "port", "enabled"))
    return {
        "name": name,
        "protocol": server.protocol,
        "address": server.address,
        "port": server.port,
        "enabled": server.enabled,
        "state": "running" if running else "stopped" if server.enabled else "disabled",
        "boundPort": running.bound_port if running else None,
        "options": fields,
    }


def in_main_file(call: Call, kind: str, name: str) -> bool:
    """Whether `name` of `kind` (accounts, partners, users) is defined in the main file:
    the API may not change it (409), the console offers no change."""
    return (kind, name) not in call.ctx.loaded.object_files


def partner_json(call: Call, name: str, partner: PartnerConfig) -> dict[str, Any]:
    fields = public_fields(
        partner,
        ("protocol", "address", "port", "login", "password", "max_transfers", "enabled"),
    )
    return {
        "name": name,
        "protocol": partner.protocol,
        "address": partner.address,
        "port": partner.port,
        "login": partner.login,
        "hasPassword": partner.password is not None,
        "maxTransfers": partner.max_transfers,
        "enabled": partner.enabled,
        "options": fields,
        "inMainFile": in_main_file(call, "partners", name),
    }


def account_json(call: Call, name: str, account: AccountConfig) -> dict[str, Any]:
    rules = sorted(r.name for r in call.ctx.loaded.config.rules.values() if r.allows_account(name))
    return {
        "name": name,
        "enabled": account.enabled,
        "hasPassword": account.password is not None,
        "publicKeys": list(account.public_keys),
        "maxUploads": account.max_uploads,
        "maxDownloads": account.max_downloads,
        "rules": rules,
        "inMainFile": in_main_file(call, "accounts", name),
    }


def user_json(call: Call, name: str, user: AdminUserConfig) -> dict[str, Any]:
    return {
        "name": name,
        "enabled": user.enabled,
        "permissions": dict(user.permissions),
        "inMainFile": in_main_file(call, "users", name),
    }


def _one(items: dict[str, Any], kind: str, name: str) -> Any:
    item = items.get(name)
    if item is None:
        raise not_found(f"no {kind} '{name}'")
    return item


@route(
    "GET",
    "/api/servers",
    summary="Our servers (listeners), with their state",
    area="servers",
    letter="r",
    tag="inventory",
    responses={200: ("Every server", "ServerList"), **_ERRORS},
)
async def list_servers(call: Call) -> web.StreamResponse:
    servers = call.ctx.loaded.config.servers
    return web.json_response(
        {"servers": [server_json(call, n, s) for n, s in sorted(servers.items())]}
    )


@route(
    "GET",
    "/api/servers/{name}",
    summary="One server",
    area="servers",
    letter="r",
    tag="inventory",
    responses={200: ("The server", "Server"), 404: ("No such server", "Errors"), **_ERRORS},
)
async def get_server(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    server = _one(call.ctx.loaded.config.servers, "server", name)
    return web.json_response(server_json(call, name, server))


@route(
    "GET",
    "/api/partners",
    summary="The partners we connect to as a client",
    area="partners",
    letter="r",
    tag="inventory",
    responses={200: ("Every partner", "PartnerList"), **_ERRORS},
)
async def list_partners(call: Call) -> web.StreamResponse:
    partners = call.ctx.loaded.config.partners
    return web.json_response(
        {"partners": [partner_json(call, n, p) for n, p in sorted(partners.items())]}
    )


@route(
    "GET",
    "/api/partners/{name}",
    summary="One partner",
    area="partners",
    letter="r",
    tag="inventory",
    responses={200: ("The partner", "Partner"), 404: ("No such partner", "Errors"), **_ERRORS},
)
async def get_partner(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    partner = _one(call.ctx.loaded.config.partners, "partner", name)
    return web.json_response(partner_json(call, name, partner))


@route(
    "GET",
    "/api/accounts",
    summary="The local accounts partners log in with",
    area="servers",
    letter="r",
    tag="inventory",
    responses={200: ("Every account", "AccountList"), **_ERRORS},
)
async def list_accounts(call: Call) -> web.StreamResponse:
    accounts = call.ctx.loaded.config.accounts
    return web.json_response(
        {"accounts": [account_json(call, n, a) for n, a in sorted(accounts.items())]}
    )


@route(
    "GET",
    "/api/accounts/{name}",
    summary="One local account",
    area="servers",
    letter="r",
    tag="inventory",
    responses={200: ("The account", "Account"), 404: ("No such account", "Errors"), **_ERRORS},
)
async def get_account(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    account = _one(call.ctx.loaded.config.accounts, "account", name)
    return web.json_response(account_json(call, name, account))


@route(
    "GET",
    "/api/users",
    summary="The admin users of this API and their permissions",
    area="users",
    letter="r",
    tag="inventory",
    responses={200: ("Every user", "UserList"), **_ERRORS},
)
async def list_users(call: Call) -> web.StreamResponse:
    users = call.ctx.loaded.config.api.users
    return web.json_response({"users": [user_json(call, n, u) for n, u in sorted(users.items())]})


@route(
    "GET",
    "/api/users/{name}",
    summary="One admin user",
    area="users",
    letter="r",
    tag="inventory",
    responses={200: ("The user", "User"), 404: ("No such user", "Errors"), **_ERRORS},
)
async def get_user(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    user = _one(call.ctx.loaded.config.api.users, "user", name)
    return web.json_response(user_json(call, name, user))
