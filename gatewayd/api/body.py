"""Reading request bodies and query strings strictly: every problem becomes a `Problem`.

Bodies must say they are JSON (415 otherwise); malformed JSON, duplicate keys, NaN and
empty bodies are refused with their own codes. Query parameters are checked against the
route's list: an unknown one is an error, not silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, tzinfo
from typing import Any

from aiohttp import web

from gatewayd.api.errors import ApiError, Problem, bad_request

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Duplicate(key)
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _media_type(request: web.Request) -> str:
    return request.content_type.lower() if request.headers.get("Content-Type") else ""


def unsupported(request: web.Request, accepted: Iterable[str]) -> ApiError:
    got = request.headers.get("Content-Type") or "none"
    return ApiError(
        415,
        [
            Problem(
                f"unsupported Content-Type {got}: send {' or '.join(accepted)}",
                "unsupported_media_type",
            )
        ],
    )


async def read_text(request: web.Request) -> str:
    raw = await request.read()
    if not raw.strip():
        raise bad_request(Problem("the request has no body", "missing_body"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(Problem("the body is not valid UTF-8", "malformed_body")) from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _Duplicate as exc:
        raise bad_request(Problem(f"duplicate key '{exc}'", "duplicate_key", str(exc))) from None
    except RecursionError:  # the decoder recurses for each level of nesting
        raise bad_request(Problem("malformed JSON: nested too deeply", "malformed_json")) from None
    except ValueError as exc:
        raise bad_request(Problem(f"malformed JSON: {exc}", "malformed_json")) from None


async def read_json(request: web.Request) -> Any:
    """The JSON body of `request` (415 when it is not declared JSON)."""
    if _media_type(request) not in JSON_TYPES and not _media_type(request).endswith("+json"):
        raise unsupported(request, JSON_TYPES)
    return parse_json(await read_text(request))


async def read_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request(Problem("the body must be a JSON object", "bad_value"))
    return body


def is_yaml(request: web.Request) -> bool:
    return _media_type(request) in YAML_TYPES


# ------------------------------------------------------------------------ query strings


class Query:
    """The query string of a request, read parameter by parameter; problems collect in
    `problems` and `check()` raises them all at once."""

    def __init__(self, request: web.Request, allowed: Iterable[str]) -> None:
        self.params = request.query
        self.problems: list[Problem] = []
        allowed = set(allowed)
        for key in sorted(set(self.params)):
            if key not in allowed:
                self.problems.append(Problem(f"unknown query parameter '{key}'", "bad_query", key))

    def _single(self, name: str) -> str | None:
        values = self.params.getall(name, [])
        if len(values) > 1:
            self.problems.append(Problem(f"'{name}' is given more than once", "bad_query", name))
            return None
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        value = self._single(name)
        if value is not None and not value:
            self.problems.append(Problem(f"'{name}' is empty", "bad_query", name))
            return None
        return value

    def texts(self, name: str) -> list[str]:
        """A repeatable parameter; comma-separated values are split too."""
        return [
            part.strip()
            for value in self.params.getall(name, [])
            for part in value.split(",")
            if part.strip()
        ]

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._single(name)
        if value is None:
            return default
        try:
            number = int(value.strip())
        except ValueError:
            self.problems.append(Problem(f"'{name}' must be an integer", "bad_query", name))
            return default
        if not low <= number <= high:
            self.problems.append(
                Problem(f"'{name}' must be between {low} and {high}", "bad_query", name)
            )
            return default
        return number

    def time(self, name: str, tz: tzinfo) -> datetime | None:
        value = self._single(name)
        if value is None:
            return None
        # A `+` of an offset arrives as a space when the client did not encode it.
        text = value.strip().replace(" ", "+").replace("Z", "+00:00").replace("z", "+00:00")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.problems.append(
                Problem(f"'{name}': {value!r} is not an RFC 3339 date", "bad_query", name)
            )
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=tz)

    def check(self) -> None:
        if self.problems:
            raise bad_request(*self.problems)
