"""The exit statuses of `gatewayd`, defined once: every command returns one of these,
the `--help` epilogs list them, and the README documents them (a test holds the three
together)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["EPILOG", "CliError", "Exit", "epilog"]


class Exit(IntEnum):
    """What a script can rely on after `gatewayd ...`."""

    OK = 0
    # The API refused the request (400, 409, ...) or failed; for the daemon commands, an
    # invalid configuration or a refused start.
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3  # no answer from the API (address, TLS, timeout)
    AUTH = 4  # 401 or 403: credentials missing, wrong, or not allowed
    NOT_FOUND = 5  # 404
    TRANSFER_FAILED = 6  # `watch`: the transfer ended in ERROR, CANCELLED or PAUSED
    INTERRUPTED = 130  # Ctrl-C, as shells report a SIGINT


MEANINGS: dict[Exit, str] = {
    Exit.OK: "success",
    Exit.ERROR: "request refused or failed",
    Exit.USAGE: "usage error",
    Exit.UNREACHABLE: "API unreachable",
    Exit.AUTH: "authentication or permission refused",
    Exit.NOT_FOUND: "not found",
    Exit.TRANSFER_FAILED: "the watched transfer did not end DONE",
    Exit.INTERRUPTED: "interrupted",
}


def epilog(*codes: Exit, **meanings: str) -> str:
    """`exit status: 0 success, 1 ...` for `codes` (default: all but INTERRUPTED);
    `meanings` overrides the text of a code by its name (`ERROR="invalid configuration"`)."""
    chosen = codes or tuple(code for code in Exit if code is not Exit.INTERRUPTED)
    parts = [f"{int(code)} {meanings.get(code.name, MEANINGS[code])}" for code in chosen]
    return "exit status: " + ", ".join(parts)


# The epilog of every command that talks to the admin API.
EPILOG = epilog()


class CliError(Exception):
    """A failure to report as one line on stderr, with the exit status it means."""

    def __init__(self, status: Exit, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
