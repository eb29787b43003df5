"""Transfer error codes and HTTP statuses, both ways, and the JSON error body."""

from __future__ import annotations

import json

from gatewayd.model import ErrorCode

_STATUS = {
    ErrorCode.TeBadAuthentication: 401,
    ErrorCode.TeForbidden: 403,
    ErrorCode.TeFileNotFound: 404,
    ErrorCode.TeStopped: 409,
    ErrorCode.TeCanceled: 409,
    ErrorCode.TeExpired: 410,
    ErrorCode.TeIntegrity: 422,
    ErrorCode.TeExceededLimit: 429,
    ErrorCode.TeDataTransfer: 400,
    ErrorCode.TeConnectionReset: 400,
    ErrorCode.TeUnimplemented: 501,
    ErrorCode.TeShuttingDown: 503,
    ErrorCode.TeBadSize: 507,
}

_CODE = {
    401: ErrorCode.TeBadAuthentication,
    403: ErrorCode.TeForbidden,
    404: ErrorCode.TeFileNotFound,
    410: ErrorCode.TeFileNotFound,
    413: ErrorCode.TeBadSize,
    422: ErrorCode.TeIntegrity,
    429: ErrorCode.TeExceededLimit,
    501: ErrorCode.TeUnimplemented,
    502: ErrorCode.TeConnection,
    503: ErrorCode.TeConnection,
    504: ErrorCode.TeConnection,
    507: ErrorCode.TeBadSize,
}


def status_for(code: ErrorCode) -> int:
    """The HTTP status that answers a transfer ending with `code`."""
    return _STATUS.get(code, 500)


def code_for(status: int, header: str | None = None) -> ErrorCode:
    """The error code of a peer's error response: its `Waarp-Error-Code` when it is one
    of ours (gateway to gateway), else what the status means."""
    if header:
        try:
            return ErrorCode(header)
        except ValueError:
            pass
    if status in _CODE:
        return _CODE[status]
    return ErrorCode.TeExternalOperation if status >= 500 else ErrorCode.TeDataTransfer


def error_body(message: str, code: ErrorCode | str) -> bytes:
    """`{"errors": [{"message": ..., "errorCode": ...}]}`, as the admin API answers."""
    return json.dumps({"errors": [{"message": message, "errorCode": str(code)}]}).encode()


def peer_message(body: bytes, limit: int = 300) -> str:
    """The message of a peer's error body: ours (JSON) or the start of any text."""
    try:
        data = json.loads(body)
        return "; ".join(str(e["message"]) for e in data["errors"])[:limit]
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace")
        return " ".join(text.split())[:limit]
