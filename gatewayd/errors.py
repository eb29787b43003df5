"""Exceptions that carry a transfer error code across layers."""

from __future__ import annotations

import errno

from gatewayd.model import ErrorCode


class TransferError(Exception):
    """A failure of a transfer, with the code that ends up in the row."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class LimitReached(TransferError):
    """A limit of the gateway is reached (TeExceededLimit): try again in `retry_after`
    seconds (HTTP 429 + Retry-After, SFTP failure, FTP 450)."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(ErrorCode.TeExceededLimit, message)
        self.retry_after = retry_after


class ResumeRefused(TransferError):
    """A resumed upload asked to continue beyond what the gateway durably holds
    (HTTP 409 + Upload-Offset, SFTP failure, FTP 554): `held` bytes are held."""

    def __init__(self, name: str, offset: int, held: int) -> None:
        super().__init__(
            ErrorCode.TeForbidden,
            f"cannot resume {name} at byte {offset}: {held} bytes are held",
        )
        self.held = held


class AlreadyRunning(TransferError):
    """An upload of the same name by the same account is running (HTTP 409)."""

    def __init__(self, name: str) -> None:
        super().__init__(ErrorCode.TeForbidden, f"{name} is already being uploaded")


class TaskError(TransferError):
    """A task failed; the transfer fails with TeExternalOperation unless said otherwise."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.TeExternalOperation) -> None:
        super().__init__(code, message)


class TaskWarning(Exception):
    """A task ended with a warning: logged and recorded, the chain goes on."""


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_error(
    exc: OSError, what: str, default: ErrorCode = ErrorCode.TeDataTransfer
) -> TransferError:
    """The transfer error an OSError means: a full disk or quota is TeBadSize."""
    if is_disk_full(exc):
        return TransferError(ErrorCode.TeBadSize, f"{what}: {exc.strerror} (disk full or quota)")
    if exc.errno == errno.ENOENT:
        return TransferError(ErrorCode.TeFileNotFound, f"{what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TransferError(ErrorCode.TeForbidden, f"{what}: {exc.strerror}")
    return TransferError(default, f"{what}: {exc.strerror or exc}")
