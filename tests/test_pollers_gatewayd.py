"""A poller on one real `gatewayd serve` fetching from another gatewayd's HTTP server
(its JSON folder listing, a send rule): each file fetched once, byte-identical; files
still there are never fetched again, later files are."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_proc import DaemonProcess
from tests.gateway_env import make_file
from tests.http_support import PASSWORD, free_port, password_hash

pytestmark = pytest.mark.timeout(90)


def write_config(root: Path, config: dict[str, Any], rules: list[dict[str, Any]]) -> Path:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    for rule in rules:
        (root / "rules" / f"{rule['name']}.yaml").write_text(yaml.safe_dump(rule))
    base = {
        "daemon": {"home": str(root), "state_dir": "state", "data_dir": "data"},
        "database": {"path": "state/gatewayd.db"},
        "logging": {"format": "json", "level": "info"},
        "api": {"enabled": False},
        "scheduler": {"attempts": 0},
    }
    path = root / "etc" / "gatewayd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**base, **config}, sort_keys=False))
    return path


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """What the daemon committed, read from outside (read-only)."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return list(conn.execute(sql).fetchall())


async def wait_done(db: Path, count: int, daemons: list[DaemonProcess]) -> list[tuple[Any, ...]]:
    sql = "SELECT dest_filename, status FROM transfers ORDER BY id"
    found: list[tuple[Any, ...]] = []
    try:
        async with asyncio.timeout(30):
            while True:
                found = rows(db, sql) if db.exists() else []
                if len(found) >= count and all(s == "DONE" for _, s in found):
                    return found
                assert not [r for r in found if r[1] in ("ERROR", "CANCELLED")], found
                await asyncio.sleep(0.05)
    except TimeoutError:
        output = "\n".join(d.output[-4000:] for d in daemons)
        raise AssertionError(f"{len(found)} of {count} fetched: {found}\n{output}") from None


async def test_poller_fetches_each_file_of_a_gatewayd_http_server_once(tmp_path: Path) -> None:
    server_root, client_root = tmp_path / "a", tmp_path / "b"
    port = free_port()
    offered = server_root / "data" / "outbox"
    files = {name: make_file(offered / name, size, seed=i) for i, (name, size) in enumerate(
        (("one.csv", 100_000), ("two.csv", 1), ("skip.txt", 10))
    )}  # fmt: skip
    server = write_config(
        server_root,
        {
            "servers": {"http": {"protocol": "http", "address": "127.0.0.1", "port": port}},
            "accounts": {"relay": {"password": password_hash()}},
            "partners": {},
        },
        [
            {
                "name": "outbox",
                "direction": "send",
                "path": "/outbox",
                "shared_folder": True,
                "allow": {"accounts": ["relay"]},
            }
        ],
    )
    client = write_config(
        client_root,
        {
            "partners": {
                "a": {
                    "protocol": "http",
                    "address": "127.0.0.1",
                    "port": port,
                    "login": "relay",
                    "password": PASSWORD,
                }
            }
        },
        [{"name": "inbox", "direction": "receive", "path": "/inbox", "allow": "all"}],
    )
    poller = {
        "name": "from-a",
        "partner": "a",
        "rule": "inbox",
        "remote_dir": "outbox",
        "globs": ["*.csv"],
        "interval": 0.3,
    }
    (client_root / "pollers").mkdir()
    (client_root / "pollers" / "from-a.yaml").write_text(yaml.safe_dump(poller))
    # Both at once (the machine's cores are shared): the poller's first looks may fail
    # while the server starts, and it looks again.
    daemons = [await DaemonProcess.start(server), await DaemonProcess.start(client)]
    try:
        for daemon in daemons:
            await daemon.wait_for("gatewayd ready", timeout=60)
        b_db, a_db = client_root / "state" / "gatewayd.db", server_root / "state" / "gatewayd.db"
        first = await wait_done(b_db, 2, daemons)
        assert sorted(name for name, _ in first) == ["one.csv", "two.csv"]
        # A file put later is fetched too; by then the poller looked at the first two
        # again (at least twice: a new file needs two looks), and fetched neither again.
        files["three.csv"] = make_file(offered / "three.csv", 5000, seed=9)
        every = await wait_done(b_db, 3, daemons)
        assert sorted(name for name, _ in every) == ["one.csv", "three.csv", "two.csv"]
        inbox = client_root / "data" / "inbox"
        for name in ("one.csv", "two.csv", "three.csv"):
            assert (inbox / name).read_bytes() == files[name], name
        # The server side saw one download of each (its record ends after the client's).
        served = await wait_done(a_db, 3, daemons)
        assert sorted(name for name, _ in served) == ["one.csv", "three.csv", "two.csv"]
        taken = rows(b_db, "SELECT name, size FROM poller_files ORDER BY name")
        assert taken == [("one.csv", 100_000), ("three.csv", 5000), ("two.csv", 1)]
    finally:
        for daemon in reversed(daemons):
            assert await daemon.stop() == 0, daemon.output[-4000:]
    assert PASSWORD not in "".join(d.output for d in daemons)
