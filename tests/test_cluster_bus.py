"""The cluster bus's sending side on a real PostgreSQL database, in process: a pause
for a transfer whose owner's lease expired, whose owner stopped, or whose owner does not
answer is refused naming the owner, and a request nobody answered is withdrawn so that
the owner never carries it out later. (Carried-out commands: tests/test_cluster_control.py,
with real nodes.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gatewayd.cluster.bus import Bus
from gatewayd.model import Status, Transfer
from gatewayd.pipeline.engine import StopReason
from gatewayd.pipeline.service import OwnerUnavailable
from gatewayd.store.codec import encode_time
from tests.store_backends import Backend

pytestmark = pytest.mark.timeout(60)


async def running(backend: Backend, store: Any, owner: str) -> Transfer:
    """A RUNNING row of `owner` (another node: written behind this store's back)."""
    t = Transfer(
        rule="out",
        is_server=False,
        is_send=True,
        requester="gw",
        requested="p",
        protocol="local",
        partner="p",
        status=Status.PLANNED,
        start=datetime.now(UTC),
    )
    await store.insert_transfer(t)
    await backend.raw(
        "UPDATE transfers SET status = 'RUNNING', owner = ? WHERE id = ?", owner, t.id
    )
    t.status, t.owner = Status.RUNNING, owner
    return t


async def register(backend: Backend, name: str, beat_ago: float, stopped: bool = False) -> None:
    beat = encode_time(datetime.now(UTC) - timedelta(seconds=beat_ago))
    await backend.raw(
        "INSERT INTO nodes (name, started, heartbeat, lease_seconds, stopped) "
        "VALUES (?, ?, ?, ?, ?)",
        name, beat, beat, 15.0, beat if stopped else None,
    )  # fmt: skip


async def test_a_pause_for_an_owner_that_cannot_answer_is_refused_naming_it(
    backend: Backend,
) -> None:
    if backend.dsn is None:
        pytest.skip("PostgreSQL only: with SQLite every transfer is this node's")
    async with backend.make(node="node-a") as store:
        service: Any = None  # the sending side never uses this node's service
        bus = Bus(store, "node-a", service, wake=lambda: None, timeout=0.5)
        assert bus.enabled
        await register(backend, "node-dead", beat_ago=60)
        await register(backend, "node-gone", beat_ago=1, stopped=True)
        await register(backend, "node-mute", beat_ago=1)

        for owner, words in (
            ("node-dead", "has not renewed its lease for 60 s (lease 15 s)"),
            ("node-gone", "which stopped at"),
        ):
            t = await running(backend, store, owner)
            with pytest.raises(OwnerUnavailable) as refused:
                await bus.stop_elsewhere(t, StopReason.PAUSE)
            assert refused.value.node == owner and words in str(refused.value), refused.value
            assert await store.pending_commands(owner) == [], "nothing asked of it"

        # Alive by its lease but silent (frozen, cut off): refused after the timeout,
        # and the request withdrawn, so that it is not carried out when the node wakes.
        t = await running(backend, store, "node-mute")
        began = time.monotonic()
        with pytest.raises(OwnerUnavailable) as refused:
            await bus.stop_elsewhere(t, StopReason.CANCEL)
        assert 0.5 <= time.monotonic() - began < 2.0
        assert "did not answer within 0.5 s" in str(refused.value)
        assert await store.pending_commands("node-mute") == []
        [command] = await backend.raw("SELECT action, error FROM node_commands")
        assert command == ("cancel", "no answer in 0.5 s")
        assert t.id is not None
        row = await store.get_transfer(t.id)
        assert row is not None and (row.status, row.owner) == (Status.RUNNING, "node-mute")
