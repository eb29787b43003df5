"""systemd integration: notifications on a real `NOTIFY_SOCKET` from a real `gatewayd
serve`, SIGHUP reloads (valid and invalid), the watchdog task, and the unit file checked
by `systemd-analyze verify`."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gatewayd.systemd import Notifier
from tests.api_support import ApiEnv, basic
from tests.daemon_proc import CHECKOUT, DaemonProcess
from tests.test_api_daemon import api_port


class NotifySocket:
    """A unix datagram socket standing in for systemd's (abstract namespace: no path
    length limit, nothing left on disk)."""

    def __init__(self) -> None:
        self.address = f"@gatewayd-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def expect(self, state: str, timeout: float = 30.0) -> list[str]:
        """Messages received until one carrying `state` (e.g. "READY=1")."""
        loop = asyncio.get_running_loop()
        got: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = (await loop.sock_recv(self.sock, 4096)).decode()
                    got.append(message)
                    self.seen.append(message)
                    if state in message.split("\n"):
                        return got
        except TimeoutError:
            raise AssertionError(f"no {state} within {timeout}s; got {got}") from None

    def pending(self) -> list[str]:
        """What has arrived, without waiting."""
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


async def rule_names(session: aiohttp.ClientSession, base: str) -> list[str]:
    async with session.get(f"{base}/api/rules", headers={"Authorization": basic("admin")}) as r:
        assert r.status == 200, await r.text()
        return sorted(rule["name"] for rule in (await r.json())["rules"])


async def test_notifications_and_reloads_of_a_real_daemon(
    tmp_path: Path, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ApiEnv(tmp_path)
    env.rule("first", "send")
    env.load()
    rules_dir = tmp_path / "rules"
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    daemon = await DaemonProcess.start(env.config_file)
    try:
        base = f"http://127.0.0.1:{await api_port(daemon)}"
        ready = await notify_socket.expect("READY=1")
        # READY comes once every listener accepts connections: the API answers at once.
        assert not any("RELOADING=1" in m for m in ready)
        await notify_socket.expect("WATCHDOG=1")
        async with aiohttp.ClientSession() as session:
            assert await rule_names(session, base) == ["first"]

            # A valid new rule: visible once READY follows RELOADING.
            rule = {"name": "second", "direction": "receive", "path": "/second", "allow": "all"}
            (rules_dir / "second.yaml").write_text(yaml.safe_dump(rule))
            mark = len(daemon.lines)
            daemon.proc.send_signal(signal.SIGHUP)
            await notify_socket.expect("RELOADING=1")
            await notify_socket.expect("READY=1")
            await daemon.wait_for("configuration reloaded", since=mark)
            assert await rule_names(session, base) == ["first", "second"]

            # An invalid rule: refused, logged with its file, the old rules kept.
            (rules_dir / "broken.yaml").write_text("name: broken\ndirection: sideways\n")
            mark = len(daemon.lines)
            daemon.proc.send_signal(signal.SIGHUP)
            await notify_socket.expect("RELOADING=1")
            await notify_socket.expect("READY=1")
            refused = await daemon.wait_for("reload refused", since=mark)
            assert "the running configuration is kept" in refused
            assert "broken.yaml" in daemon.output[len("".join(daemon.lines[:mark])) :]
            assert daemon.proc.returncode is None
            assert await rule_names(session, base) == ["first", "second"]

            # A valid file that moves the database: refused until a restart.
            (rules_dir / "broken.yaml").unlink()
            config = yaml.safe_load(env.config_file.read_text())
            config["database"] = {"path": "elsewhere.db"}
            env.config_file.write_text(yaml.safe_dump(config))
            mark = len(daemon.lines)
            daemon.proc.send_signal(signal.SIGHUP)
            line = await daemon.wait_for("change only with a restart", since=mark)
            assert "database" in line
            await notify_socket.expect("READY=1")
            assert daemon.proc.returncode is None
    finally:
        code = await daemon.stop()
    assert code == 0, daemon.output
    stopping = [m for m in notify_socket.seen + notify_socket.pending() if "STOPPING=1" in m]
    assert stopping, notify_socket.seen


async def test_the_watchdog_stops_when_the_event_loop_is_blocked(
    notify_socket: NotifySocket,
) -> None:
    notifier = Notifier(notify_socket.address, watchdog_usec=40_000)  # every 20 ms
    try:
        notifier.start_watchdog()
        await notify_socket.expect("WATCHDOG=1")
        notify_socket.pending()
        # Nothing can run on the loop during this sleep, so no ping may arrive.
        time.sleep(0.2)
        assert notify_socket.pending() == []
        await notify_socket.expect("WATCHDOG=1")
    finally:
        await notifier.close()


async def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled and notifier.ready() is False
    notifier.start_watchdog()
    await notifier.close()


def test_the_environment_is_consumed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@somewhere")
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = Notifier.from_environment()
    # Programs started by the gateway must not talk to systemd in its name.
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert notifier.address == "@somewhere"
    assert notifier.watchdog_interval is None  # the watchdog was for another process
    monkeypatch.setenv("NOTIFY_SOCKET", "@somewhere")
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert Notifier.from_environment().watchdog_interval == 1.5


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize(
    ("shipped", "as_name"),
    [("gatewayd.service", "gatewayd.service"), ("gatewayd@.service", "gatewayd@gw-1.service")],
)
def test_the_unit_file_verifies(tmp_path: Path, shipped: str, as_name: str) -> None:
    unit = (CHECKOUT / "systemd" / shipped).read_text()
    exec_lines = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_lines) == 1
    # systemd-analyze checks that the programs exist: point them at one that does.
    program = exec_lines[0].removeprefix("ExecStart=").split()[0]
    assert program.startswith("/")
    # The template is verified as an instance of it.
    copy = tmp_path / as_name
    copy.write_text(unit.replace(program, str(shutil.which("true"))))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Complaints about the user or other units of this machine are not the unit's fault.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(copy.name) in line and "Unknown user" not in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    for setting in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec="):
        assert setting in unit


def _settings(unit: str) -> list[str]:
    return [x for x in unit.splitlines() if x and not x.startswith("#")]


def test_the_template_unit_is_the_service_with_one_config_per_node() -> None:
    service = _settings((CHECKOUT / "systemd" / "gatewayd.service").read_text())
    template = _settings((CHECKOUT / "systemd" / "gatewayd@.service").read_text())
    differ = sorted(set(service) ^ set(template))
    assert differ == sorted(
        [
            "Description=gatewayd managed file-transfer gateway",
            "Description=gatewayd managed file-transfer gateway, node %i",
            "ExecStartPre=/opt/gatewayd/bin/gatewayd check-config -c /etc/gatewayd/gatewayd.yaml",
            "ExecStartPre=/opt/gatewayd/bin/gatewayd check-config -c /etc/gatewayd/nodes/%i.yaml",
            "ExecStart=/opt/gatewayd/bin/gatewayd serve -c /etc/gatewayd/gatewayd.yaml",
            "ExecStart=/opt/gatewayd/bin/gatewayd serve -c /etc/gatewayd/nodes/%i.yaml",
            "DefaultInstance=gw-1",
        ]
    ), "the same hardening and settings; only the node's config differs"
