"""Transfer errors and FTP replies, both ways: the core's refusals as our replies
(mapped once, here), and a partner's replies as transfer error codes."""

from __future__ import annotations

import math

from gatewayd.errors import AlreadyRunning, LimitReached, ResumeRefused, TransferError
from gatewayd.model import ErrorCode

_REPLY = {
    ErrorCode.TeForbidden: 550,
    ErrorCode.TeFileNotFound: 550,
    ErrorCode.TeShuttingDown: 421,
    ErrorCode.TeExceededLimit: 450,
    ErrorCode.TeBadSize: 452,
    ErrorCode.TeUnimplemented: 502,
    ErrorCode.TeConnectionReset: 426,
    ErrorCode.TeDataTransfer: 426,
    ErrorCode.TeBadAuthentication: 530,
}


def reply_for(error: TransferError) -> tuple[int, str]:
    """The reply that answers a refusal or failure of the core."""
    if isinstance(error, ResumeRefused):
        # RFC 959's "invalid REST parameter"; the text carries the held count, where
        # the partner may resume (SIZE says it too).
        return 554, f"{error.message} (resume at most from byte {error.held})"
    if isinstance(error, AlreadyRunning):
        return 450, error.message
    if isinstance(error, LimitReached):
        return 450, f"{error.message}; try again in {max(1, math.ceil(error.retry_after))} s"
    return _REPLY.get(error.code, 451), error.message


def code_for(reply: int, default: ErrorCode = ErrorCode.TeDataTransfer) -> ErrorCode:
    """The error code of a partner's failure reply."""
    if reply in (530, 532, 331, 332):
        return ErrorCode.TeBadAuthentication
    if reply in (421, 425, 426):
        return ErrorCode.TeConnectionReset if reply != 421 else ErrorCode.TeConnection
    if reply in (452, 552):
        return ErrorCode.TeBadSize
    if reply == 450:
        return ErrorCode.TeExceededLimit
    if reply == 451:
        return ErrorCode.TeExternalOperation
    if reply in (502, 504):
        return ErrorCode.TeUnimplemented
    if reply == 553:
        return ErrorCode.TeForbidden
    if reply in (521, 522, 534):
        return ErrorCode.TeConnection
    return default
