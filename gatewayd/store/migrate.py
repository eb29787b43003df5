"""Versioned schema migrations: `migrations/NNNN_name.sql`, applied in order.

The schema version is SQLite's `PRAGMA user_version`. Each migration runs in its own
transaction together with the version bump, so a failed migration leaves the database at
the previous version. Migration files must not contain their own BEGIN/COMMIT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import aiosqlite

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


async def apply_migrations(
    conn: aiosqlite.Connection, migrations: list[Migration], *, where: str = "database"
) -> int:
    """Bring the database to the last of `migrations`; returns the resulting version.

    Refuses (SchemaTooNewError) a database whose version is above the last migration:
    running old code on a newer schema could silently lose what it does not know about.
    `where` names the database in error messages.
    """
    version = await current_version(conn)
    latest = migrations[-1].version if migrations else 0
    if version > latest:
        raise SchemaTooNewError(
            f"{where} has schema version {version}, but this gatewayd only knows versions "
            f"up to {latest}: it was written by a newer gatewayd. Run that version, or "
            "restore a backup made before the upgrade."
        )
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
