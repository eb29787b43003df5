"""`gatewayd db copy`: an SQLite installation's history, tokens, audit log and Tapis
tasks moved into an empty PostgreSQL database.

The SQLite file is opened read-only and read in one transaction (one snapshot of every
table); PostgreSQL is migrated to the same version, then filled in one transaction that
first locks the tables (a node started meanwhile waits) and checks they are empty. Rows
keep their ids and values (both backends store the same values, see
`gatewayd.store.dialect`); the sequences move past the highest id, or past the highest
one SQLite ever gave (ids of purged rows are never given again). Each table's count is
checked in PostgreSQL before the commit: a mismatch rolls everything back.

RUNNING rows are copied as INTERRUPTED (the lifecycle's CRASH), as SQLite's next start
would have marked them: the process that ran them is not running them any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from gatewayd.store.codec import COLUMNS
from gatewayd.store.dialect import POSTGRESQL
from gatewayd.store.migrate import (
    current_version,
    load_migrations,
    pg_apply_migrations,
)
from gatewayd.store.postgres import PgTarget
from gatewayd.store.sql import CRASHED, CRASHED_FROM, TABLES

# Rows read from SQLite and sent with PostgreSQL's COPY at a time.
CHUNK = 5000
# The column of each table that a sequence numbers.
_SERIAL = {"transfers": "id", "audit": "id", "tapis_tasks": "seq", "watched_files": "id"}
_STATUS = COLUMNS.index("status")
_CRASHED_FROM = frozenset(s.value for s in CRASHED_FROM)


class CopyError(Exception):
    """The copy is refused or failed; nothing was written to PostgreSQL."""


@dataclass
class CopyReport:
    """What was copied: rows per table (as counted in PostgreSQL), and how many
    RUNNING transfers became INTERRUPTED."""

    counts: dict[str, int] = field(default_factory=dict)
    interrupted: int = 0


@asynccontextmanager
async def _read_only(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    if not await asyncio.to_thread(path.is_file):
        raise CopyError(f"{path}: no such database file")
    # mode=ro: SQLite opens the file for reading only. Without a write-ahead log to read
    # (the gateway stopped cleanly) also immutable: no -shm and -wal files are made next
    # to it. Safe because the caller holds the gateway's lock: nobody writes meanwhile.
    wal = path.with_name(path.name + "-wal")
    clean = (
        not await asyncio.to_thread(wal.exists) or (await asyncio.to_thread(wal.stat)).st_size == 0
    )
    mode = "mode=ro&immutable=1" if clean else "mode=ro"
    conn = await aiosqlite.connect(f"{path.as_uri()}?{mode}", uri=True)
    try:
        yield conn
    finally:
        await conn.close()


async def copy_sqlite_to_postgresql(path: Path, target: PgTarget) -> CopyReport:
    """Copy the SQLite database `path` into the empty PostgreSQL database `target`.
    The caller holds the gateway's lock (`gatewayd.daemon.DaemonLock`): no gateway
    writes to `path` meanwhile."""
    migrations = await asyncio.to_thread(load_migrations)
    latest = migrations[-1].version
    async with _read_only(path) as source:
        version = await current_version(source)
        if version != latest:
            newer = version > latest
            raise CopyError(
                f"{path} has schema version {version}, this gatewayd {latest}: "
                + (
                    "it was written by a newer gatewayd; copy it with that version"
                    if newer
                    else "start this gatewayd on it once (it migrates it), then copy"
                )
            )
        ssl_arg = await asyncio.to_thread(target.ssl_context)
        conn = await asyncpg.connect(**target.connect_args(ssl_arg))
        try:
            await pg_apply_migrations(conn, migrations, where=target.describe())
            async with conn.transaction():
                return await _copy(source, conn, target)
        finally:
            await conn.close()


async def _copy(source: aiosqlite.Connection, conn: Any, target: PgTarget) -> CopyReport:
    tables = list(TABLES)
    await conn.execute(f"LOCK TABLE {', '.join(tables)} IN EXCLUSIVE MODE")
    for table in tables:
        if await conn.fetchval(f"SELECT count(*) FROM {table}"):
            raise CopyError(
                f"{target.describe()} is not empty (table {table} has rows): db copy only "
                "fills a new database"
            )
    report = CopyReport()
    read: dict[str, int] = {}
    highest: dict[str, int] = {}
    # One read transaction: every table from the same snapshot.
    await source.execute("BEGIN")
    try:
        for table, columns in TABLES.items():
            names = [c.strip('"') for c in columns]
            read[table] = 0
            serial = _SERIAL.get(table)
            at = names.index(serial) if serial else None
            async with source.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY 1"
            ) as cursor:
                while rows := list(await cursor.fetchmany(CHUNK)):
                    records = [_record(table, row, report) for row in rows]
                    await conn.copy_records_to_table(table, records=records, columns=names)
                    read[table] += len(records)
                    if at is not None:
                        highest[table] = max(highest.get(table, 0), *(r[at] for r in records))
        for table, column in _SERIAL.items():
            high = max(highest.get(table, 0), await _sqlite_sequence(source, table))
            if high:
                await conn.execute(
                    "SELECT setval(pg_get_serial_sequence($1, $2), $3)", table, column, high
                )
    finally:
        await source.execute("ROLLBACK")
    for table in tables:
        counted = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        if counted != read[table]:
            raise CopyError(
                f"table {table}: {read[table]} rows read, {counted} in PostgreSQL; nothing copied"
            )
        report.counts[table] = counted
    return report


def _record(table: str, row: Any, report: CopyReport) -> tuple[Any, ...]:
    values = POSTGRESQL.values(row)
    if table == "transfers" and values[_STATUS] in _CRASHED_FROM:
        report.interrupted += 1
        values = (*values[:_STATUS], CRASHED.value, *values[_STATUS + 1 :])
    return values


async def _sqlite_sequence(source: aiosqlite.Connection, table: str) -> int:
    rows = list(
        await source.execute_fetchall("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    )
    return int(rows[0][0]) if rows else 0
