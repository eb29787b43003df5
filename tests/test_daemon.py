"""The daemon process: start-up checks, the lock, signals, clean stop.

The tests run `python -m gatewayd serve` as a real subprocess on a copy of the shipped
demo configuration, and wait (bounded) for what it prints.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import ensure_folders, load_config
from gatewayd.daemon import (
    DaemonLock,
    LockHeld,
    demo_secrets_refusal,
    is_loopback,
    listen_addresses,
)
from gatewayd.model import Status, Step, Transfer
from gatewayd.passwords import hash_password
from gatewayd.store import make_store
from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess

Spawn = Callable[[Path], Awaitable[DaemonProcess]]

STOP_TIMEOUT = 30.0  # a bound, not a delay: waits end as soon as the daemon exits


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start `gatewayd serve -c CONFIG`; whatever is still running at the end is killed."""
    started: list[DaemonProcess] = []

    async def start(config: Path) -> DaemonProcess:
        daemon = await DaemonProcess.start(config)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.returncode is None:
            await daemon.kill()


def ephemeral_api_port(data: dict[str, Any]) -> None:
    # The demo's 8080 may be taken (by a demo someone runs); these tests need no fixed port.
    data["api"]["port"] = 0


# ------------------------------------------------------------------------- life cycle


async def test_serve_lock_reload_and_clean_stop(demo_config: DemoConfig, spawn: Spawn) -> None:
    demo_config.edit(ephemeral_api_port)
    paths = load_config(demo_config.path).paths

    first = await spawn(demo_config.path)
    ready = await first.wait_for("gatewayd ready")
    assert str(first.proc.pid) in ready
    assert paths.lock_file.read_text().strip() == str(first.proc.pid)
    assert paths.database.is_file()

    # SIGHUP reloads the configuration; it does not stop the daemon.
    first.proc.send_signal(signal.SIGHUP)
    await first.wait_for("configuration reloaded", since=len(first.lines))
    assert first.proc.returncode is None

    # A second daemon on the same state folder is refused, and says who holds it.
    second = await spawn(demo_config.path)
    assert await second.finish(STOP_TIMEOUT) == 1
    assert f"another gatewayd (pid {first.proc.pid}) holds {paths.lock_file}" in second.output
    assert "gatewayd ready" not in second.output
    assert first.proc.returncode is None

    # SIGTERM: a clean stop, exit status 0, lock released.
    assert await first.stop(signal.SIGTERM, STOP_TIMEOUT) == 0, first.output
    assert "gatewayd stopped" in first.output
    lock = DaemonLock(paths.lock_file)
    lock.acquire()  # raises LockHeld if the first one still holds it
    lock.release()

    # And a new daemon starts on the same folder; SIGINT stops it as cleanly.
    third = await spawn(demo_config.path)
    await third.wait_for("gatewayd ready")
    assert await third.stop(signal.SIGINT, STOP_TIMEOUT) == 0, third.output


# ------------------------------------------------------------------- refusals to start


async def test_serve_refuses_demo_passwords_on_a_public_address(
    demo_config: DemoConfig, spawn: Spawn
) -> None:
    def expose(data: dict[str, Any]) -> None:
        data["api"]["address"] = "0.0.0.0"
        data["api"]["port"] = 0

    demo_config.edit(expose)
    paths = load_config(demo_config.path).paths

    daemon = await spawn(demo_config.path)
    assert await daemon.finish(STOP_TIMEOUT) == 1
    assert "refusing to start: the demo passwords are still in use" in daemon.output
    assert "api on 0.0.0.0" in daemon.output
    assert "gatewayd hash-password" in daemon.output
    # Refused before anything was created.
    assert not paths.lock_file.exists()
    assert not paths.database.exists()


async def test_serve_refuses_an_invalid_config(demo_config: DemoConfig, spawn: Spawn) -> None:
    text = demo_config.path.read_text(encoding="utf-8")
    demo_config.path.write_text(text + "surprise: 1\n", encoding="utf-8")
    bad_line = len(text.splitlines()) + 1

    daemon = await spawn(demo_config.path)
    assert await daemon.finish(STOP_TIMEOUT) == 1
    assert f"{demo_config.path}:{bad_line}: " in daemon.output
    assert "invalid configuration, not starting" in daemon.output
    # Nothing started: no state folder, hence no lock file and no database.
    assert not (demo_config.root / "var").exists()


# --------------------------------------------------------------------------- the parts


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("::ffff:10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_listen_addresses_counts_the_api_and_enabled_servers(demo_config: DemoConfig) -> None:
    config = load_config(demo_config.path).config
    servers = [(f"server {name}", "127.0.0.1") for name in config.servers]
    assert servers, "the demo ships listeners (http, ...)"
    assert listen_addresses(config) == [("api", "127.0.0.1"), *servers]
    without_api = config.model_copy(
        update={"api": config.api.model_copy(update={"enabled": False})}
    )
    assert listen_addresses(without_api) == servers


def test_demo_secrets_are_fine_on_loopback_and_real_ones_anywhere(
    demo_config: DemoConfig,
) -> None:
    assert demo_secrets_refusal(load_config(demo_config.path)) is None

    def expose(data: dict[str, Any]) -> None:
        data["api"]["address"] = "::"

    demo_config.edit(expose)
    refusal = demo_secrets_refusal(load_config(demo_config.path))
    assert refusal is not None
    assert "API user 'admin'" in refusal and "account 'demo'" in refusal and "api on ::" in refusal

    def real_passwords(data: dict[str, Any]) -> None:
        data["api"]["users"]["admin"]["password"] = hash_password("a real admin password")
        data["accounts"]["demo"]["password"] = hash_password("a real partner password")
        data["accounts"]["relay"]["password"] = hash_password("a real relay password")
        data["partners"]["loopback"]["password"] = "a real relay password"

    demo_config.edit(real_passwords)
    assert demo_secrets_refusal(load_config(demo_config.path)) is None


def test_lock_is_exclusive_and_reusable(tmp_path: Path) -> None:
    path = tmp_path / "gatewayd.lock"
    first = DaemonLock(path)
    first.acquire()
    # flock conflicts between two open files even within one process.
    with pytest.raises(LockHeld) as refused:
        DaemonLock(path).acquire()
    assert refused.value.pid == os.getpid()
    assert str(refused.value) == f"another gatewayd (pid {os.getpid()}) holds {path}"
    first.release()
    first.release()  # harmless twice
    assert path.read_text() == ""
    again = DaemonLock(path)
    again.acquire()
    again.release()


async def test_serve_interrupts_what_the_previous_run_left_running(
    demo_config: DemoConfig, spawn: Spawn
) -> None:
    demo_config.edit(ephemeral_api_port)
    loaded = load_config(demo_config.path)
    ensure_folders(loaded)
    store = make_store(loaded.config.database, loaded.paths.database)
    await store.open()
    try:
        # What a daemon killed in the middle of an upload leaves behind.
        left = await store.insert_transfer(
            Transfer(
                rule="inbox",
                is_server=True,
                is_send=False,
                requester="demo",
                requested="gatewayd",
                protocol="sftp",
                account="demo",
                src_filename="report.csv",
                dest_filename="report.csv",
                status=Status.RUNNING,
                step=Step.DATA,
            )
        )
    finally:
        await store.close()
    assert left.id is not None

    daemon = await spawn(demo_config.path)
    await daemon.wait_for("gatewayd ready")
    assert await daemon.stop(signal.SIGTERM, STOP_TIMEOUT) == 0, daemon.output
    assert re.search(r"left running by the previous run.*count=1", daemon.output), daemon.output

    store = make_store(loaded.config.database, loaded.paths.database)
    await store.open()
    try:
        row = await store.get_transfer(left.id)
    finally:
        await store.close()
    assert row is not None
    assert (row.status, row.step) == (Status.INTERRUPTED, Step.DATA)
