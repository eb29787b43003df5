"""Log injection: logins made of terminal escapes, vertical tabs, NEL, line separators
or NUL, tried for real against the admin API (HTTP Basic), the HTTP protocol server and
the SFTP server (OpenSSH through sshpass), never reach the log raw, in either format,
and never start a line of their own."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from gatewayd.config.schema import LoggingConfig
from gatewayd.logs import configure_logging
from gatewayd.names import escaped, is_refused_char
from gatewayd.pipeline.auth_throttle import ThrottlePolicy
from tests.api_support import ApiEnv, basic, password_hash
from tests.sftp_peers import need, sftp

# Each lands between two harmless letters, so that the console renderer (which quotes
# values with spaces or newlines) has no reason of its own to quote it.
INJECTED = {
    "escape": "\x1b[2J\x1b[31m",
    "vertical-tab": "\x0b",
    "nel": "\x85",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "nul": "\x00",
    "carriage-return": "\r",
    "bidi-override": "\u202e",
    # No colon: HTTP Basic would end the login there.
    "fake-line": "\n2024-01-01T00.00.00.000000Z [info     ] login ok [gatewayd] login=admin",
}
LAX = ThrottlePolicy(free_failures=1000, max_address_failures=10_000, max_account_failures=None)
CONSOLE_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z \[")


def logins() -> list[str]:
    return [f"ev{c}il-{name}" for name, c in INJECTED.items()]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.accounts["alice"] = {"password": password_hash()}
    environment.rule("inbox", "receive")
    environment.extra["servers"] = {
        "web": {"protocol": "http", "address": "127.0.0.1", "port": 0},
        "sftp": {"protocol": "sftp", "address": "127.0.0.1", "port": 0},
    }
    yield environment
    await environment.stop()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


async def _wait_for(stream: io.StringIO, needle: str, count: int, timeout: float = 20) -> None:
    try:
        async with asyncio.timeout(timeout):
            while stream.getvalue().count(needle) < count:
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(
            f"{needle!r} logged {stream.getvalue().count(needle)} times, not {count}:\n"
            + stream.getvalue()
        ) from None


@pytest.mark.parametrize("fmt", ["console", "json"])
async def test_hostile_logins_are_logged_escaped(
    env: ApiEnv, restore_logging: None, fmt: str
) -> None:
    need("sftp", "sshpass")
    stream = io.StringIO()
    configure_logging(LoggingConfig(format=fmt, level="info"), stream=stream)
    gateway = await env.start()
    # Many failures from one address on purpose: the throttles must not get in the way.
    gateway.auth_throttle.policy = LAX
    assert gateway.api is not None and gateway.api.auth is not None
    gateway.api.auth.throttle.policy = LAX
    web = f"http://127.0.0.1:{gateway.servers['web'].bound_port}"
    sftp_port = gateway.servers["sftp"].bound_port

    expected = ssh_sent = 0
    async with aiohttp.ClientSession() as session:
        for login in logins():
            headers = {"Authorization": basic(login, "wrong")}
            async with session.get(env.api.base + "/api/about", headers=headers) as r:
                assert r.status == 401
            async with session.get(f"{web}/inbox/", headers=headers) as r:
                assert r.status == 401
            expected += 2
            if "\x00" in login:  # a command line cannot carry NUL
                continue
            bad = await sftp(sftp_port, login, ["ls /"], password="wrong", timeout=30)
            assert bad.returncode != 0, bad.output
            # OpenSSH refuses to send ASCII controls; the others reach our server (and
            # asyncssh refuses them as SASLprep says): either way, nothing raw is logged.
            if "invalid characters" not in bad.output:
                ssh_sent += 1
    # Every attempt is in the log, escaped: the API's and the servers' failures alike.
    await _wait_for(stream, "login failed", expected)
    assert ssh_sent >= 4, "OpenSSH sent the non-ASCII ones"
    await _wait_for(stream, "Accepted SSH client connection", ssh_sent)
    text = stream.getvalue()
    raw = sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and is_refused_char(c)})
    assert raw == [], f"raw control characters in the log: {raw}"
    lines = text.splitlines()  # splits on VT, NEL, U+2028... too
    assert len(lines) == text.count("\n"), "a line break other than \\n"
    if fmt == "console":
        strays = [line for line in lines if not CONSOLE_LINE.match(line)]
        assert strays == [], "lines that do not start as log lines"
        for login in logins():
            # Quoted (and its backslashes doubled) when it has a space.
            shown = escaped(login) if " " not in login else repr(escaped(login))
            assert text.count(shown) >= 2, (login, text)
    else:
        records = [json.loads(line) for line in lines]
        for record in records:
            hidden = [s for s in _strings(record) if any(map(is_refused_char, s))]
            assert hidden == [], f"decoded JSON carries raw controls: {hidden!r}"
        for login in logins():
            found = [r for r in records if r.get("login") == escaped(login)]
            assert len(found) >= 2, (login, [r.get("login") for r in records])
