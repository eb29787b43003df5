"""Console sessions kept in the database (`SessionStore`, migration 0011), on both
backends: two session stores on one database are two nodes; a session opened through
one works through the other, a logout through either ends it on both, the idle timeout
and the lifetime hold, and the database never holds a usable cookie."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gatewayd.clock import ManualClock
from gatewayd.console.sessions import SessionStore, digest
from gatewayd.store.base import Store
from tests.store_backends import Backend

KEY = b"k" * 32


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[tuple[Store, Store]]:
    async with backend.two_nodes() as both:
        yield both


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def nodes(stores: tuple[Store, Store], clock: ManualClock, **kw: float) -> list[SessionStore]:
    return [SessionStore(s, KEY, clock.now, **kw) for s in stores]


async def test_a_session_of_one_node_works_on_the_other_and_ends_on_both(
    stores: tuple[Store, Store], clock: ManualClock
) -> None:
    a, b = nodes(stores, clock)
    s = await a.open("admin")
    on_b = await b.get(s.id)
    assert on_b is not None and on_b.user == "admin"
    assert on_b.csrf == s.csrf and on_b.csrf_ok(s.csrf), "the same CSRF token on every node"
    assert not on_b.csrf_ok(None) and not on_b.csrf_ok("x")
    other = await a.open("admin")
    assert other.csrf != s.csrf and other.id != s.id
    assert a.max_age(on_b) == 12 * 3600
    assert await b.close(s.id) and not await b.close(s.id)
    assert await a.get(s.id) is None and not await a.alive(s.id), "logged out on both"
    assert await a.get(other.id) is not None, "the user's other session stays"


async def test_the_database_holds_only_a_digest_of_the_cookie(
    stores: tuple[Store, Store], clock: ManualClock
) -> None:
    a, _ = nodes(stores, clock)
    s = await a.open("admin")
    assert await stores[0].get_console_session(s.id) is None, "the cookie is not a key"
    row = await stores[0].get_console_session(digest(s.id))
    assert row is not None and row.user == "admin" and s.id not in repr(row)
    assert s.csrf not in repr(row)


async def test_sessions_expire_when_idle_and_at_their_lifetime(
    stores: tuple[Store, Store], clock: ManualClock
) -> None:
    a, b = nodes(stores, clock, idle=100, lifetime=250, limit=2)
    s = await a.open("admin")
    clock.advance(90)
    assert await b.get(s.id) is not None  # seen through node b: the idle time restarts
    clock.advance(90)
    assert await a.alive(s.id), "180 s after the login, 90 s idle"
    clock.advance(15)
    assert await b.get(s.id) is None, "idle for 105 s: alive() was no activity"
    s = await a.open("admin")
    for _ in range(4):
        clock.advance(60)
        assert await b.get(s.id) is not None
    clock.advance(60)
    assert await b.get(s.id) is None, "past its lifetime, however active"


async def test_the_oldest_sessions_go_beyond_the_limit(
    stores: tuple[Store, Store], clock: ManualClock
) -> None:
    a, b = nodes(stores, clock, limit=2)
    first = await a.open("a")
    clock.advance(1)
    second = await b.open("b")
    clock.advance(1)
    third = await a.open("c")
    assert await b.get(first.id) is None
    assert await b.get(second.id) is not None and await a.get(third.id) is not None


async def test_closing_a_user_ends_its_sessions_only(
    stores: tuple[Store, Store], clock: ManualClock
) -> None:
    a, b = nodes(stores, clock)
    mine, also_mine, theirs = await a.open("ann"), await b.open("ann"), await a.open("bob")
    await b.close_user("ann")
    assert await a.get(mine.id) is None and await a.get(also_mine.id) is None
    assert await b.get(theirs.id) is not None
