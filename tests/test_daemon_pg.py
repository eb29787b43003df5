"""A real `gatewayd serve` on PostgreSQL (the session's private server): an HTTP upload
and a client send to a `local` partner, each row owned by the node; and a daemon that
refuses a database written by a newer gatewayd, on either backend."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import make_file
from tests.http_support import run_curl
from tests.pg_support import pg_raw
from tests.store_backends import Backend

pytestmark = pytest.mark.timeout(120)
NODE = "gw-pg-1"
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}


def on_postgresql(demo_config: DemoConfig, dsn: str, share: Path) -> None:
    def change(data: dict[str, Any]) -> None:
        data["daemon"]["node"] = NODE
        data["database"] = {"backend": "postgresql", "dsn": dsn, "pool_size": 4}
        data["api"]["port"] = 0
        for server in data["servers"].values():
            server["port"] = 0
        data["logging"]["format"] = "json"
        data["partners"]["share"] = {"protocol": "local", "root": str(share)}

    demo_config.edit(change)
    rule = demo_config.rules_dir / "outbox.yaml"
    outbox = yaml.safe_load(rule.read_text())
    outbox["allow"]["partners"].append("share")
    rule.write_text(yaml.safe_dump(outbox, sort_keys=False))


def listening(daemon: DaemonProcess, event: str, key: str, name: str | None = None) -> int:
    for line in daemon.lines:
        if f'"{event}"' in line:
            entry = json.loads(line)
            if name is None or entry.get(key) == name:
                return int(entry["port"])
    raise AssertionError(f"no {event} line for {name}:\n{daemon.output}")


async def wait_done(api: str, transfer_id: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=ADMIN) as session, asyncio.timeout(30):
        while True:
            async with session.get(f"{api}/api/transfers/{transfer_id}") as answer:
                row: dict[str, Any] = await answer.json()
            if row["status"] in ("DONE", "ERROR", "CANCELLED"):
                return row
            await asyncio.sleep(0.05)  # polling the API, bounded by the timeout


async def test_serve_on_postgresql_receives_and_sends(
    demo_config: DemoConfig, pg_database: str, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    on_postgresql(demo_config, pg_database, share)
    data_dir = demo_config.root / "var" / "data"
    offered = make_file(data_dir / "outbox" / "report.csv", 200_000, seed=3)
    daemon = await DaemonProcess.start(demo_config.path)
    try:
        await daemon.wait_for("gatewayd ready")
        http = listening(daemon, "server listening", "server", "http")
        api = f"http://127.0.0.1:{listening(daemon, 'api listening', 'event')}"

        pushed = make_file(tmp_path / "upload.csv", 150_000, seed=4)
        push = await run_curl(
            "-u", "demo:demo", "-T", str(tmp_path / "upload.csv"), f"http://127.0.0.1:{http}/inbox/"
        )
        assert push.status == 201, push
        assert (data_dir / "inbox" / "demo" / "upload.csv").read_bytes() == pushed

        async with aiohttp.ClientSession(headers=ADMIN) as session:
            body = {"rule": "outbox", "partner": "share", "file": "report.csv"}
            async with session.post(f"{api}/api/transfers", json=body) as answer:
                assert answer.status == 201, await answer.text()
                created = await answer.json()
        row = await wait_done(api, created["id"])
        assert row["status"] == "DONE", row
        assert (share / "report.csv").read_bytes() == offered
    finally:
        assert await daemon.stop() == 0, daemon.output
    rows = await pg_raw(pg_database, "SELECT is_server, status, owner FROM transfers ORDER BY id")
    assert [tuple(r) for r in rows] == [(1, "DONE", NODE), (0, "DONE", NODE)]
    assert "admin:admin" not in daemon.output


async def test_serve_refuses_a_newer_schema(demo_config: DemoConfig, backend: Backend) -> None:
    def change(data: dict[str, Any]) -> None:
        data["api"]["port"] = 0
        for server in data["servers"].values():
            server["port"] = 0
        if backend.dsn is not None:
            data["daemon"]["node"] = NODE
            data["database"] = {"backend": "postgresql", "dsn": backend.dsn}

    demo_config.edit(change)
    # A database a newer gatewayd has migrated: one version past what this one knows.
    if backend.dsn is not None:
        async with backend.make():
            pass
        await pg_raw(
            backend.dsn,
            "INSERT INTO schema_migrations (version, filename) VALUES (99, '0099_future.sql')",
        )
        where = "127.0.0.1"
    else:
        path = demo_config.root / "var" / "gatewayd.db"
        path.parent.mkdir(parents=True)
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA user_version = 99")
        where = str(path)
    daemon = await DaemonProcess.start(demo_config.path)
    assert await daemon.finish(60) == 1, daemon.output
    assert "gatewayd ready" not in daemon.output
    [line] = [x for x in daemon.lines if "cannot open the database" in x]
    assert "schema version 99" in line and "newer gatewayd" in line and where in line, line
    assert "Traceback" not in daemon.output, "one line says why, no traceback"
