"""`gatewayd serve` as a real subprocess, its output collected as it comes."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent


def daemon_env() -> dict[str, str]:
    """The checkout importable, no configuration inherited from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class DaemonProcess:
    """One daemon; a background reader keeps its pipe drained and its lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, config: Path, *args: str) -> DaemonProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gatewayd", "serve", "-c", str(config), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=daemon_env(), start_new_session=True,
        )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))
            self._new_line.set()
        self._new_line.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def wait_for(self, text: str, timeout: float = 30.0, since: int = 0) -> str:
        """The first line (from index `since`) containing `text`."""
        try:
            async with asyncio.timeout(timeout):
                index = since
                while True:
                    while index < len(self.lines):
                        if text in self.lines[index]:
                            return self.lines[index]
                        index += 1
                    if self._reader.done():
                        raise AssertionError(
                            f"gatewayd exited ({self.proc.returncode}) before printing "
                            f"{text!r}:\n{self.output}"
                        )
                    self._new_line.clear()
                    await self._new_line.wait()
        except TimeoutError:
            raise AssertionError(
                f"gatewayd did not print {text!r} within {timeout}s:\n{self.output}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.proc.send_signal(signal.SIGKILL)
        await self.finish()

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        return await self.finish(timeout)

    async def finish(self, timeout: float = 30.0) -> int:
        try:
            async with asyncio.timeout(timeout):
                await self._reader
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(
                f"gatewayd (pid {self.proc.pid}) still running after {timeout}s:\n{self.output}"
            ) from None


def read_row(db: Path, transfer_id: int) -> dict[str, Any]:
    """A transfer row as another process sees it (read-only connection)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
    assert row is not None
    return dict(row)


async def wait_row(
    db: Path,
    transfer_id: int,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    daemon: DaemonProcess,
    timeout: float = 60,
) -> dict[str, Any]:
    """Poll the daemon's database (bounded) until `check` holds for the row: the daemon
    is another process, so its commits are the only events to wait on."""
    try:
        async with asyncio.timeout(timeout):
            while not check(row := read_row(db, transfer_id)):
                await asyncio.sleep(0.02)
            return row
    except TimeoutError:
        raise AssertionError(
            f"transfer {transfer_id} never {what}: {read_row(db, transfer_id)}\n{daemon.output}"
        ) from None
