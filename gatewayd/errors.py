"""Exceptions that carry a transfer error code across layers."""

from __future__ import annotations

from gatewayd.model import ErrorCode


class TransferError(Exception):
    """A failure of a transfer, with the code that ends up in the row."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TaskError(TransferError):
    """A task failed; the transfer fails with TeExternalOperation unless said otherwise."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.TeExternalOperation) -> None:
        super().__init__(code, message)


class TaskWarning(Exception):
    """A task ended with a warning: logged and recorded, the chain goes on."""
