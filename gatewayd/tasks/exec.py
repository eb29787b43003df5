"""External programs: EXEC, EXECMOVE, EXECOUTPUT.

Arguments: `path` (the program; without a `/` it is looked up in `PATH`, a relative path
with a `/` is taken from the home folder), `args` (a list, or a string split like a shell
would with `shlex`, before markers are substituted so that a file name with spaces stays
one argument) and `delay` (the time limit in milliseconds; absent or 0: the daemon's
`exec_timeout`).

The program runs without a shell, in its own session and process group, with stdin from
/dev/null and the markers in its environment (see `markers.marker_env`). Its stdout and
stderr lines go to the task log as they come. Exit status 0 is success, 1 a warning, any
other a failure whose message carries the status and the last line of stderr. At the
time limit (or when the task is cancelled) the whole process group gets SIGTERM, then
SIGKILL after `kill_grace` seconds.

On Linux the program is started through util-linux's `setpriv --pdeathsig KILL`, so that
it dies with the daemon even when the daemon is killed (kill -9, the OOM killer) and
cannot stop it: after the restart the transfer's chain runs the task again, and the
program of the killed run must not go on beside the new one.

The task lasts until the program has exited and its stdout and stderr are closed: a
process it starts in the background without redirecting its output (`job &` rather than
`job >/dev/null 2>&1 &`) keeps the task running, as it would with Waarp, and is killed
with the rest of the group at the time limit. Redirected background jobs are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gatewayd.errors import TaskError, TaskWarning
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks._fsops import os_error_text
from gatewayd.tasks._target import retarget
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import marker_env, substitute, substitute_args

# Starts a program with a parent-death signal (util-linux; absent on other systems).
_SETPRIV = shutil.which("setpriv") if os.uname().sysname == "Linux" else None

# Longer lines are logged in pieces: a program without newlines cannot exhaust memory.
_MAX_LINE = 64 * 1024
# EXECOUTPUT's error message is at most this much of the end of stdout.
_MAX_MESSAGE = 4000
NEWFILENAME = "NEWFILENAME:"


@dataclass
class ExecResult:
    """How a program ended and the end of what it wrote."""

    returncode: int
    stdout: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    last_stderr: str = ""

    def last_stdout(self) -> str:
        """The last non-blank line of stdout, stripped ("" if none)."""
        for line in reversed(self.stdout):
            if line.strip():
                return line.strip()
        return ""


async def _pump(stream: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Call `emit` with each line of `stream` (without its line ending) as it arrives."""

    def decode(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace").rstrip("\r")

    pending = b""
    while chunk := await stream.read(_MAX_LINE):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            emit(decode(line))
        while len(pending) >= _MAX_LINE:
            emit(decode(pending[:_MAX_LINE]))
            pending = pending[_MAX_LINE:]
    if pending:
        emit(decode(pending))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # Gone already, or (after the leader exited) no member left: nothing to stop.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with code {returncode}"


class _ExecTask(ArgsTask):
    required_args: ClassVar[tuple[str, ...]] = ("path",)
    optional_args: ClassVar[tuple[str, ...]] = ("args", "delay")
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "path": Kind.TEXT,
        "args": Kind.TEXT_LIST,
        "delay": Kind.NUMBER,
    }
    kill_grace: float = 2.0

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        raw = args.get("args")
        if isinstance(raw, str):
            try:
                shlex.split(raw)
            except ValueError as error:
                problems.append(f"argument 'args' cannot be split: {error}")
        return problems

    def _command(self, ctx: TaskContext) -> tuple[str, list[str]]:
        program = substitute(self.text(self.args, "path"), ctx)
        if os.sep in program:
            program = self.path(ctx, program)
        raw = self.args.get("args", [])
        if isinstance(raw, str):
            try:
                tokens = shlex.split(raw)
            except ValueError as error:
                raise self.fail(f"argument 'args' cannot be split: {error}") from None
        elif isinstance(raw, list):
            tokens = [str(token) for token in raw]
        else:
            raise self.fail(f"argument 'args' must be {Kind.TEXT_LIST.value}")
        return program, [substitute(token, ctx) for token in tokens]

    def _timeout(self, ctx: TaskContext) -> float:
        delay_ms = self.number(substitute_args({"delay": self.args.get("delay")}, ctx), "delay")
        if delay_ms is None or delay_ms <= 0:
            return ctx.exec_timeout
        return delay_ms / 1000

    async def execute(self, ctx: TaskContext) -> tuple[str, ExecResult]:
        """Run the program to its end (or its time limit); return its name and result."""
        program, argv = self._command(ctx)
        timeout = self._timeout(ctx)
        env = {**os.environ, **marker_env(ctx)}
        # Found here rather than by the exec itself: behind setpriv a missing program
        # would be an exit status, not the error it is.
        found = await asyncio.to_thread(shutil.which, program, path=env.get("PATH", os.defpath))
        if found is None:
            raise self.fail(f"cannot run {program}: no such executable file")
        command = [found, *argv]
        if _SETPRIV is not None:
            command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            raise self.fail(f"cannot run {program}: {os_error_text(error)}") from None
        label = f"{self.type_name} {os.path.basename(program)}[{process.pid}]"
        ctx.log.info(f"{label}: started {shlex.join([program, *argv])}")
        result = ExecResult(returncode=0)

        def on_stdout(line: str) -> None:
            result.stdout.append(line)
            ctx.log.info(f"{label} stdout: {line}")

        def on_stderr(line: str) -> None:
            if line.strip():
                result.last_stderr = line.strip()
            ctx.log.info(f"{label} stderr: {line}")

        assert process.stdout is not None and process.stderr is not None
        readers = [
            asyncio.create_task(_pump(process.stdout, on_stdout)),
            asyncio.create_task(_pump(process.stderr, on_stderr)),
        ]
        try:
            try:
                async with asyncio.timeout(timeout):
                    await process.wait()
                    await asyncio.gather(*readers)
            except TimeoutError:
                exited = process.returncode is not None
                await self._stop(process)
                if exited:
                    raise self.fail(
                        f"{program} exited but processes it started still held its output "
                        f"after {timeout:g} s and were killed"
                    ) from None
                raise self.fail(
                    f"{program} did not finish within {timeout:g} s and was killed"
                ) from None
        except BaseException:
            # Failed, or cancelled (transfer paused or cancelled, daemon stopping): nothing
            # it started may outlive the task.
            _signal_group(process.pid, signal.SIGKILL)
            if process.returncode is None:
                await process.wait()
            raise
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        assert process.returncode is not None
        result.returncode = process.returncode
        ctx.log.info(f"{label}: {_describe_status(result.returncode)}")
        return program, result

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.kill_grace):
                await process.wait()
        # Also reaches what the program started and what ignored SIGTERM.
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    def status_message(self, program: str, result: ExecResult) -> str:
        message = f"{program} {_describe_status(result.returncode)}"
        return f"{message}: {result.last_stderr}" if result.last_stderr else message

    def check_status(self, program: str, result: ExecResult) -> None:
        """Raise TaskError for a failure; return for success or warning (exit 1)."""
        if result.returncode not in (0, 1):
            raise self.fail(self.status_message(program, result))


@register
class Exec(_ExecTask):
    """Run a program: exit 0 is success, 1 a warning, anything else a failure."""

    type_name = "EXEC"

    async def run(self, ctx: TaskContext) -> None:
        program, result = await self.execute(ctx)
        self.check_status(program, result)
        if result.returncode == 1:
            raise TaskWarning(f"EXEC: {self.status_message(program, result)}")


@register
class ExecMove(_ExecTask):
    """Run a program that moves the file and prints its new path as its last line.

    The transfer follows the file to that path, which must exist (relative paths are
    taken from the home folder). Exit 1 still moves, then warns.
    """

    type_name = "EXECMOVE"

    async def run(self, ctx: TaskContext) -> None:
        program, result = await self.execute(ctx)
        self.check_status(program, result)
        new_path = result.last_stdout()
        if not new_path:
            raise self.fail(f"{program} printed no new path for the file")
        new_path = self.path(ctx, new_path)
        try:
            await retarget(ctx, new_path)
        except TaskError as error:
            message = f"EXECMOVE: new path printed by {program}: {error.message}"
            raise TaskError(message, error.code) from None
        ctx.log.info(f"EXECMOVE: the transfer now points at {new_path}")
        if result.returncode == 1:
            raise TaskWarning(f"EXECMOVE: {self.status_message(program, result)}")


@register
class ExecOutput(_ExecTask):
    """Run a program whose stdout is the error message when it fails.

    A last stdout line `NEWFILENAME:<path>` points the transfer at that file: always on
    success or warning (the file must exist), and on failure when the file exists.
    Exit 1 is a warning whose message is stdout too.
    """

    type_name = "EXECOUTPUT"

    async def run(self, ctx: TaskContext) -> None:
        program, result = await self.execute(ctx)
        lines = [line for line in result.stdout if line.strip()]
        new_path = ""
        if lines and lines[-1].strip().startswith(NEWFILENAME):
            new_path = lines.pop().strip()[len(NEWFILENAME) :].strip()
        message = "\n".join(lines).strip()[-_MAX_MESSAGE:]
        failed = result.returncode not in (0, 1)
        if new_path:
            new_path = self.path(ctx, new_path)
            try:
                await retarget(ctx, new_path)
            except TaskError as error:
                if not failed:
                    raise TaskError(f"EXECOUTPUT: {error.message}", error.code) from None
                ctx.log.warning(f"EXECOUTPUT: not following the file: {error.message}")
            else:
                ctx.log.info(f"EXECOUTPUT: the transfer now points at {new_path}")
        if failed:
            raise self.fail(message or self.status_message(program, result))
        if result.returncode == 1:
            raise TaskWarning(f"EXECOUTPUT: {message or self.status_message(program, result)}")
