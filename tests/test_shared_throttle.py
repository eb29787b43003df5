"""The login throttle counted in the database (`SharedThrottle`), on both backends: two
throttles on one database are two nodes; their failures add up, a ban reached through
one holds on the other, and the windows, bans and delays are the in-memory throttle's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from gatewayd.pipeline.auth_throttle import AuthThrottle, ThrottlePolicy
from gatewayd.pipeline.shared_throttle import SharedThrottle
from gatewayd.store.base import Store
from tests.store_backends import Backend

POLICY = ThrottlePolicy(
    window=60, free_failures=2, base_delay=0.5, max_delay=4, max_address_failures=6,
    max_account_failures=8, ban=300,
)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[tuple[Store, Store]]:
    async with backend.two_nodes() as both:
        yield both


async def test_failures_on_two_nodes_add_up_to_a_ban_on_both(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = (SharedThrottle(s, "partners", POLICY, clock) for s in stores)
    delays = []
    for i in range(5):
        node = a if i % 2 == 0 else b
        assert await node.check("10.0.0.1", f"user{i}") == 0
        delays.append(await node.record_failure("10.0.0.1", f"user{i}"))
    assert delays == [0, 0, 0.5, 1.0, 2.0], "two free, then doubling, counted over both"
    assert await b.check("10.0.0.1", "someone") == 0, "5 of 6: not yet"
    await b.record_failure("10.0.0.1", "user5")
    assert await a.check("10.0.0.1", "anyone") == 300, "the 6th failure bans on every node"
    assert await b.check("10.0.0.1", "") == 300
    assert await a.check("10.0.0.2", "anyone") == 0, "other addresses are not banned"
    assert a.refused_total == 1 and b.refused_total == 1
    clock.advance(299)
    assert await b.check("10.0.0.1", "") == 1
    clock.advance(2)
    assert await a.check("10.0.0.1", "") == 0, "the ban is over"
    assert await a.record_failure("10.0.0.1", "late") == 0, "the count starts again"


async def test_windows_accounts_and_scopes(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    a, b = (SharedThrottle(s, "partners", POLICY, clock) for s in stores)
    api = SharedThrottle(stores[0], "api", POLICY, clock)
    for i in range(3):
        await (a, b)[i % 2].record_failure(f"10.1.0.{i}", "acme")
    clock.advance(61)
    assert await a.record_failure("10.1.0.9", "acme") == 0, "older than the window: forgotten"
    for i in range(7):
        await (a, b)[i % 2].record_failure(f"10.2.0.{i}", "acme")
    assert await a.check("10.3.0.1", "acme") == 300, "8 failures of one account ban it"
    assert await api.check("10.3.0.1", "acme") == 0, "the API counts apart"
    clock.advance(301)
    # A good login (checked first, as every login is) clears the account's count.
    for node in (a, b):
        await node.record_failure("10.4.0.1", "acme")
    assert await b.check("10.4.0.1", "acme") == 0
    await b.record_success("10.4.0.1", "acme")
    assert await a.record_failure("10.4.0.2", "acme") == 0, "count cleared by the success"
    assert await stores[0].forget_login_failures(clock() + timedelta(seconds=1)) >= 3


async def test_same_answers_as_the_memory_throttle(stores: tuple[Store, Store]) -> None:
    clock = Clock()
    shared = SharedThrottle(stores[0], "partners", POLICY, clock)
    memory = AuthThrottle(POLICY, lambda: clock().timestamp())
    for i in range(12):
        login = "acme" if i % 3 else f"u{i}"
        got = (await shared.check("10.5.0.1", login), await memory.check("10.5.0.1", login))
        assert got[0] == got[1], (i, got)
        if not got[0]:
            assert await shared.record_failure("10.5.0.1", login) == await memory.record_failure(
                "10.5.0.1", login
            ), i
        clock.advance(1)
