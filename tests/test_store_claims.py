"""Claims of due transfers (`Store.claim_due`) and the owner of RUNNING rows, on both
backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gatewayd.model import Status, Step, Transfer
from gatewayd.store.base import Store
from tests.store_backends import Backend

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def planned(partner: str | None = "p", start: datetime = T0, **kw: Any) -> Transfer:
    base: dict[str, Any] = {
        "rule": "out",
        "is_server": partner is None,
        "is_send": True,
        "requester": "gw",
        "requested": partner or "",
        "protocol": "sftp",
        "partner": partner,
        "account": None if partner else "acct",
        "status": Status.PLANNED,
        "start": start,
    }
    base.update(kw)
    return Transfer(**base)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make(node="node-a") as s:
        yield s


async def claim(store: Store, slots: int = 10, window: int = 256, **limits: int) -> list[int]:
    default = limits.pop("default", 10)
    claimed = await store.claim_due(T0, window, "node-a", slots, limits, default)
    return [t.id or 0 for t in claimed]


async def test_claims_due_rows_oldest_first_within_the_free_slots(store: Store) -> None:
    rows = [await store.insert_transfer(planned(start=T0 - timedelta(minutes=i))) for i in range(5)]
    later = await store.insert_transfer(planned(start=T0 + timedelta(seconds=1)))
    retry = await store.insert_transfer(planned(next_attempt=T0 + timedelta(seconds=1)))
    paused = await store.insert_transfer(planned(status=Status.PAUSED))
    oldest_first = [t.id for t in reversed(rows)]

    claimed = await store.claim_due(T0, 256, "node-a", 3, {}, 10)
    assert [t.id for t in claimed] == oldest_first[:3]
    for t in claimed:
        assert (t.status, t.owner) == (Status.RUNNING, "node-a")
        assert t == await store.get_transfer(t.id or 0), "returned as committed"
        assert t.updated is not None and t.created is not None and t.updated > t.created
    assert await store.count_due(T0) == 2
    assert await claim(store) == oldest_first[3:]
    assert await claim(store) == [], "a row is claimed once"
    assert await store.count_due(T0) == 0
    for t in (later, retry, paused):
        got = await store.get_transfer(t.id or 0)
        assert got is not None and got.status == t.status and got.owner is None
    assert await claim(store, slots=0) == []


async def test_partner_limits_count_every_nodes_running_rows(store: Store) -> None:
    # Partner a already runs one transfer, claimed by another node; b runs none.
    first = await store.insert_transfer(planned("a", start=T0 - timedelta(hours=1)))
    [by_b] = await store.claim_due(T0, 10, "node-b", 1, {}, 10)
    assert (by_b.id, by_b.owner) == (first.id, "node-b")
    a_rows = [(await store.insert_transfer(planned("a"))).id for _ in range(3)]
    b_rows = [(await store.insert_transfer(planned("b"))).id for _ in range(3)]
    got = await claim(store, a=2, b=1)
    assert got == [a_rows[0], b_rows[0]], "a has one slot left, b one"
    assert await claim(store, a=2, b=1) == []
    assert await store.count_due(T0) == 4
    # A partner's slot freed on any node is taken at the next claim.
    by_b.status = Status.DONE
    await store.save_transfer(by_b)
    assert await claim(store, a=2, b=1) == [a_rows[1]]
    # The default applies to partners without a limit of their own.
    assert await claim(store, default=3) == [a_rows[2], b_rows[1], b_rows[2]]


async def test_full_partners_do_not_hide_later_rows_of_others(store: Store) -> None:
    # The first rows all go to one partner that can take one; the window is 2 rows.
    a_rows = [
        (await store.insert_transfer(planned("a", start=T0 - timedelta(hours=1, minutes=i)))).id
        for i in range(6)
    ]
    b_row = (await store.insert_transfer(planned("b"))).id
    c_row = (await store.insert_transfer(planned("c", start=T0 - timedelta(seconds=1)))).id
    got = await claim(store, window=2, default=1)
    assert got == [a_rows[-1], c_row, b_row]


async def test_rows_without_a_partner_take_a_slot_only(store: Store) -> None:
    # Server transfers the gateway finishes alone (after a restart) have no partner.
    alone = [
        (await store.insert_transfer(planned(None, step=Step.POST_TASKS))).id for _ in range(4)
    ]
    with_partner = (await store.insert_transfer(planned("a"))).id
    assert await claim(store, slots=3, default=1) == alone[:3]
    assert await claim(store, slots=5, default=1) == [alone[3], with_partner]


async def test_running_rows_record_their_owner(store: Store) -> None:
    # A partner opening a server transfer: inserted RUNNING, or saved RUNNING.
    opened = await store.insert_transfer(planned(None, status=Status.RUNNING))
    resumed = await store.insert_transfer(planned(None, status=Status.INTERRUPTED))
    assert (opened.owner, resumed.owner) == ("node-a", None)
    resumed.status = Status.RUNNING
    await store.save_transfer(resumed)
    for t in (opened, resumed):
        got = await store.get_transfer(t.id or 0)
        assert got is not None and got.owner == "node-a"
    # The owner stays once it ended: the node that ran it last.
    opened.status = Status.DONE
    await store.save_transfer(opened)
    got = await store.get_transfer(opened.id or 0)
    assert got is not None and (got.status, got.owner) == (Status.DONE, "node-a")


async def test_claim_takes_the_claiming_nodes_name(store: Store) -> None:
    t = await store.insert_transfer(planned())
    [claimed] = await store.claim_due(T0, 10, "node-c", 1, {}, 1)
    assert (claimed.id, claimed.owner) == (t.id, "node-c")
    with pytest.raises(ValueError, match="limit"):
        await store.claim_due(T0, 0, "node-c", 1, {}, 1)
