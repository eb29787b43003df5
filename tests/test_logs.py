"""Logging: one format for structlog and stdlib, context fields, secrets never written,
text from outside escaped in every renderer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from gatewayd.config.schema import LoggingConfig
from gatewayd.logs import REDACTED, configure_logging, escape_text, is_secret_key, redact
from gatewayd.names import escaped, is_refused_char

ARGON_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"
BCRYPT_HASH = "$2b$12$" + "a" * 53
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    "key",
    ["password", "db_password", "passwd", "Passphrase", "client_secret", "token",
     "X-Auth-Token", "Authorization", "authorisation", "private_key", "api-key", "key",
     "cookie", "credentials", "ssh_key", "key_material"],
)  # fmt: skip
def test_secret_looking_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["rule", "transfer_id", "filename", "keyword", "monkey", "public_keys", "sha256"]
)
def test_ordinary_keys_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_walks_nested_structures() -> None:
    data = {
        "user": "alice",
        "password": "hunter2",
        "request": {"headers": [("Host", "x"), {"Authorization": "Basic YWxpY2U6aHVudGVyMg=="}]},
        "accounts": {"demo": {"password": ARGON_HASH, "enabled": True}},
        "note": f"hash is {ARGON_HASH} and {BCRYPT_HASH}",
        "key_file": PEM,
    }
    out = redact(data)
    assert out == {
        "user": "alice",
        "password": REDACTED,
        "request": {"headers": [("Host", "x"), {"Authorization": REDACTED}]},
        "accounts": {"demo": {"password": REDACTED, "enabled": True}},
        "note": f"hash is {REDACTED} and {REDACTED}",
        "key_file": REDACTED,
    }
    # The caller's object is not changed.
    assert data["password"] == "hunter2"


def test_json_lines_redact_everything_secret(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json", level="info"), stream=stream)
    log = structlog.get_logger("gatewayd.test")

    structlog.contextvars.bind_contextvars(transfer_id=42, rule="inbox")
    log.info("login", account="demo", password="hunter2", extra={"nested": {"token": "t0k"}})
    logging.getLogger("gatewayd.stdlib").warning(
        "stdlib line with %s", ARGON_HASH, extra={"api_key": "k3y", "port": 2222}
    )
    try:
        raise RuntimeError(f"failed to verify {ARGON_HASH}")
    except RuntimeError:
        log.exception("verification failed")
    log.debug("not at info level")

    text = stream.getvalue()
    for secret in ("hunter2", "t0k", "k3y", ARGON_HASH, "$argon2id$"):
        assert secret not in text
    first, second, third = json_lines(stream)
    assert first["event"] == "login"
    assert first["password"] == REDACTED
    assert first["extra"] == {"nested": {"token": REDACTED}}
    assert (first["account"], first["transfer_id"], first["rule"]) == ("demo", 42, "inbox")
    assert first["level"] == "info"
    assert first["logger"] == "gatewayd.test"
    assert second["event"] == f"stdlib line with {REDACTED}"
    assert (second["api_key"], second["port"], second["level"]) == (REDACTED, 2222, "warning")
    assert second["transfer_id"] == 42
    assert "RuntimeError: failed to verify [REDACTED]" in third["exception"]


def test_timestamps_are_iso_utc(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=stream)
    structlog.get_logger().info("tick")
    logging.getLogger("x").info("tock")
    for line in json_lines(stream):
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert line["timestamp"].endswith("Z")
        assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0


def test_console_format_and_level(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format="console", level="warning"), stream=stream)
    log = structlog.get_logger("gatewayd.test")
    log.info("hidden")
    log.warning("shown", token="abc123", rule="outbox")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "shown" in text and "rule=outbox" in text
    assert "abc123" not in text and f"token={REDACTED}" in text
    # No colour codes when the stream is not a terminal.
    assert "\x1b[" not in text


def test_configuring_again_replaces_the_handler(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingConfig(format="json"), stream=first)
    configure_logging(LoggingConfig(format="json"), stream=second)
    logging.getLogger("gatewayd").warning("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in json_lines(second)] == ["once"]


HOSTILE = "a\x1b[2Jb\x0bc\x85d\u2028e\u2029f\x00g\rh\u202ei\\j"


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_every_text_is_escaped_once_whatever_logged_it(restore_logging: None, fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(LoggingConfig(format=fmt, level="info"), stream=stream)
    log = structlog.get_logger("gatewayd.test")
    structlog.contextvars.bind_contextvars(path=f"/inbox/{HOSTILE}")
    log.warning(f"event {HOSTILE}", login=HOSTILE, files=[HOSTILE, {HOSTILE: (HOSTILE,)}])
    logging.getLogger("aiohttp.access").info("%s said %s", "client", HOSTILE)
    structlog.contextvars.clear_contextvars()
    try:
        raise ValueError(f"bad name {HOSTILE}\n2024-01-01T00:00:00.000000Z [info     ] forged")
    except ValueError:
        log.exception("failed", user_agent=HOSTILE)
    text = stream.getvalue()

    assert [c for c in text if c != "\n" and is_refused_char(c)] == []
    shown = escaped(HOSTILE)
    assert shown == "a\\x1b[2Jb\\x0bc\\x85d\\u2028e\\u2029f\\x00g\\x0dh\\u202ei\\\\j"
    if fmt == "json":
        first, second, third = json_lines(stream)
        assert first["event"] == f"event {shown}"
        assert (first["login"], first["path"]) == (shown, f"/inbox/{shown}")
        assert first["files"] == [shown, {shown: [shown]}]
        assert second["event"] == f"client said {shown}"
        # The traceback keeps its lines (JSON escapes them), its controls are escaped.
        assert third["user_agent"] == shown
        assert third["exception"].startswith("Traceback (most recent call last):\n")
        assert f"ValueError: bad name {shown}\n2024-01-01T00:00:00" in third["exception"]
    else:
        lines = text.splitlines()
        starts = [line for line in lines if not line.startswith("  ")]
        assert len(starts) == 3 and all(line[:4].isdigit() for line in starts), lines
        assert f"event {shown}" in lines[0] and f"login={shown}" in lines[0]
        assert f"client said {shown}" in lines[1]
        # The traceback: readable lines, all indented, the forged one included.
        traceback = lines[3:]
        assert traceback[0] == "  Traceback (most recent call last):"
        assert f"  ValueError: bad name {shown}" in traceback
        assert traceback[-1] == "  2024-01-01T00:00:00.000000Z [info     ] forged"


def test_escape_text_leaves_plain_text_and_other_objects_alone() -> None:
    value = {"rule": "inbox", "size": 12, "path": Path("/a\nb"), "ok": True, "none": None}
    assert escape_text(value) == value
    assert escape_text("plain text, é and 漢字 and emoji 🙂 stay") == (
        "plain text, é and 漢字 and emoji 🙂 stay"
    )
    assert escape_text(("x\ty", ["\x1b"])) == ("x\\x09y", ["\\x1b"])
