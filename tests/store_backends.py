"""The store's tests run on both backends: `backend` is a fixture parametrized over
SQLite (a file in the test's folder) and PostgreSQL (a fresh database of the session's
private server, see tests/pg_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import pytest

from gatewayd.store.base import Store
from gatewayd.store.dialect import POSTGRESQL
from gatewayd.store.postgres import PgTarget, PostgresStore
from gatewayd.store.sqlite import SqliteStore

BACKENDS = ("sqlite", "postgresql")


@dataclass
class Backend:
    """One database; `make()` gives a new (unopened) store on it."""

    name: str
    path: Path | None = None
    dsn: str | None = None

    def make(self, node: str = "node-a", **kw: Any) -> Store:
        if self.dsn is not None:
            return PostgresStore(PgTarget(dsn=self.dsn, **kw), node=node)
        assert self.path is not None
        return SqliteStore(self.path, node=node, **kw)

    @asynccontextmanager
    async def two_nodes(self) -> AsyncIterator[tuple[Store, Store]]:
        """Two open stores on the database, as two nodes see it (node-a, node-b);
        SQLite has one node: both are the same store."""
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(self.make("node-a"))
            second = (
                await stack.enter_async_context(self.make("node-b"))
                if self.dsn is not None
                else first
            )
            yield first, second

    async def raw(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A statement (`?` parameters) through a connection of the test's own."""
        if self.dsn is not None:
            conn = await asyncpg.connect(self.dsn)
            try:
                return [tuple(r) for r in await conn.fetch(POSTGRESQL.sql(sql), *args)]
            finally:
                await conn.close()
        assert self.path is not None
        async with aiosqlite.connect(self.path) as db:
            rows = list(await db.execute_fetchall(sql, args))
            await db.commit()
            return [tuple(r) for r in rows]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "postgresql":
        return Backend("postgresql", dsn=request.getfixturevalue("pg_database"))
    return Backend("sqlite", path=tmp_path / "db" / "gatewayd.db")
