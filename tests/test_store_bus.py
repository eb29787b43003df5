"""The cluster bus's part of the store, on both backends: commands between nodes
(post, take, answer once, purge), notices with generations, the leases it reads, saves
conditional on the status, and (PostgreSQL) notifications heard by another node's
listener, including after its connection was cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gatewayd.model import Status, Transfer
from gatewayd.store.base import Notification, Store
from gatewayd.store.codec import encode_time
from tests.pg_support import pg_raw
from tests.store_backends import Backend

pytestmark = pytest.mark.timeout(60)


def planned() -> Transfer:
    return Transfer(
        rule="out",
        is_server=False,
        is_send=True,
        requester="gw",
        requested="p",
        protocol="local",
        partner="p",
        status=Status.PLANNED,
        start=datetime(2024, 5, 1, tzinfo=UTC),
    )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make(node="node-a") as s:
        yield s


async def test_commands_are_taken_by_their_node_and_answered_once(store: Store) -> None:
    first = await store.post_command("node-b", 7, "pause", "node-a")
    second = await store.post_command("node-b", 8, "cancel", "node-a")
    other = await store.post_command("node-c", 9, "pause", "node-a")
    assert first.id < second.id and first.answered is None and first.sender == "node-a"
    assert [c.id for c in await store.pending_commands("node-b")] == [first.id, second.id]
    assert [c.id for c in await store.pending_commands("node-c")] == [other.id]

    assert await store.answer_command(first.id, "PAUSED")
    assert not await store.answer_command(first.id, "CANCELLED", "late"), "answered once"
    assert not await store.answer_command(999_999, "PAUSED"), "unknown"
    got = await store.get_command(first.id)
    assert got is not None and got.answered is not None
    assert (got.result, got.error, got.transfer_id, got.action) == ("PAUSED", "", 7, "pause")
    assert [c.id for c in await store.pending_commands("node-b")] == [second.id]
    assert await store.get_command(999_999) is None

    # The target starts on one (once); its sender can no longer withdraw it then.
    assert await store.take_command(second.id)
    assert not await store.take_command(second.id), "taken once"
    assert not await store.withdraw_command(second.id, "no answer in 5 s")
    taken = await store.get_command(second.id)
    assert taken is not None and (taken.result, taken.answered) == ("TAKEN", None)
    assert await store.answer_command(second.id, "", "cannot cancel a transfer that is DONE")
    # A command nobody started on is withdrawn, and then cannot be taken.
    late = await store.post_command("node-b", 10, "pause", "node-a")
    assert await store.withdraw_command(late.id, "no answer in 5 s")
    assert not await store.take_command(late.id)
    gone = await store.get_command(late.id)
    assert gone is not None and gone.answered is not None and gone.error == "no answer in 5 s"
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert await store.purge_commands(later) == 3, "the answered ones go"
    assert await store.get_command(first.id) is None
    assert [c.id for c in await store.pending_commands("node-c")] == [other.id], "kept"


async def test_notices_count_generations(store: Store) -> None:
    assert await store.get_notice("rules") is None
    one = await store.bump_notice("rules", "node-a")
    two = await store.bump_notice("rules", "node-b")
    assert (one.generation, two.generation, two.by_node) == (1, 2, "node-b")
    assert two.changed >= one.changed
    assert await store.get_notice("rules") == two
    assert (await store.bump_notice("other", "node-a")).generation == 1


async def test_leases_are_read_from_the_nodes_table(store: Store, backend: Backend) -> None:
    assert await store.node_lease("node-b") is None
    now = datetime.now(UTC)
    beat = encode_time(now - timedelta(seconds=20))
    await backend.raw(
        "INSERT INTO nodes (name, started, heartbeat, lease_seconds) VALUES (?, ?, ?, ?)",
        "node-b", beat, beat, 15.0,
    )  # fmt: skip
    lease = await store.node_lease("node-b")
    assert lease is not None and lease.lease_seconds == 15.0
    assert not lease.alive(now), "20 s without a heartbeat, a lease of 15"
    assert lease.alive(now - timedelta(seconds=10))


async def test_a_save_conditional_on_the_status_loses_to_a_claim(store: Store) -> None:
    t = await store.insert_transfer(planned())
    assert t.id is not None
    [claimed] = await store.claim_due(datetime.now(UTC), 10, "node-b", 5, {}, 5)
    assert claimed.id == t.id
    t.status = Status.PAUSED  # read while PLANNED, saved after the claim
    assert not await store.save_transfer_if(t, Status.PLANNED)
    row = await store.get_transfer(t.id)
    assert row is not None and (row.status, row.owner) == (Status.RUNNING, "node-b")

    assert await store.save_transfer_if(t, Status.RUNNING)
    row = await store.get_transfer(t.id)
    assert row is not None and row.status == Status.PAUSED


async def test_sqlite_hears_nothing_and_shares_nothing(backend: Backend) -> None:
    if backend.dsn is not None:
        pytest.skip("SQLite only")
    async with backend.make() as store:
        assert not store.shared
        listening = await store.listen(lambda n: None, lambda: None)
        await store.notify(Notification("due", "node-a"))
        await listening.close()


async def test_postgresql_notifies_the_other_nodes_and_listens_again(
    backend: Backend,
) -> None:
    if backend.dsn is None:
        pytest.skip("PostgreSQL only")
    async with backend.make(node="node-a") as a, backend.make(node="node-b") as b:
        assert a.shared
        heard: asyncio.Queue[Notification] = asyncio.Queue()
        connections = asyncio.Queue[None]()
        listening = await b.listen(heard.put_nowait, lambda: connections.put_nowait(None))
        try:
            async with asyncio.timeout(10):
                await connections.get()
                command = await a.post_command("node-b", 5, "pause", "node-a")
                assert await heard.get() == Notification("command", "node-b", str(command.id))
                assert await b.answer_command(command.id, "PAUSED")
                assert await heard.get() == Notification("answer", "node-a", str(command.id))
                await a.bump_notice("rules", "node-a")
                assert await heard.get() == Notification("notice", "node-a", "rules")
                await a.notify(Notification("due", "node-a"))
                assert await heard.get() == Notification("due", "node-a")

                # The listening connection cut (a server restart, a network drop): it
                # comes back by itself and says so, so the bus looks at what it missed.
                assert backend.dsn is not None
                cut = await pg_raw(
                    backend.dsn,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'gatewayd node-b' AND query LIKE 'LISTEN%'",
                )
                assert len(cut) == 1, "the listening connection was found and cut"
                await connections.get()
                await a.notify(Notification("due", "node-a", "again"))
                assert await heard.get() == Notification("due", "node-a", "again")
        finally:
            await listening.close()


async def test_a_claim_that_leaves_a_row_never_hides_it_from_another_node(
    backend: Backend,
) -> None:
    """Node B's claims leave every row (its limit of the partner is 0); node A's, made
    at the same moment, must take each one. (Rows B's claim had locked were skipped by
    A's, and nobody took them until a node looked again, up to a minute later.)"""
    if backend.dsn is None:
        pytest.skip("PostgreSQL only: one SQLite node claims alone")
    async with backend.make(node="node-a") as a, backend.make(node="node-b") as b:
        now = datetime.now(UTC)
        missed = 0
        for _ in range(40):
            t = await a.insert_transfer(planned())
            got_b, got_a = await asyncio.gather(
                b.claim_due(now, 256, "node-b", 5, {"p": 0}, 5),
                a.claim_due(now, 256, "node-a", 5, {"p": 5}, 5),
            )
            assert got_b == []
            missed += [x.id for x in got_a] != [t.id]
            t.status = Status.DONE
            await a.save_transfer_if(t, Status.RUNNING) or await a.save_transfer_if(
                t, Status.PLANNED
            )
        assert missed == 0, f"{missed} of 40 rows hidden from node-a by node-b's claim"


async def test_the_next_due_time_after_now_is_one_aggregate(store: Store) -> None:
    now = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert await store.next_due_after(now) is None
    due = planned()  # due long ago
    due.start = now - timedelta(minutes=5)
    later = planned()
    later.start = now + timedelta(seconds=30)
    retry = planned()  # started long ago, its next attempt sooner than `later`
    retry.start, retry.next_attempt = now - timedelta(hours=1), now + timedelta(seconds=10)
    paused = planned()
    paused.status, paused.start = Status.PAUSED, now + timedelta(seconds=1)
    for t in (due, later, retry, paused):
        await store.insert_transfer(t)
    assert await store.next_due_after(now) == now + timedelta(seconds=10)
    assert await store.next_due_after(now + timedelta(seconds=10)) == now + timedelta(seconds=30)
    assert await store.next_due_after(now + timedelta(seconds=30)) is None
