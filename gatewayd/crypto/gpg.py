"""GnuPG driven as an asyncio subprocess.

`gpg` reads the input file on its standard input and writes the output file on its
standard output, both open file descriptors handed over by the caller: data never
passes through the gateway's memory, whatever its size. It reports on a status channel
(`--status-fd 2`: machine-readable `[GNUPG:] KEYWORD args` lines, mixed with its human
messages on stderr), which is what failures are told from. A passphrase is written to a
pipe of its own (`--pinentry-mode loopback --passphrase-fd N`): never on a command line
(visible in `ps`), never in the environment, never logged.

Every run uses the gateway's own GnuPG home (`--homedir`), trusts the keys it holds as
they are (`--trust-model always`: the configuration is the source of truth) and never
looks keys up on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = "[GNUPG:] "
# libgpg-error's code for a wrong passphrase (gpg reports it without BAD_PASSPHRASE when
# the passphrase comes through loopback).
GPG_ERR_BAD_PASSPHRASE = 11
# Human messages kept for an error message: the last few, each shortened.
_MESSAGE_LINES = 5


@dataclass(frozen=True)
class Status:
    """One `[GNUPG:]` line: its keyword and its arguments."""

    keyword: str
    args: tuple[str, ...]


@dataclass
class GpgResult:
    """How a run of gpg ended."""

    returncode: int
    status: list[Status] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    # Standard output, when captured (listings: small).
    output: str = ""

    def has(self, keyword: str) -> bool:
        return any(s.keyword == keyword for s in self.status)

    def first(self, keyword: str) -> Status | None:
        return next((s for s in self.status if s.keyword == keyword), None)

    def all(self, keyword: str) -> list[Status]:
        return [s for s in self.status if s.keyword == keyword]

    def error_codes(self) -> set[int]:
        """GnuPG's error codes (without their source) of its ERROR and FAILURE lines."""
        codes: set[int] = set()
        for status in self.status:
            if status.keyword in ("ERROR", "FAILURE") and status.args:
                last = status.args[-1]
                if last.isdigit():
                    codes.add(int(last) & 0xFFFF)
        return codes

    def bad_passphrase(self) -> bool:
        return self.has("BAD_PASSPHRASE") or GPG_ERR_BAD_PASSPHRASE in self.error_codes()

    def message(self) -> str:
        """gpg's own last words (for failures no status line explains)."""
        lines = [m.removeprefix("gpg: ") for m in self.messages if m.strip()]
        return "; ".join(line[:200] for line in lines[-_MESSAGE_LINES:]) or "no message"


class GpgUnavailable(Exception):
    """The gpg program cannot be started."""


def base_args(home: Path) -> list[str]:
    """The options of every run in the gateway's GnuPG home."""
    return [
        "--homedir",
        str(home),
        "--batch",
        "--no-tty",
        "--no-greeting",
        "--no-permission-warning",
        "--status-fd",
        "2",
        "--trust-model",
        "always",
        "--no-auto-key-retrieve",
        "--no-auto-key-locate",
        "--no-auto-check-trustdb",
    ]


async def run_gpg(
    program: str,
    args: list[str],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    passphrase: str | None = None,
    timeout: float | None = None,
    capture: bool = False,
) -> GpgResult:
    """Run `program args` (file descriptors as standard input and output; None: none)
    and parse its status. A passphrase, if given, is read by gpg from a pipe (the options
    saying so are added here). On timeout or cancellation the program is killed before
    this returns or raises."""
    read_fd: int | None = None
    pass_fds: tuple[int, ...] = ()
    if passphrase is not None:
        read_fd, write_fd = os.pipe()
        # A passphrase is far smaller than a pipe's buffer: written whole before gpg starts.
        try:
            os.write(write_fd, passphrase.encode() + b"\n")
        finally:
            os.close(write_fd)
        # The descriptor keeps its number in the child (pass_fds).
        pass_fds = (read_fd,)
        args = ["--pinentry-mode", "loopback", "--passphrase-fd", str(read_fd), *args]
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=stdout
            if stdout is not None
            else (asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL),
            stderr=asyncio.subprocess.PIPE,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise GpgUnavailable(f"program {program!r} not found") from None
    finally:
        if read_fd is not None:
            os.close(read_fd)
    try:
        stderr, output = await asyncio.wait_for(_read_all(process), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await process.wait()
        raise
    result = GpgResult(returncode=process.returncode or 0, output=output.decode("utf-8", "replace"))
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.startswith(_STATUS):
            words = line[len(_STATUS) :].split(" ")
            result.status.append(Status(words[0], tuple(words[1:])))
        else:
            result.messages.append(line)
    return result


async def _read_all(process: asyncio.subprocess.Process) -> tuple[bytes, bytes]:
    assert process.stderr is not None

    async def nothing() -> bytes:
        return b""

    out = process.stdout.read() if process.stdout is not None else nothing()
    stderr, output = await asyncio.gather(process.stderr.read(), out)
    await process.wait()
    return stderr, output
