"""The watchers' part of the store, on both backends: a file's record and its transfers
in one commit, the unique key as the arbiter (a second insert of the same file, from
this store or another node's, makes no transfer), records closed as gone; on
PostgreSQL one holder of a watcher's lock at a time, released by its session's end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from gatewayd.model import Status, Transfer
from gatewayd.store.base import Store, TransferFilter, WatchedFile
from gatewayd.store.codec import encode_time
from tests.store_backends import Backend

pytestmark = pytest.mark.timeout(60)
AT = datetime(2024, 5, 1, tzinfo=UTC)


def planned(name: str) -> Transfer:
    return Transfer(
        rule="out",
        is_server=False,
        is_send=True,
        requester="gw",
        requested="p",
        protocol="local",
        partner="p",
        status=Status.PLANNED,
        local_filepath=f"/data/out/{name}",
        remote_filepath=name,
        start=AT,
    )


def record(path: str, inode: int = 1, size: int = 10, mtime_ns: int = 5) -> WatchedFile:
    return WatchedFile("w", path, inode, size, mtime_ns, taken=AT, node="node-a")


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make(node="node-a") as s:
        yield s


async def count(store: Store) -> int:
    return (await store.list_transfers(TransferFilter(limit=100)))[1]


async def test_a_file_is_recorded_once_with_its_transfers(store: Store, backend: Backend) -> None:
    first = [(record("a", inode=1), [planned("a"), planned("a")]), (record("b", inode=2), [])]
    assert await store.insert_watched(first) == [0, 1]
    ids = [t.id for t in first[0][1]]
    assert all(ids) and await count(store) == 2
    [a, b] = sorted(await store.live_watched("w"), key=lambda r: r.path)
    assert (a.path, a.inode, a.size, a.mtime_ns) == ("a", 1, 10, 5)
    [(transfers, node)] = await backend.raw(
        "SELECT transfers, node FROM watched_files WHERE id = ?", a.id
    )
    assert (json.loads(transfers), node) == (ids, "node-a")
    assert [r.path for r in await store.live_watched("w", after_id=a.id)] == ["b"]
    # The same file again (a rescan after a crash), with a new one: only the new one.
    again = [(record("a", inode=1), [planned("a")]), (record("c", inode=3), [planned("c")])]
    assert await store.insert_watched(again) == [1]
    assert again[0][1][0].id is None, "the skipped file's transfer was not inserted"
    assert again[1][1][0].id is not None
    assert await count(store) == 3
    # Changed (another size): a new record.
    assert await store.insert_watched([(record("a", inode=1, size=11), [])]) == [0]
    assert await store.count_watched("w") == 4
    await store.mark_watched_gone([a.id, b.id], AT)
    assert sorted(r.path for r in await store.live_watched("w")) == ["a", "c"]
    rows = await backend.raw("SELECT count(*) FROM watched_files WHERE gone IS NOT NULL")
    assert rows[0][0] == 2


async def test_two_nodes_inserting_the_same_file_at_once_make_one_transfer(
    backend: Backend,
) -> None:
    if backend.name != "postgresql":
        pytest.skip("one SQLite daemon per database: no second node")
    async with backend.make(node="node-a") as a, backend.make(node="node-b") as b:
        batches = [
            [(record(f"f{i}", inode=i), [planned(f"f{i}")]) for i in range(50)] for _ in (a, b)
        ]
        done = await asyncio.gather(a.insert_watched(batches[0]), b.insert_watched(batches[1]))
        assert set(done[0]).isdisjoint(done[1]), done
        assert set(done[0]) | set(done[1]) == set(range(50)), done
        assert await count(a) == 50, "each file once, whoever recorded it"


async def test_one_holder_of_a_watcher_lock(backend: Backend) -> None:
    if backend.name != "postgresql":
        pytest.skip("SQLite: one daemon, always the holder")
    async with backend.make(node="node-a") as a, backend.make(node="node-b") as b:
        assert await a.try_watch_lock("w")
        assert await a.try_watch_lock("w"), "held: asked again, still ours"
        assert not await b.try_watch_lock("w")
        assert await b.try_watch_lock("other")
        await a.release_watch_lock("w")
        assert await b.try_watch_lock("w")
        assert not await a.try_watch_lock("w")
    # b's store closed: its session ended, and its locks with it.
    async with backend.make(node="node-c") as c:
        assert await c.try_watch_lock("w")


async def test_a_holder_whose_node_is_dead_loses_the_lock(backend: Backend) -> None:
    if backend.name != "postgresql":
        pytest.skip("SQLite: one daemon, always the holder")
    async with backend.make(node="node-a") as a, backend.make(node="node-b") as b:
        assert await a.try_watch_lock("w")
        assert not await b.try_watch_lock("w"), "node-a has no lease row: not known dead"
        long_ago = encode_time(datetime(2020, 1, 1, tzinfo=UTC))
        await backend.raw(
            "INSERT INTO nodes (name, started, heartbeat, lease_seconds) VALUES (?, ?, ?, ?)",
            "node-a",
            long_ago,
            long_ago,
            2.0,
        )
        # node-a's lease ran out long ago (frozen): its session is ended, b takes over.
        async with asyncio.timeout(10):
            while not await b.try_watch_lock("w"):
                await asyncio.sleep(0.05)
