"""Helpers for the crash tests: a `gatewayd serve` armed with a crash point, kill -9 of
a process group, the windows a test kills in (a post task that waits), and what a
crash may leave on disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from gatewayd import crashpoints
from tests.daemon_proc import DaemonProcess, daemon_env
from tests.gateway_env import exec_task


async def start_daemon(config: Path, crash_at: str | None = None) -> DaemonProcess:
    """`gatewayd serve -c config` in its own session (process group); with `crash_at`,
    it SIGKILLs itself the first time it reaches that crash point."""
    env = daemon_env()
    env.pop(crashpoints.ENV, None)
    if crash_at is not None:
        env[crashpoints.ENV] = crash_at
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "serve", "-c", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, start_new_session=True,
    )  # fmt: skip
    return DaemonProcess(proc)


async def kill_9(daemon: DaemonProcess) -> None:
    """SIGKILL the daemon's whole process group (it leads its own session), then wait
    for it to be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(daemon.proc.pid, signal.SIGKILL)
    await daemon.finish()


async def died_by_itself(daemon: DaemonProcess, timeout: float = 60) -> None:
    """Wait for a daemon armed with a crash point to kill itself."""
    code = await daemon.finish(timeout)
    assert code == -signal.SIGKILL, f"gatewayd ended with {code}, not SIGKILL:\n{daemon.output}"


def window_task(out: Path, label: str = "window") -> dict[str, Any]:
    """An EXEC task that appends `label` to out/trace, and the first time only, writes
    its pid to out/<label>.pid and sleeps: a window for a kill -9 during POST TASKS
    that the test waits for (the pid file), and that the rerun after the restart goes
    through at once. EXEC tasks run in their own session: the test ends the sleeper
    itself (`end_sleeper`), by its pid."""
    pid = out / f"{label}.pid"
    script = (
        f'echo "{label} $1" >> {out}/trace; '
        f"if [ ! -e {pid} ]; then echo $$ > {pid}.new; mv {pid}.new {pid}; exec sleep 60; fi"
    )
    return exec_task(script, "#TRUEFILENAME#")


async def wait_file(path: Path, what: str, daemon: DaemonProcess, timeout: float = 60) -> str:
    """The content of `path` once it exists (written by the daemon or its tasks)."""
    try:
        async with asyncio.timeout(timeout):
            while not path.exists():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what} never happened ({path}):\n{daemon.output}") from None
    return path.read_text()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it waits for a parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def gone(pid: int, what: str, timeout: float = 10) -> None:
    """Wait (bounded) until process `pid` no longer runs."""
    try:
        async with asyncio.timeout(timeout):
            while alive(pid):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what} (pid {pid}) still runs after {timeout} s") from None


def end_sleeper(out: Path, label: str = "window") -> None:
    """Kill the sleeping shell of `window_task` (its own process group), if alive."""
    pid_file = out / f"{label}.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


def hidden_files(folder: Path) -> list[str]:
    """Names starting with a dot anywhere below `folder`: what a crashed writer leaves."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


async def wait_new_row(db: Path, daemon: DaemonProcess, timeout: float = 60) -> int:
    """The id of the first transfer row, once a partner's request has created it."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = all_rows(db) if db.exists() else []
                if rows:
                    return int(rows[0]["id"])
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no transfer created:\n{daemon.output}") from None


def all_rows(db: Path) -> list[dict[str, Any]]:
    """Every transfer row, as another process sees them."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY id")]
