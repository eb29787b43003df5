"""Errors of the admin API, always as JSON: `{"errors": [{"message", "errorCode"}]}`.

A handler raises `ApiError` with every problem it found at once; the middleware turns
it, aiohttp's own HTTP errors (404, 405, 413) and anything unexpected (500, logged,
without details) into that shape. Bad input is always a 4xx, never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

log = structlog.get_logger("gatewayd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The problems of an error answer, joined: what the audit of a refused write says.
REASON = web.ResponseKey("gatewayd_reason", str)

# Codes for aiohttp's own errors (no route, wrong method, body too large, ...).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request. `field` names the body field or query parameter
    concerned, when there is one."""

    message: str
    code: str
    field: str | None = None

    def to_json(self) -> dict[str, str]:
        found = {"message": self.message, "errorCode": self.code}
        if self.field:
            found["field"] = self.field
        return found


class ApiError(Exception):
    """An HTTP error answered with every problem listed."""

    def __init__(
        self,
        status: int,
        problems: Iterable[Problem],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.problems = list(problems)
        self.headers = dict(headers or {})
        super().__init__("; ".join(p.message for p in self.problems))


def bad_request(*problems: Problem) -> ApiError:
    return ApiError(400, problems)


def not_found(message: str) -> ApiError:
    return ApiError(404, [Problem(message, "not_found")])


def conflict(message: str, code: str = "conflict") -> ApiError:
    return ApiError(409, [Problem(message, code)])


def error_response(
    status: int, problems: Iterable[Problem], headers: Mapping[str, str] | None = None
) -> web.Response:
    problems = list(problems)
    response = web.json_response(
        {"errors": [p.to_json() for p in problems]}, status=status, headers=headers
    )
    response[REASON] = "; ".join(p.message for p in problems)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.problems, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        message = exc.reason
        if exc.status == 404:
            message = f"no such resource: {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        code = _HTTP_CODES.get(exc.status, "error")
        return error_response(exc.status, [Problem(message, code)], headers)
    except Exception:
        log.exception("API request failed", method=request.method, path=request.path)
        return error_response(500, [Problem("internal error (see the gateway's log)", "internal")])
