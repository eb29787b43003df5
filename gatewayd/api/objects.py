"""`PUT`/`DELETE` of `/api/accounts/{name}`, `/api/partners/{name}`, `/api/users/{name}`:
accounts, partners and API users written as one YAML file each in their folders
(gatewayd.config.objects), never in the main file.

A write is checked like check-config (400 with every problem: at its line for a YAML
body, by field for JSON), written atomically (mode 0600: the files hold hashes and
partners' passwords), then the whole configuration is reloaded and put in force on this
node and, through the rules notice, on the others (rolled back with a 409 when it does
not load). Passwords of accounts and users are hashed (argon2id) before they are
written; partners' are written as given (they are sent to the partner). No answer and
no audit entry ever carries one. Objects of the main file are read-only here (409).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import BaseModel

from gatewayd.api.auth import AREAS, intersect
from gatewayd.api.body import is_yaml, parse_json, read_text
from gatewayd.api.errors import ApiError, Problem, bad_request, conflict, not_found
from gatewayd.api.inventory import account_json, partner_json, public_fields, user_json
from gatewayd.api.routes import SCHEMAS, Call, Handler, route
from gatewayd.api.rules import change_file
from gatewayd.config.loader import partner_model
from gatewayd.config.objects import (
    ACCOUNTS,
    PARTNERS,
    USERS,
    Kind,
    check_object,
    kind_folder,
)
from gatewayd.config.problems import Problem as ConfigProblem
from gatewayd.config.yamlsource import YamlSource, parse_yaml
from gatewayd.passwords import HashingBusy

SECRET_MODE = 0o600
_BODY = Path("(body)")
_HASH_PREFIXES = ("$argon2id$", "$2b$", "$2a$", "$2y$")
# Past this many bytes a body is refused before it is parsed.
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class _Api:
    kind: Kind
    area: str
    schema: str  # the answer's schema
    body_schema: str
    hashed: bool  # whether its password is stored as a hash


_ACCOUNT = _Api(ACCOUNTS, "servers", "Account", "AccountWrite", True)
_PARTNER = _Api(PARTNERS, "partners", "Partner", "PartnerWrite", False)
_USER = _Api(USERS, "users", "User", "UserWrite", True)

_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Invalid: every problem is listed", "Errors"),
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
    409: (
        "Defined in the main file (edit it there), or the configuration does not load "
        "with this change; nothing was changed",
        "Errors",
    ),
}


def _current(call: Call, api: _Api) -> dict[str, Any]:
    config = call.ctx.loaded.config
    if api is _ACCOUNT:
        return dict(config.accounts)
    if api is _PARTNER:
        return dict(config.partners)
    return dict(config.api.users)


def _shown(call: Call, api: _Api, name: str) -> dict[str, Any]:
    obj = _current(call, api)[name]
    if api is _ACCOUNT:
        return account_json(call, name, obj)
    if api is _PARTNER:
        return partner_json(call, name, obj)
    return user_json(call, name, obj)


def _file_of(call: Call, api: _Api, name: str) -> Path | None:
    """The folder file of `name`, or None; 409 when the main file defines it."""
    loaded = call.ctx.loaded
    path = loaded.object_files.get((api.kind.key, name))
    if path is None and name in _current(call, api):
        raise conflict(
            f"{api.kind.label} '{name}' is defined in {loaded.paths.config_file}: edit it there",
            "defined_in_main_file",
        )
    return path


async def _body(call: Call) -> YamlSource:
    """The body as a parsed source: YAML with the lines of its values, JSON without."""
    text = await read_text(call.request)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BODY:
        raise ApiError(413, [Problem(f"at most {MAX_BODY // 1024} KiB", "body_too_large")])
    if is_yaml(call.request):
        source = parse_yaml(text, _BODY)
        if source.problems:
            raise bad_request(
                *(Problem(_where(p, True) + p.message, "invalid_yaml") for p in source.problems)
            )
    else:
        source = YamlSource(_BODY, _whole_numbers(parse_json(text)))
    if not isinstance(source.data, dict):
        raise bad_request(Problem("the body must be an object", "bad_value"))
    return source


def _whole_numbers(value: Any) -> Any:
    """JSON's 5.0 as 5: JSON Schema counts it as an integer, the configuration's models
    (strict, as for YAML files) would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _unshown(previous: BaseModel | None, given: dict[str, Any]) -> dict[str, Any]:
    """The fields of `previous` that GET never shows (passwords, a partner's private key
    and its passphrase) and `given` leaves out: an edit made from what GET shows keeps
    them. Not across a change of protocol (the new one may not have them)."""
    if previous is None:
        return {}
    protocol = getattr(previous, "protocol", None)
    if protocol is not None and given.get("protocol", protocol) != protocol:
        return {}
    hidden = set(type(previous).model_fields) - set(public_fields(previous)) - set(given)
    values = previous.model_dump(mode="json", include=hidden)
    return {k: v for k, v in values.items() if v is not None}


async def _hash_secret(call: Call, value: Any) -> Any:
    """A password as it is stored: a hash (one given already hashed is kept)."""
    if not isinstance(value, str) or not value or value.startswith(_HASH_PREFIXES):
        return value  # the check reports what is wrong with it
    try:
        return await call.ctx.hashing.hash(value)
    except HashingBusy as busy:
        retry = max(1, int(busy.retry_after) + 1)
        raise ApiError(
            503,
            [Problem(f"too many password checks waiting: try again in {retry} s", "busy")],
            headers={"Retry-After": str(retry)},
        ) from None


def _check_grants(call: Call, body: dict[str, Any]) -> None:
    """A user may not give an API user permissions it does not have itself."""
    wanted = body.get("permissions")
    if not isinstance(wanted, dict):
        return
    asked = {a: p for a, p in wanted.items() if a in AREAS and isinstance(p, str)}
    allowed = intersect(call.principal.permissions, asked)
    beyond = [
        f"{area}:{letter}"
        for area, letters in asked.items()
        for letter in letters
        if letter not in allowed.get(area, "")
    ]
    if beyond:
        raise ApiError(
            403,
            [
                Problem(
                    f"cannot grant what user '{call.principal.user}' does not have: "
                    + ", ".join(beyond),
                    "forbidden",
                    "permissions",
                )
            ],
        )


async def _put(call: Call, api: _Api) -> web.StreamResponse:
    name = call.request.match_info["name"]
    body = await _body(call)
    as_yaml = is_yaml(call.request)
    given = body.data.get("name", name)
    if given != name:
        raise bad_request(
            Problem(
                f"the body names {given!r} but the URL names '{name}' (create the new one, "
                "delete the old one)",
                "name_mismatch",
                "name",
            )
        )
    fields = {k: v for k, v in body.data.items() if k != "name"}
    # Checked as given, a plain password standing for the hash it becomes.
    shown = dict(fields)
    plain = shown.get("password")
    if api.hashed and isinstance(plain, str) and plain and not plain.startswith(_HASH_PREFIXES):
        shown["password"] = _HASH_PREFIXES[0]
    shown.update(_unshown(_current(call, api).get(name), shown))  # an edit keeps them
    if as_yaml:
        checked = replace(body, data={"name": name, **shown})
    else:
        # JSON written as YAML, checked there: each problem's line gives its field.
        checked = parse_yaml(yaml.safe_dump({"name": name, **shown}, sort_keys=False), _BODY)
    _, _, problems = check_object(api.kind, checked, partner_model, check_file_name=False)
    if problems:
        raise bad_request(*(_problem(p, checked, as_yaml, api) for p in problems))
    if api is _USER:
        _check_grants(call, body.data)
    async with call.ctx.config_lock:
        loaded = call.ctx.loaded
        path = _file_of(call, api, name)
        folder = kind_folder(api.kind, loaded.config.daemon, loaded.paths.home)
        path = path or folder / f"{name}.yaml"
        previous = _current(call, api).get(name)
        if api.hashed and "password" in fields:
            fields["password"] = await _hash_secret(call, fields["password"])
        fields.update(_unshown(previous, fields))
        text = f"# Written through the admin API by {call.principal.user}.\n" + yaml.safe_dump(
            {"name": name, **fields}, sort_keys=False, allow_unicode=True
        )
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        await change_file(call, path, text, SECRET_MODE)
    created = previous is None
    kind = api.kind.key.rstrip("s")
    await call.audit(
        f"{kind}.{'create' if created else 'replace'}",
        f"{kind}/{name}",
        # The fields given, never their values: some are secrets.
        {"file": str(path), "fields": sorted(k for k in body.data if k != "name")},
    )
    return web.json_response(_shown(call, api, name), status=201 if created else 200)


def _where(p: ConfigProblem, as_yaml: bool) -> str:
    # YAML: the line in the body; JSON: the message names the field.
    return f"line {p.line}: " if as_yaml and p.line > 0 else ""


def _problem(p: ConfigProblem, source: YamlSource, as_yaml: bool, api: _Api) -> Problem:
    code = f"invalid_{api.kind.key.rstrip('s')}"
    if as_yaml:
        return Problem(_where(p, True) + p.message, code)
    # The deepest value on the problem's line names the field (`permissions.transfers`).
    paths = [path for path, line in source.lines.items() if line == p.line and path]
    field = ".".join(str(part) for part in max(paths, key=len)) if paths else None
    return Problem(p.message, code, field)


async def _delete(call: Call, api: _Api) -> web.StreamResponse:
    name = call.request.match_info["name"]
    async with call.ctx.config_lock:
        path = _file_of(call, api, name)
        if path is None:
            raise not_found(f"no {api.kind.label} '{name}'")
        await change_file(call, path, None, SECRET_MODE)
    kind = api.kind.key.rstrip("s")
    await call.audit(f"{kind}.delete", f"{kind}/{name}", {"file": str(path)})
    return web.Response(status=204)


_NULLABLE_COUNT = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]}
_PASSWORD = {
    "type": "string",
    "minLength": 1,
    "writeOnly": True,
    "description": "Never shown back; left out, the current one is kept",
}
_HASHED_PASSWORD = {
    **_PASSWORD,
    "description": "Plain (hashed on write) or an argon2id/bcrypt hash; never shown back",
}
SCHEMAS["AccountWrite"] = {
    "type": "object",
    "properties": {
        "password": {"anyOf": [_HASHED_PASSWORD, {"type": "null"}], "description": "null: none"},
        "public_keys": {"type": "array", "items": {"type": "string"}},
        "enabled": {"type": "boolean", "default": True},
        "max_uploads": _NULLABLE_COUNT,
        "max_downloads": _NULLABLE_COUNT,
    },
    "additionalProperties": False,
}
SCHEMAS["PartnerWrite"] = {
    "type": "object",
    "description": "The fields of a partner in gatewayd.yaml (those of its protocol)",
    "properties": {
        "protocol": {"type": "string"},
        "address": {"type": "string"},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "login": {"type": "string"},
        "password": {"anyOf": [_PASSWORD, {"type": "null"}], "description": "null: none"},
        "max_transfers": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
        "enabled": {"type": "boolean", "default": True},
    },
    "required": ["protocol"],
}
SCHEMAS["UserWrite"] = {
    "type": "object",
    "properties": {
        "password": _HASHED_PASSWORD,
        "permissions": {
            "type": "object",
            "propertyNames": {"enum": list(AREAS)},
            "additionalProperties": {"type": "string", "pattern": "^[rwd]*$"},
        },
        "enabled": {"type": "boolean", "default": True},
    },
    "additionalProperties": False,
}


def _write_route(api: _Api, method: str, path: str, letter: str) -> Callable[[Handler], Handler]:
    what = api.kind.label
    if method == "PUT":
        return route(
            "PUT",
            path,
            summary=f"Create or replace {'an' if what[0] in 'aA' else 'a'} {what}",
            description=f"Written to its own file in `daemon.{api.kind.dir_field}` and "
            "loaded on every node; the URL names it (a `name` in the body must match). "
            "`enabled: false` disables it. "
            + (
                "The password is hashed (argon2id) before it is written; leaving it out "
                "keeps the current one."
                if api.hashed
                else "The password is stored as given (it is sent to the partner), never "
                "shown; leaving it out keeps the current one (so do fields never shown, "
                "such as an SFTP partner's `private_key` and `private_key_passphrase`, "
                "while the protocol stays the same)."
            ),
            area=api.area,
            letter=letter,
            tag="inventory",
            body=api.body_schema,
            body_yaml=True,
            responses={
                200: ("Replaced and in force", api.schema),
                201: ("Created and in force", api.schema),
                413: ("Body too large", "Errors"),
                503: ("Too many password hashes waiting; Retry-After", "Errors"),
                **_ERRORS,
            },
        )
    return route(
        "DELETE",
        path,
        summary=f"Delete an object written through the API ({what})",
        area=api.area,
        letter=letter,
        tag="inventory",
        responses={
            204: ("Deleted and out of force", None),
            404: (f"No such {what} in its folder", "Errors"),
            **_ERRORS,
        },
    )


@_write_route(_ACCOUNT, "PUT", "/api/accounts/{name}", "w")
async def put_account(call: Call) -> web.StreamResponse:
    return await _put(call, _ACCOUNT)


@_write_route(_ACCOUNT, "DELETE", "/api/accounts/{name}", "d")
async def delete_account(call: Call) -> web.StreamResponse:
    return await _delete(call, _ACCOUNT)


@_write_route(_PARTNER, "PUT", "/api/partners/{name}", "w")
async def put_partner(call: Call) -> web.StreamResponse:
    return await _put(call, _PARTNER)


@_write_route(_PARTNER, "DELETE", "/api/partners/{name}", "d")
async def delete_partner(call: Call) -> web.StreamResponse:
    return await _delete(call, _PARTNER)


@_write_route(_USER, "PUT", "/api/users/{name}", "w")
async def put_user(call: Call) -> web.StreamResponse:
    return await _put(call, _USER)


@_write_route(_USER, "DELETE", "/api/users/{name}", "d")
async def delete_user(call: Call) -> web.StreamResponse:
    return await _delete(call, _USER)
