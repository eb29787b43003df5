"""Versioned schema migrations: `migrations/NNNN_name.sql`, applied in order, the same
files for both backends (written in SQLite's dialect, translated for PostgreSQL by
`gatewayd.store.dialect`).

Each migration runs in its own transaction together with the version bump, so a failed
migration leaves the database at the previous version. Migration files must not contain
their own BEGIN/COMMIT. A database whose version is above the last migration known is
refused (`SchemaTooNewError`): old code on a newer schema could silently lose what it
does not know about.

- SQLite keeps the version in `PRAGMA user_version`; one daemon owns the file.
- PostgreSQL keeps it in the table `schema_migrations` (one row per migration applied),
  and migrates under a session advisory lock: nodes that start together wait for the
  first one, then find the schema up to date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import aiosqlite

from gatewayd.store.dialect import POSTGRESQL

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    # A connection of its own, or one lent by a pool.
    PgConnection = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaError(RuntimeError):
    """The database schema cannot be brought to the version this code needs."""


class SchemaTooNewError(SchemaError):
    """The database was migrated by a newer gatewayd than this one."""


@dataclass(frozen=True)
class Migration:
    version: int
    filename: str
    sql: str


def load_migrations() -> list[Migration]:
    """The packaged migrations, sorted; their versions must run 1, 2, ... without gaps.

    Reads package files: call it off the event loop (`asyncio.to_thread`).
    """
    folder = resources.files("gatewayd.store") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise SchemaError(f"migration file {entry.name!r} is not named NNNN_name.sql")
            continue
        found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


async def current_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


def _too_new(where: str, version: int, latest: int) -> SchemaTooNewError:
    return SchemaTooNewError(
        f"{where} has schema version {version}, but this gatewayd only knows versions "
        f"up to {latest}: it was written by a newer gatewayd. Run that version, or "
        "restore a backup made before the upgrade."
    )


async def apply_migrations(
    conn: aiosqlite.Connection, migrations: list[Migration], *, where: str = "database"
) -> int:
    """Bring the SQLite database to the last of `migrations`; returns the resulting
    version. Refuses (SchemaTooNewError) a database whose version is above the last
    migration. `where` names the database in error messages.
    """
    version = await current_version(conn)
    latest = migrations[-1].version if migrations else 0
    if version > latest:
        raise _too_new(where, version, latest)
    for migration in migrations:
        if migration.version <= version:
            continue
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n;\n"
            f"PRAGMA user_version = {migration.version:d};\n"
            "COMMIT;\n"
        )
        try:
            await conn.executescript(script)
        except Exception as exc:
            if conn.in_transaction:
                await conn.rollback()
            raise SchemaError(
                f"{where}: migration {migration.filename} failed, the database stays at "
                f"version {version}: {exc}"
            ) from exc
        version = migration.version
    return version


# -- PostgreSQL ------------------------------------------------------------------------

# The advisory lock the migrations run under (a two-int key: they live apart from the
# single-bigint keys other software may use). Take it on a connection of its own, closed
# afterwards: closing releases it whatever happened.
MIGRATION_LOCK = (0x67617465, 1)  # "gate"

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    filename TEXT NOT NULL,
    applied TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


async def pg_current_version(conn: PgConnection) -> int:
    """The highest migration applied (0: a database gatewayd never touched)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def pg_apply_migrations(
    conn: PgConnection, migrations: list[Migration], *, where: str = "database"
) -> int:
    """Bring the PostgreSQL database to the last of `migrations` under the migration
    lock; returns the resulting version. Nodes that open the database at once wait for
    each other here: the migrations run once. Refuses (SchemaTooNewError) a database
    whose version is above the last migration."""
    latest = migrations[-1].version if migrations else 0
    await conn.execute("SELECT pg_advisory_lock($1, $2)", *MIGRATION_LOCK)
    try:
        version = await pg_current_version(conn)
        if version > latest:
            raise _too_new(where, version, latest)
        if version == latest:
            return version
        await conn.execute(_VERSION_TABLE)
        for migration in migrations:
            if migration.version <= version:
                continue
            try:
                sql = POSTGRESQL.migration(migration.sql)
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, filename) VALUES ($1, $2)",
                        migration.version,
                        migration.filename,
                    )
            except Exception as exc:
                raise SchemaError(
                    f"{where}: migration {migration.filename} failed, the database stays at "
                    f"version {version}: {exc}"
                ) from exc
            version = migration.version
        return version
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *MIGRATION_LOCK)
