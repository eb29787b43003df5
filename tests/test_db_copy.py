"""`gatewayd db copy --to postgresql://...` as a real command: an SQLite installation's
transfers, tokens, audit log and Tapis tasks in an empty PostgreSQL database, counts
checked, the SQLite file untouched; refused when the target has rows or the gateway
runs."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gatewayd.config import ensure_folders, load_config
from gatewayd.daemon import DaemonLock
from gatewayd.model import Status, Step, Transfer
from gatewayd.store.base import ApiToken, TapisTask, TransferFilter
from gatewayd.store.postgres import PgTarget, PostgresStore
from gatewayd.store.sqlite import SqliteStore
from tests.conftest import DemoConfig
from tests.pg_support import pg_raw

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
pytestmark = pytest.mark.timeout(120)


def make(i: int, **kw: Any) -> Transfer:
    base: dict[str, Any] = {
        "rule": "outbox",
        "is_server": False,
        "is_send": True,
        "requester": "gw",
        "requested": "loopback",
        "protocol": "http",
        "partner": "loopback",
        "src_filename": f"f{i}.csv",
        "start": T0 + timedelta(minutes=i),
        "status": Status.DONE,
        "transfer_info": {"n": i, "é": "ü"},
        "filesize": 1000 + i,
    }
    base.update(kw)
    return Transfer(**base)


async def fill(path: Path) -> dict[str, Any]:
    """An installation's history: what the copy must move."""
    async with SqliteStore(path, node="old-host") as store:
        rows = [make(i) for i in range(1, 301)]
        await store.insert_transfers(rows)
        child = await store.insert_transfer(make(0, parent_id=rows[0].id, follow_id="chain"))
        running = await store.insert_transfer(
            make(400, status=Status.RUNNING, step=Step.DATA, progress=500)
        )
        for i in range(25):
            await store.audit("admin", "transfer.create", f"transfer/{i}", {"i": i})
        tokens = [
            ApiToken(f"tok{i}", "admin", T0, T0 + timedelta(days=1), {"transfers": "r"})
            for i in range(3)
        ]
        for token in tokens:
            await store.insert_token(token)
        await store.revoke_token("tok1", T0 + timedelta(hours=1))
        task = TapisTask("task-1", "admin", T0, tag="t", elements=[{"sourceURI": "x"}])
        await store.insert_tapis_task(task, [make(500, follow_id="task-1")])
        purged = await store.insert_transfer(make(401))  # the highest id
    async with aiosqlite.connect(path) as conn:
        # A purged row: its id is never given again, in SQLite or after the copy.
        await conn.execute("DELETE FROM transfers WHERE id = ?", (purged.id,))
        await conn.commit()
    return {"running": running, "child": child, "purged": purged}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_copy(config: Path, dsn: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", "db", "copy", "-c", str(config), "--to", dsn],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )


async def test_db_copy_moves_everything_and_leaves_sqlite_untouched(
    demo_config: DemoConfig, pg_database: str, subprocess_env: dict[str, str]
) -> None:
    loaded = load_config(demo_config.path)
    ensure_folders(loaded)
    path = loaded.paths.database
    made = await fill(path)
    before = digest(path)
    files_before = sorted(p.name for p in path.parent.iterdir())
    password = pg_database.split(":")[2].split("@")[0]

    result = await asyncio.to_thread(db_copy, demo_config.path, pg_database, subprocess_env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"copied {path} to postgresql://gatewayd_test@127.0.0.1:")
    assert lines[1].split()[:2] == ["transfers", "303"]
    assert "(1 RUNNING copied as INTERRUPTED)" in lines[1]
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["audit", "25"],
        ["api_tokens", "3"],
        ["tapis_tasks", "1"],
    ]
    assert password not in result.stdout + result.stderr
    assert digest(path) == before, "the SQLite file is untouched"
    # (the configuration's load keeps its demo-password answers there too)
    after = sorted(p.name for p in path.parent.iterdir() if p.name != "demo-checks.json")
    assert after == sorted([*files_before, "gatewayd.lock"]), "no -wal or -shm made"

    async with (
        SqliteStore(path) as old,
        PostgresStore(PgTarget(dsn=pg_database), node="gw-1") as new,
    ):
        everything = TransferFilter(limit=-1)
        old_rows, new_rows = (
            (await old.list_transfers(everything))[0],
            (await new.list_transfers(everything))[0],
        )
        running = made["running"]
        expected = [
            dataclasses.replace(t, status=Status.INTERRUPTED) if t.id == running.id else t
            for t in old_rows
        ]
        assert new_rows == expected
        assert await new.list_audit(limit=100) == await old.list_audit(limit=100)
        assert await new.list_tokens() == await old.list_tokens()
        assert await new.list_tapis_tasks(10, 0) == await old.list_tapis_tasks(10, 0)
        # New ids come after every id SQLite gave, the purged one included.
        fresh = await new.insert_transfer(make(999))
        assert fresh.id == made["purged"].id + 1
        await new.audit("admin", "after", "copy")
        assert (await new.list_audit(limit=1))[0]["id"] == 26

    # A second copy is refused: the target has rows. Nothing changes.
    again = await asyncio.to_thread(db_copy, demo_config.path, pg_database, subprocess_env)
    assert again.returncode == 1
    assert "is not empty (table transfers has rows)" in again.stderr
    assert password not in again.stderr
    count = await pg_raw(pg_database, "SELECT count(*) FROM transfers")
    assert count[0][0] == 304


async def test_db_copy_refuses_while_the_gateway_runs(
    demo_config: DemoConfig, pg_database: str, subprocess_env: dict[str, str]
) -> None:
    loaded = load_config(demo_config.path)
    ensure_folders(loaded)
    async with SqliteStore(loaded.paths.database) as store:
        await store.insert_transfer(make(1))
    lock = DaemonLock(loaded.paths.lock_file)
    lock.acquire()
    try:
        result = await asyncio.to_thread(db_copy, demo_config.path, pg_database, subprocess_env)
    finally:
        lock.release()
    assert result.returncode == 1
    assert "stop the gateway first" in result.stderr
    tables = await pg_raw(pg_database, "SELECT to_regclass('transfers')")
    assert tables[0][0] is None, "nothing was written"


async def test_db_copy_refuses_another_schema_version(tmp_path: Path, pg_database: str) -> None:
    from gatewayd.store.copy import CopyError, copy_sqlite_to_postgresql
    from gatewayd.store.migrate import apply_migrations, load_migrations

    old, new = tmp_path / "old.db", tmp_path / "new.db"
    async with aiosqlite.connect(old) as conn:
        await apply_migrations(conn, load_migrations()[:-1])
    async with aiosqlite.connect(new) as conn:
        await conn.execute("PRAGMA user_version = 99")
    target = PgTarget(dsn=pg_database)
    with pytest.raises(CopyError, match="start this gatewayd on it once"):
        await copy_sqlite_to_postgresql(old, target)
    with pytest.raises(CopyError, match="written by a newer gatewayd"):
        await copy_sqlite_to_postgresql(new, target)
    with pytest.raises(CopyError, match="no such database file"):
        await copy_sqlite_to_postgresql(tmp_path / "missing.db", target)
    tables = await pg_raw(pg_database, "SELECT to_regclass('transfers')")
    assert tables[0][0] is None, "nothing was written"
