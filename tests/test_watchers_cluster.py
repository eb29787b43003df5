"""Two real nodes on one PostgreSQL database with one watcher: one node scans it (the
other stands by), every file is sent exactly once; a pause asked of the standby node
holds on the scanning one (the database keeps it); the scanning node killed by SIGKILL,
the other takes the watcher over and sends what is dropped next, still once each."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.cluster_support import Cluster, Node, call
from tests.gateway_env import make_file
from tests.pg_support import pg_raw

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster(tmp_path: Path, pg_database: str) -> Any:
    c = Cluster(tmp_path, pg_database, daemon_extra={"lease": 2})
    try:
        yield c
    finally:
        for node in c.nodes.values():
            if node.daemon.proc.returncode is None:
                await node.daemon.kill()


async def wait_all_done(cluster: Cluster, count: int, timeout: float = 60) -> list[Any]:
    try:
        async with asyncio.timeout(timeout):
            while True:
                found = await pg_raw(cluster.dsn, "SELECT * FROM transfers ORDER BY id")
                if len(found) >= count and all(r["status"] == "DONE" for r in found):
                    return found
                await asyncio.sleep(0.05)
    except TimeoutError:
        found = await pg_raw(cluster.dsn, "SELECT id, status FROM transfers")
        raise AssertionError(f"not all done: {found}\n{cluster.output()}") from None


async def states(session: aiohttp.ClientSession, node: Node) -> str:
    status, body, _ = await call(session, "GET", f"{node.api}/api/watchers/drop")
    assert status == 200, body
    return str(body["status"]["state"])


async def wait_state(session: aiohttp.ClientSession, node: Node, state: str) -> None:
    try:
        async with asyncio.timeout(20):
            while await states(session, node) != state:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{node.name} never {state}: {await states(session, node)}") from None


async def test_one_watcher_two_nodes_each_file_once_and_takeover(cluster: Cluster) -> None:
    cluster.partners["share"] = {"protocol": "local", "root": str(cluster.share)}
    cluster.rules["out"] = {"name": "out", "direction": "send", "path": "/out", "allow": "all"}
    drop = cluster.data / "out"
    drop.mkdir(parents=True)
    watchers = cluster.root / "watchers"
    watchers.mkdir()
    spec = {"name": "drop", "rule": "out", "partner": "share", "settle": 0.3, "interval": 0.2}
    (watchers / "drop.yaml").write_text(yaml.safe_dump(spec))
    a, b = await cluster.start("gw-a", "gw-b")
    first = [f"a{i:03}.bin" for i in range(60)]
    for i, name in enumerate(first):
        make_file(drop / name, 3000 + i, seed=i)
    await wait_all_done(cluster, len(first))
    records = await pg_raw(cluster.dsn, "SELECT path, node FROM watched_files")
    assert sorted(r["path"] for r in records) == first
    [scanner_name] = {r["node"] for r in records}
    scanner, other = (a, b) if scanner_name == "gw-a" else (b, a)
    async with aiohttp.ClientSession() as session:
        assert await states(session, scanner) == "running"
        assert await states(session, other) == "standby"
        # Fired on the standby node: it does not scan.
        status, body, _ = await call(session, "POST", f"{other.api}/api/watchers/drop/fire")
        assert status == 200 and body["notScanned"], body
        # Paused through the standby node: the scanning node reads it at its next scan.
        status, body, _ = await call(session, "POST", f"{other.api}/api/watchers/drop/pause")
        assert status == 200 and body["status"]["pausedBy"] == "admin", body
        await wait_state(session, scanner, "paused")
        paused = await pg_raw(cluster.dsn, "SELECT kind, name, paused FROM automation_state")
        assert [tuple(r) for r in paused] == [("watcher", "drop", 1)]
        status, body, _ = await call(session, "POST", f"{scanner.api}/api/watchers/drop/resume")
        assert status == 200 and not body["status"]["paused"], body
        await wait_state(session, scanner, "running")

    await scanner.daemon.kill()
    second = [f"b{i:03}.bin" for i in range(40)]
    for i, name in enumerate(second):
        make_file(drop / name, 5000 + i, seed=100 + i)
    found = await wait_all_done(cluster, len(first) + len(second))
    by_path: dict[str, int] = {}
    for t in found:
        by_path[t["remote_filepath"]] = by_path.get(t["remote_filepath"], 0) + 1
        data = (drop / t["remote_filepath"]).read_bytes()
        assert t["sha256"] == hashlib.sha256(data).hexdigest()
        assert (cluster.share / t["remote_filepath"]).read_bytes() == data
    assert sorted(by_path) == sorted(first + second)
    assert set(by_path.values()) == {1}, "each file exactly once"
    later = await pg_raw(cluster.dsn, "SELECT node FROM watched_files WHERE path LIKE 'b%'")
    assert {r["node"] for r in later} == {other.name}, "the survivor took the watcher over"
    async with aiohttp.ClientSession() as session:
        assert await states(session, other) == "running"
    assert await other.daemon.stop() == 0, other.daemon.output[-3000:]
