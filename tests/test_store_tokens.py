"""Store methods of the admin API and of pre-registered transfers: API tokens (insert,
get, list, revoke) and the expiry of AVAILABLE transfers, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosqlite
import pytest

from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.store.base import ApiToken, Store
from gatewayd.store.codec import encode_time
from gatewayd.store.migrate import apply_migrations, load_migrations
from gatewayd.store.sqlite import SqliteStore
from tests.store_backends import Backend

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.make() as s:
        yield s


def token(token_id: str, user: str = "admin", minutes: int = 60, **kw: object) -> ApiToken:
    return ApiToken(
        id=token_id,
        user=user,
        created=T0 + timedelta(minutes=len(token_id)),
        expires=T0 + timedelta(minutes=minutes),
        **kw,  # type: ignore[arg-type]
    )


async def test_tokens_round_trip_list_and_revoke(store: Store) -> None:
    first = token("a", permissions={"transfers": "rw"}, comment="nightly")
    await store.insert_token(first)
    await store.insert_token(token("bb", user="ops"))
    assert await store.get_token("a") == first
    assert await store.get_token("zz") is None
    assert [t.id for t in await store.list_tokens()] == ["bb", "a"], "newest first"
    assert [t.id for t in await store.list_tokens("ops")] == ["bb"]
    with pytest.raises(ValueError, match="taken"):
        await store.insert_token(token("a"))
    at = T0 + timedelta(minutes=5)
    results = await asyncio.gather(store.revoke_token("a", at), store.revoke_token("a", at))
    assert sorted(results) == [False, True], "revoked once"
    assert await store.revoke_token("nope", at) is False
    revoked = await store.get_token("a")
    assert revoked is not None and revoked.revoked == at
    assert not revoked.active(T0) and first.active(T0)
    assert not first.active(T0 + timedelta(minutes=60)), "expired at its expiry"


async def test_token_management_is_stored_and_off_for_older_tokens(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    # A database of the version before the column, with a token in it.
    async with aiosqlite.connect(path) as conn:
        assert await apply_migrations(conn, load_migrations()[:4]) == 4
        await conn.execute(
            'INSERT INTO api_tokens (id, "user", permissions, comment, created, expires) '
            "VALUES ('old', 'admin', '{}', '', ?, ?)",
            (encode_time(T0), encode_time(T0 + timedelta(days=1))),
        )
        await conn.commit()
    async with SqliteStore(path) as store:
        old = await store.get_token("old")
        assert old is not None and old.manage_tokens is False, "never given by default"
        await store.insert_token(token("new", manage_tokens=True))
        await store.insert_token(token("plain"))
        found = {t.id: t.manage_tokens for t in await store.list_tokens()}
        assert found == {"old": False, "new": True, "plain": False}


def available(expires: datetime | None, **kw: object) -> Transfer:
    t = Transfer(
        rule="in",
        is_server=True,
        is_send=False,
        requester="acme",
        requested="",
        protocol="",
        account="acme",
        status=Status.AVAILABLE,
        next_attempt=expires,
    )
    for key, value in kw.items():
        setattr(t, key, value)
    return t


async def test_expire_available(store: Store) -> None:
    assert await store.next_expiry() is None
    soon = await store.insert_transfer(available(T0 + timedelta(minutes=1)))
    later = await store.insert_transfer(available(T0 + timedelta(minutes=10)))
    # Neither a planned client row nor a running one is ever expired, whatever the date.
    planned = await store.insert_transfer(
        available(T0, status=Status.PLANNED, is_server=False, partner="p")
    )
    running = await store.insert_transfer(available(T0, status=Status.RUNNING))
    assert await store.next_expiry() == soon.next_attempt
    assert await store.expire_available(T0, "late") == []
    expired = await store.expire_available(T0 + timedelta(minutes=1), "too late")
    assert [t.id for t in expired] == [soon.id]
    row = await store.get_transfer(soon.id or 0)
    assert row is not None
    assert (row.status, row.error_code, row.error_msg, row.step) == (
        Status.ERROR,
        ErrorCode.TeExpired,
        "too late",
        Step.NONE,
    )
    assert row.stop == T0 + timedelta(minutes=1)
    assert await store.next_expiry() == later.next_attempt
    for other in (later, planned, running):
        got = await store.get_transfer(other.id or 0)
        assert got is not None and got.status == other.status
