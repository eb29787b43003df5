"""The node registry on both backends: registration, heartbeats, the takeover of a dead
node's RUNNING rows (one winner however many try), fencing, and the rows nobody owns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from gatewayd.model import Status
from gatewayd.store.base import LeaseLost, NodeRecord, Store
from tests.store_backends import Backend
from tests.test_store_claims import planned

LEASE = 5.0


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make(node="node-a") as s:
        yield s


async def register(store: Store, name: str, lease: float = LEASE) -> None:
    now = await store.db_now()
    await store.register_node(
        NodeRecord(name, now, lease, host="h-" + name, pid=42, version="1.0", marker="m")
    )


async def test_a_registered_node_is_alive_and_counts_its_running_rows(store: Store) -> None:
    await register(store, "node-a")
    running = [await store.insert_transfer(planned(status=Status.RUNNING)) for _ in range(2)]
    await store.insert_transfer(planned())
    assert {t.owner for t in running} == {"node-a"}
    now = await store.db_now()
    [node] = await store.list_nodes(now)
    assert (node.name, node.host, node.pid, node.version, node.marker) == (
        "node-a",
        "h-node-a",
        42,
        "1.0",
        "m",
    )
    assert node.alive and node.running == 2 and node.lease == LEASE
    assert node.stopped is None and node.taken_over_by is None
    assert await store.renew_heartbeat("node-a", now + timedelta(seconds=1))
    [node] = await store.list_nodes(now)
    assert node.heartbeat == now + timedelta(seconds=1)
    [node] = await store.list_nodes(now + timedelta(seconds=1 + LEASE + 0.1))
    assert not node.alive, "its lease ran out"
    assert not await store.renew_heartbeat("node-x", now), "no such node"


async def test_a_dead_node_is_taken_over_once(store: Store) -> None:
    await register(store, "node-a")
    await register(store, "node-b")
    ours = [await store.insert_transfer(planned(status=Status.RUNNING)) for _ in range(3)]
    done = await store.insert_transfer(planned(status=Status.DONE))
    now = await store.db_now()
    assert await store.take_over("node-a", "node-b", now) is None, "its lease holds"

    later = now + timedelta(seconds=LEASE + 1)
    taken = await store.take_over("node-a", "node-b", later)
    assert taken is not None
    assert [t.id for t in taken] == [t.id for t in ours]
    for t in taken:
        assert (t.status, t.taken_over_by, t.taken_over_at) == (
            Status.INTERRUPTED,
            "node-b",
            later,
        )
        assert t == await store.get_transfer(t.id or 0), "returned as committed"
    got = await store.get_transfer(done.id or 0)
    assert got is not None and got.status == Status.DONE and got.taken_over_by is None
    assert await store.take_over("node-a", "node-b", later) is None, "once"

    nodes = {n.name: n for n in await store.list_nodes(later)}
    assert (nodes["node-a"].taken_over_by, nodes["node-a"].taken_over_at) == ("node-b", later)
    assert not nodes["node-a"].alive and nodes["node-a"].running == 0
    # Fencing: the node that was taken over learns it at its next beat.
    assert not await store.renew_heartbeat("node-a", later)
    # Restarted, it is a node like any other again.
    await register(store, "node-a")
    [a] = [n for n in await store.list_nodes(await store.db_now()) if n.name == "node-a"]
    assert a.alive and a.taken_over_by is None
    assert await store.renew_heartbeat("node-a", await store.db_now())


async def test_one_of_racing_nodes_wins_the_takeover(backend: Backend, store: Store) -> None:
    await register(store, "node-a")
    ours = [await store.insert_transfer(planned(status=Status.RUNNING)) for _ in range(20)]
    later = await store.db_now() + timedelta(seconds=LEASE + 1)
    async with backend.make(node="node-b") as b, backend.make(node="node-c") as c:
        results = await asyncio.gather(
            *(s.take_over("node-a", s_name, later) for s, s_name in ((b, "node-b"), (c, "node-c")))
        )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1, [len(r) for r in results]
    assert sorted(t.id for t in winners[0]) == sorted(t.id for t in ours)
    by = {t.taken_over_by for t in winners[0]}
    assert len(by) == 1
    rows = await backend.raw("SELECT DISTINCT status, taken_over_by FROM transfers")
    assert rows == [(Status.INTERRUPTED.value, by.pop())]


async def test_a_renewal_keeps_a_late_node(store: Store) -> None:
    await register(store, "node-a")
    await store.insert_transfer(planned(status=Status.RUNNING))
    now = await store.db_now()
    late = now + timedelta(seconds=LEASE + 1)
    assert await store.renew_heartbeat("node-a", late)
    assert await store.take_over("node-a", "node-b", late) is None


async def test_a_stopped_node_is_not_taken_over(store: Store) -> None:
    await register(store, "node-a")
    row = await store.insert_transfer(planned(status=Status.RUNNING))
    now = await store.db_now()
    await store.stop_node("node-a", now)
    [node] = await store.list_nodes(now)
    assert node.stopped == now and not node.alive
    assert await store.take_over("node-a", "node-b", now + timedelta(seconds=LEASE * 10)) is None
    got = await store.get_transfer(row.id or 0)
    assert got is not None and got.status == Status.RUNNING


async def test_a_dead_node_without_running_rows_is_claimed(store: Store) -> None:
    await register(store, "node-a")
    later = await store.db_now() + timedelta(seconds=LEASE + 1)
    assert await store.take_over("node-a", "node-b", later) == []
    assert await store.take_over("node-a", "node-b", later) is None


async def test_rows_nobody_owns_are_left_while_another_node_lives(backend: Backend) -> None:
    async with backend.make(node="node-a") as a:
        orphan = await a.insert_transfer(planned(status=Status.PLANNED))
        await backend.raw(
            "UPDATE transfers SET status = 'RUNNING', owner = NULL WHERE id = ?", orphan.id
        )
        await register(a, "node-b")  # alive: it may be running the orphan
        await register(a, "node-a")
        taken = await a.interrupt_running()
        if backend.dsn is None:
            # SQLite: one daemon per file, every RUNNING row was its own.
            assert [t.id for t in taken] == [orphan.id]
            return
        assert taken == []
        await a.stop_node("node-b", await a.db_now())
        assert [t.id for t in await a.interrupt_running()] == [orphan.id], "alone now"


async def test_writes_past_the_lease_are_refused(backend: Backend, store: Store) -> None:
    row = await store.insert_transfer(planned(status=Status.RUNNING))
    store.hold_lease(time.monotonic() - 0.001)
    row.progress = 10
    if backend.dsn is None:
        await store.save_transfer(row)  # SQLite: one node, nobody else to take it over
        return
    with pytest.raises(LeaseLost):
        await store.save_transfer(row)
    with pytest.raises(LeaseLost):
        await store.claim_due(await store.db_now(), 10, "node-a", 1, {}, 1)
    got = await store.get_transfer(row.id or 0)
    assert got is not None and got.progress == 0, "nothing written"
    store.hold_lease(time.monotonic() + 60)
    await store.save_transfer(row)
    got = await store.get_transfer(row.id or 0)
    assert got is not None and got.progress == 10
