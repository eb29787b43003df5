"""`/api/rules`: list, get, create, replace, delete.

A rule sent to the API (JSON with the field names of the YAML files, or the YAML file
itself) is checked exactly like `check-config` checks the rules folder. Only a valid rule
is written, as `rules/<name>.yaml`, atomically (temporary file, fsync, rename); the whole
configuration is then loaded again and swapped into the running gateway. A change that
the reload refuses is rolled back: the rules folder is left as it was.

The body is parsed and checked in a worker thread, within `CHECK_TIMEOUT` seconds: its
cost is the client's choice, and the event loop serves the API, the protocol servers
and the signals meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gatewayd.api.body import JSON_TYPES, YAML_TYPES, is_yaml, parse_json, read_text, unsupported
from gatewayd.api.errors import ApiError, Problem, bad_request, conflict, not_found
from gatewayd.api.offloop import OffLoop, OverTime
from gatewayd.api.routes import Call, route
from gatewayd.api.shapes import rule_json
from gatewayd.config import ConfigError, LoadedConfig, ensure_folders, load_config, load_rule_text
from gatewayd.config.problems import Problem as ConfigProblem
from gatewayd.config.schema import RuleConfig
from gatewayd.config.yamlsource import MAX_DEPTH
from gatewayd.fsutil import fsync_dir

_ERRORS: dict[int, tuple[str, str | None]] = {
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
_BAD: dict[int, tuple[str, str | None]] = {
    400: ("Invalid rule: every problem is listed", "Errors"),
    413: ("Larger than a rule may be (256 KiB)", "Errors"),
    415: ("Neither JSON nor YAML", "Errors"),
    503: ("The rule could not be checked in time; nothing was changed", "Errors"),
}
_SOURCE = "<request>"
FILE_MODE = 0o640
# Seconds a rule's parsing and checks may take, and the threads that may run them at
# once. A real rule is a few kilobytes and takes milliseconds; the largest body allowed,
# made of nothing but tiny values, about five seconds of pure-Python YAML parsing (the
# YAML reader's limits bound what aliases and nesting can add).
MAX_RULE_BYTES = 256 * 1024
CHECK_TIMEOUT = 10.0
_CHECKS = OffLoop(limit=2, name="rule-check")


def _rule(call: Call, name: str) -> RuleConfig:
    rule = call.ctx.loaded.config.rules.get(name)
    if rule is None:
        raise not_found(f"no rule '{name}'")
    return rule


# --------------------------------------------------------------------------- reading


@route(
    "GET",
    "/api/rules",
    summary="List the rules",
    area="rules",
    letter="r",
    tag="rules",
    responses={200: ("Every rule", "RuleList"), **_ERRORS},
)
async def list_rules(call: Call) -> web.StreamResponse:
    rules = sorted(call.ctx.loaded.config.rules.values(), key=lambda r: r.name)
    return web.json_response({"rules": [rule_json(r) for r in rules]})


@route(
    "GET",
    "/api/rules/{name}",
    summary="One rule",
    area="rules",
    letter="r",
    tag="rules",
    responses={200: ("The rule", "Rule"), 404: ("No such rule", "Errors"), **_ERRORS},
)
async def get_rule(call: Call) -> web.StreamResponse:
    return web.json_response(rule_json(_rule(call, call.request.match_info["name"])))


# --------------------------------------------------------------------------- writing


async def _body(call: Call) -> tuple[str, bool]:
    """The body as text, and whether it is YAML (else JSON)."""
    request = call.request
    as_yaml = is_yaml(request)
    if not as_yaml and request.content_type not in JSON_TYPES:
        raise unsupported(request, (*JSON_TYPES, *YAML_TYPES))
    if (request.content_length or 0) > MAX_RULE_BYTES:
        raise _too_large()
    text = await read_text(request)
    if len(text) > MAX_RULE_BYTES:  # characters: at most as many as bytes
        raise _too_large()
    return text, as_yaml


def _too_large() -> ApiError:
    limit = f"{MAX_RULE_BYTES // 1024} KiB"
    return ApiError(413, [Problem(f"a rule is at most {limit} of JSON or YAML", "body_too_large")])


def _yaml_text(raw: str, as_yaml: bool, name: str | None, user: str) -> str:
    """The rule as YAML text (a JSON body written as the YAML file it becomes)."""
    if as_yaml:
        return raw
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request(Problem("the body must be a JSON object (a rule)", "bad_value"))
    if _deeper_than(body, MAX_DEPTH):
        raise bad_request(
            Problem(f"lists and objects nested more than {MAX_DEPTH} levels deep", "invalid_rule")
        )
    if name is not None:
        body.setdefault("name", name)
    header = f"# Written through the admin API by {user}.\n"
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects nest more than `limit` levels: the YAML reader's limit,
    checked before the JSON is written as YAML (the writer recurses)."""
    level = [value]
    for _ in range(limit + 1):
        level = [item for item in level if isinstance(item, dict | list)]
        if not level:
            return False
        level = [
            child for item in level for child in (item.values() if isinstance(item, dict) else item)
        ]
    return True


def _checked(
    loaded: LoadedConfig, raw: str, as_yaml: bool, name: str | None, user: str
) -> tuple[RuleConfig, str]:
    """Blocking (a worker thread): the rule parsed and checked, and its YAML text."""
    text = _yaml_text(raw, as_yaml, name, user)
    try:
        return load_rule_text(loaded, text, _SOURCE), text
    except ConfigError as exc:
        raise bad_request(*_problems(exc, as_yaml)) from None


def _problems(error: ConfigError, with_lines: bool, code: str = "invalid_rule") -> list[Problem]:
    def one(p: ConfigProblem) -> Problem:
        where = f"line {p.line}: " if with_lines and p.line > 0 and str(p.file) == _SOURCE else ""
        return Problem(where + p.message, code)

    return [one(p) for p in error.problems]


def _write_atomically(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """`text` as `path`, all or nothing, durable when this returns (blocking)."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _restore(path: Path, previous: bytes | None, mode: int = FILE_MODE) -> None:
    if previous is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fsync_dir(path.parent)
    else:
        _write_atomically(path, previous.decode("utf-8"), mode)


def _reload(config_file: Path) -> LoadedConfig:
    loaded = load_config(config_file)
    ensure_folders(loaded)
    return loaded


async def _change(call: Call, path: Path, text: str | None, mode: int = FILE_MODE) -> None:
    """Write (or, with None, delete) a rule file, reload, swap; rolled back when the
    reload fails. `mode`: the file's (0600 for files with secrets)."""
    previous = await asyncio.to_thread(_read_bytes, path)
    if text is None:
        await asyncio.to_thread(_restore, path, None)
    else:
        await asyncio.to_thread(_write_atomically, path, text, mode)
    try:
        loaded = await asyncio.to_thread(_reload, call.ctx.loaded.paths.config_file)
    except (ConfigError, OSError) as exc:
        await asyncio.to_thread(_restore, path, previous, mode)
        problems = (
            [Problem(str(p), "invalid_config") for p in exc.problems]
            if isinstance(exc, ConfigError)
            else [Problem(f"cannot prepare the rule's folders: {exc}", "invalid_config")]
        )
        raise ApiError(
            409,
            [
                Problem(
                    "the configuration on disk does not load; nothing was changed",
                    "invalid_config",
                ),
                *problems,
            ],
        ) from None
    call.ctx.apply_config(loaded)


# Schedules and pollers are written the same way (gatewayd.api.automation).
change_file = _change


async def _save(call: Call, url_name: str | None) -> tuple[RuleConfig, bool]:
    raw, as_yaml = await _body(call)
    async with call.ctx.config_lock:
        loaded = call.ctx.loaded
        try:
            rule, text = await _CHECKS.run(
                _checked, loaded, raw, as_yaml, url_name, call.principal.user,
                timeout=CHECK_TIMEOUT,
            )  # fmt: skip
        except OverTime:
            raise ApiError(
                503,
                [
                    Problem(
                        f"the rule could not be checked within {CHECK_TIMEOUT:g} s "
                        "(too large or too complex?); nothing was changed",
                        "check_timeout",
                    )
                ],
            ) from None
        if url_name is not None and rule.name != url_name:
            raise bad_request(
                Problem(
                    f"the rule is named '{rule.name}' but the URL names '{url_name}' "
                    "(a rule cannot be renamed: create the new one, delete the old one)",
                    "name_mismatch",
                    "name",
                )
            )
        exists = rule.name in loaded.config.rules
        if url_name is None and exists:
            raise conflict(f"rule '{rule.name}' already exists", "already_exists")
        path = loaded.rule_file(rule.name)
        await _change(call, path, text)
        saved = call.ctx.loaded.config.rules[rule.name]
    await call.audit(
        "rule.replace" if exists else "rule.create",
        f"rule/{rule.name}",
        {"file": str(path), "rule": rule_json(saved)},
    )
    return saved, not exists


@route(
    "POST",
    "/api/rules",
    summary="Create a rule (JSON with the YAML field names, or YAML)",
    area="rules",
    letter="w",
    tag="rules",
    body="Rule",
    body_yaml=True,
    responses={
        201: ("Created and loaded; `Location` names it", "Rule"),
        409: ("A rule of that name exists", "Errors"),
        **_BAD,
        **_ERRORS,
    },
)
async def create_rule(call: Call) -> web.StreamResponse:
    rule, _ = await _save(call, None)
    return web.json_response(
        rule_json(rule), status=201, headers={"Location": f"/api/rules/{rule.name}"}
    )


@route(
    "PUT",
    "/api/rules/{name}",
    summary="Create or replace a rule (JSON with the YAML field names, or YAML)",
    description="Transfers already created keep the task chains they were created with.",
    area="rules",
    letter="w",
    tag="rules",
    body="RuleReplace",
    body_yaml=True,
    responses={
        200: ("Replaced and loaded", "Rule"),
        201: ("Created and loaded", "Rule"),
        409: ("The configuration on disk does not load", "Errors"),
        **_BAD,
        **_ERRORS,
    },
)
async def replace_rule(call: Call) -> web.StreamResponse:
    rule, created = await _save(call, call.request.match_info["name"])
    headers = {"Location": f"/api/rules/{rule.name}"} if created else None
    return web.json_response(rule_json(rule), status=201 if created else 200, headers=headers)


@route(
    "DELETE",
    "/api/rules/{name}",
    summary="Delete a rule (its file); transfers already created keep their chains",
    area="rules",
    letter="d",
    tag="rules",
    responses={
        204: ("Deleted", None),
        404: ("No such rule", "Errors"),
        409: ("The configuration on disk does not load", "Errors"),
        **_ERRORS,
    },
)
async def delete_rule(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    async with call.ctx.config_lock:
        rule = _rule(call, name)
        path = rule.source or call.ctx.loaded.rule_file(name)
        await _change(call, path, None)
    await call.audit("rule.delete", f"rule/{name}", {"file": str(path)})
    return web.Response(status=204)
