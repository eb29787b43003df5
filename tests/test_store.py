"""The store on both backends (SQLite files, a private PostgreSQL server): round trips,
batching, queries; and SQLite's own: its schema, pragmas and a real kill -9 in the middle
of writing (PostgreSQL's own are in test_store_pg.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gatewayd.model import ErrorCode, Status, Step, TaskSpec, Transfer
from gatewayd.store import make_store
from gatewayd.store.base import SORT_FIELDS, Store, TransferFilter
from gatewayd.store.codec import COLUMNS, encode_row
from gatewayd.store.migrate import (
    Migration,
    SchemaError,
    SchemaTooNewError,
    apply_migrations,
    load_migrations,
)
from gatewayd.store.postgres import PostgresStore
from gatewayd.store.sqlite import SqliteStore
from tests.store_backends import Backend

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CHILD = Path(__file__).with_name("store_crash_child.py")


def make(**kw: Any) -> Transfer:
    base: dict[str, Any] = {
        "rule": "r1",
        "is_server": False,
        "is_send": True,
        "requester": "gw",
        "requested": "partner-a",
        "protocol": "sftp",
        "partner": "partner-a",
    }
    base.update(kw)
    return Transfer(**base)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    """An open store of either backend (parametrized: every test using it runs twice)."""
    async with backend.make() as s:
        yield s


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "db" / "gatewayd.db") as s:
        yield s


async def raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """A query through a connection of the test's own, outside the store."""
    async with aiosqlite.connect(path) as conn:
        return list(await conn.execute_fetchall(sql, params))


# -- migrations --------------------------------------------------------------------------


async def test_migrations_from_empty(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "folder" / "g.db"
    async with SqliteStore(path) as store:
        assert await store.schema_version() == len(load_migrations())
    assert [m.filename for m in load_migrations()] == [
        "0001_transfers.sql",
        "0002_audit.sql",
        "0003_tokens.sql",
        "0004_tapis_tasks.sql",
        "0005_token_manage.sql",
        "0006_owner.sql",
        "0007_cluster.sql",
        "0008_watchers.sql",
        "0009_schedules.sql",
        "0010_automation_state.sql",
        "0011_console_sessions.sql",
    ]
    objects = {
        (kind, name)
        for kind, name in await raw(path, "SELECT type, name FROM sqlite_master")
        if not name.startswith("sqlite_")
    }
    assert {
        ("table", "transfers"),
        ("table", "audit"),
        ("table", "api_tokens"),
        ("table", "tapis_tasks"),
        ("table", "console_sessions"),
    } <= objects
    indexes = {name for kind, name in objects if kind == "index"}
    assert indexes == {
        "transfers_status",
        "transfers_rule",
        "transfers_partner",
        "transfers_start",
        "transfers_follow_id",
        "transfers_parent_id",
        "transfers_upload",
        "transfers_stop",
        "audit_at",
        "api_tokens_user",
        "node_commands_pending",
        "watched_files_live",
        "console_sessions_seen",
        "console_sessions_opened",
    }
    columns = [row[1] for row in await raw(path, "PRAGMA table_info(transfers)")]
    assert sorted(columns) == sorted(f.name for f in dataclasses.fields(Transfer))
    assert (await raw(path, "PRAGMA user_version"))[0][0] == len(load_migrations())
    assert (await raw(path, "PRAGMA journal_mode"))[0][0] == "wal"
    assert await raw(path, "PRAGMA foreign_key_list(transfers)")


async def test_upgrade_from_version_1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    old = make(id=7, remote_id="r7", follow_id="f7", created=T0, updated=T0, progress=42)
    async with aiosqlite.connect(path) as conn:
        assert await apply_migrations(conn, load_migrations()[:1]) == 1
        # The columns of version 1: every field but the owner (migration 6) and the
        # takeover (migration 7).
        assert COLUMNS[-3:] == ("owner", "taken_over_by", "taken_over_at")
        await conn.execute(
            f"INSERT INTO transfers ({', '.join(COLUMNS[:-3])}) VALUES "
            f"({', '.join('?' for _ in COLUMNS[:-3])})",
            encode_row(old)[:-3],
        )
        await conn.commit()
    assert (await raw(path, "PRAGMA user_version"))[0][0] == 1
    assert not await raw(path, "SELECT name FROM sqlite_master WHERE name = 'audit'")

    async with SqliteStore(path) as store:
        assert await store.schema_version() == len(load_migrations())
        assert await store.get_transfer(7) == old
        await store.audit("admin", "upgrade", "db", {})
        assert len(await store.list_audit()) == 1
        # Ids continue after the rows already there.
        assert (await store.insert_transfer(make())).id == 8


async def test_database_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA user_version = 99")
    before = set(threading.enumerate())
    store = SqliteStore(path)
    with pytest.raises(SchemaTooNewError, match=r"schema version 99.*newer gatewayd"):
        await store.open()
    assert (await raw(path, "PRAGMA user_version"))[0][0] == 99
    assert not await raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    # The refused open closed its connection: no aiosqlite worker thread stays behind.
    workers = [
        t for t in set(threading.enumerate()) - before if "_connection_worker_thread" in t.name
    ]
    for worker in workers:
        await asyncio.to_thread(worker.join, 5)
    assert not [t for t in workers if t.is_alive()], "a refused open leaked a connection"


async def test_failed_migration_leaves_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    bad = Migration(2, "0002_bad.sql", "CREATE TABLE half (a);\nSELECT * FROM no_such_table;")
    async with aiosqlite.connect(path) as conn:
        with pytest.raises(SchemaError, match=r"0002_bad\.sql failed.*stays at version 1"):
            await apply_migrations(conn, [*load_migrations()[:1], bad])
    assert (await raw(path, "PRAGMA user_version"))[0][0] == 1
    assert not await raw(path, "SELECT name FROM sqlite_master WHERE name = 'half'")


async def test_make_store_uses_config(tmp_path: Path) -> None:
    from gatewayd.config.schema import DatabaseConfig

    store = make_store(DatabaseConfig(synchronous="FULL", busy_timeout_ms=1234), tmp_path / "g.db")
    async with store:
        assert isinstance(store, SqliteStore)
        conn = store._write_conn
        assert conn is not None
        assert list(await conn.execute_fetchall("PRAGMA synchronous")) == [(2,)]  # FULL
        assert list(await conn.execute_fetchall("PRAGMA busy_timeout")) == [(1234,)]
        assert list(await conn.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "x.db", synchronous="OFF")


# -- round trip --------------------------------------------------------------------------


async def test_round_trip_of_every_field(store: Store, backend: Backend) -> None:
    parent = await store.insert_transfer(make())
    cet = timezone(timedelta(hours=1))
    full = make(
        rule="règle-ü",
        is_server=True,
        is_send=False,
        requester="compte",
        requested="gw",
        protocol="http",
        remote_id="remote-1",
        follow_id="follow-1",
        parent_id=parent.id,
        account="acct",
        partner=None,
        src_filename="naïve 文件 📦.csv",
        dest_filename="ファイル.csv",
        local_filepath="/data/in/ファイル.csv",
        remote_filepath="/out/naïve 文件 📦.csv",
        tmp_filepath="/data/tmp/x.part",
        filesize=2**40,
        start=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=cet),
        stop=datetime(2024, 1, 2, 4, 0, tzinfo=UTC),
        status=Status.ERROR,
        step=Step.POST_TASKS,
        progress=2**33,
        task_number=3,
        error_code=ErrorCode.TeExternalOperation,
        error_msg="exit 2: «échec»\nline 2",
        error_step=Step.POST_TASKS,
        transfer_info={"k": "v", "n": 1, "nested": {"a": [1, 2.5, None, True]}, "é": "ü"},
        remaining_attempts=4,
        next_attempt=datetime(2024, 1, 3, tzinfo=UTC),
        next_retry_delay=30,
        retry_increment_factor=1.5,
        pre_tasks=[TaskSpec("COPY", {"path": "/a"}), TaskSpec("EXEC", {"path": "x", "delay": 5})],
        post_tasks=[TaskSpec("DELETE")],
        error_tasks=[TaskSpec("EMAIL", {"to": ["ops@example.org"]})],
        sha256="ab" * 32,
    )
    await store.insert_transfer(full)
    empty = await store.insert_transfer(make(partner=None, account=None))

    for sent in (full, empty):
        assert sent.id is not None
        got = await store.get_transfer(sent.id)
        assert got == sent
        assert got is not None
        for name in ("start", "stop", "next_attempt", "created", "updated"):
            value = getattr(got, name)
            assert value is None or value.tzinfo == UTC, name
    got = await store.get_transfer(full.id or 0)
    assert got is not None and got.start is not None
    assert got.start.hour == 2 and got.start == full.start  # same instant, given in UTC
    assert await store.get_transfer(999) is None

    # The stored text is the fixed, sortable UTC format.
    texts = await backend.raw("SELECT start, created FROM transfers WHERE id = ?", full.id)
    assert texts[0][0] == "2024-01-02T02:04:05.000006Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", texts[0][1])


async def test_insert_sets_ids_and_times(store: Store) -> None:
    before = datetime.now(UTC)
    a = await store.insert_transfer(make())
    b = await store.insert_transfer(make(remote_id="given", follow_id="chain"))
    assert (a.id, b.id) == (1, 2)
    assert re.fullmatch(r"[0-9a-f]{32}", a.remote_id) and re.fullmatch(r"[0-9a-f]{32}", a.follow_id)
    assert a.remote_id != a.follow_id
    assert (b.remote_id, b.follow_id) == ("given", "chain")
    assert a.created is not None and before <= a.created == a.updated
    with pytest.raises(ValueError, match="already inserted"):
        await store.insert_transfer(a)
    with pytest.raises(ValueError, match="never inserted"):
        await store.save_transfer(make())

    created = a.created
    a.progress = 10
    await store.save_transfer(a)
    got = await store.get_transfer(1)
    assert got is not None and got.progress == 10
    assert got.created == created and got.updated is not None and got.updated > created


async def test_sqlite_refuses_a_save_of_a_row_it_did_not_insert(
    sqlite_store: SqliteStore,
) -> None:
    with pytest.raises(ValueError, match="not inserted by this store"):
        await sqlite_store.save_transfer(make(id=50))


async def test_ids_are_not_reused_after_reopen(backend: Backend) -> None:
    async with backend.make() as store:
        for _ in range(3):
            await store.insert_transfer(make())
    # A purge (not part of the interface yet) must not make ids come back.
    await backend.raw("DELETE FROM transfers WHERE id = 3")
    async with backend.make() as store:
        assert (await store.insert_transfer(make())).id == 4


# A process that gives a transfer its id through insert_soon and dies (kill -9's
# effect) before the row's commit: only its output knew the id.
_DIES_BEFORE_THE_COMMIT = """
import asyncio, os, sys
from datetime import UTC, datetime
from gatewayd.model import Transfer
from gatewayd.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(sys.argv[1])
    await store.open()
    t = Transfer(rule="r1", is_server=True, is_send=False, requester="alice",
                 requested="sftp", protocol="sftp", account="alice",
                 start=datetime.now(UTC))
    await store.insert_soon(t)
    print(t.id, flush=True)
    os._exit(0)

asyncio.run(main())
"""


async def test_an_id_given_before_its_commit_is_never_given_again(tmp_path: Path) -> None:
    """insert_soon gives ids ahead of their rows' commits (a partner's open is answered
    before it): a crash before the commit leaves no row, and the next start must not
    give the same id to another transfer. A clean close leaves no gap."""
    path = tmp_path / "gatewayd.db"
    async with SqliteStore(path) as store:
        first = make()
        await (await store.insert_soon(first))
    assert first.id == 1
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DIES_BEFORE_THE_COMMIT, str(path),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    out, _ = await child.communicate()
    lost = int(out)
    assert lost == 2, "the id the dead process gave"
    assert [r[0] for r in await raw(path, "SELECT id FROM transfers")] == [1], "no row of it"
    async with SqliteStore(path) as store:
        after_crash = make()
        await (await store.insert_soon(after_crash))
        assert after_crash.id is not None and after_crash.id > lost, "never the lost id again"
        next_one = make()
        await (await store.insert_soon(next_one))
    async with SqliteStore(path) as store:
        after_clean_stop = await store.insert_transfer(make())
    assert after_clean_stop.id == next_one.id + 1, "a clean close gives the block back"


async def test_save_writes_a_snapshot(store: Store) -> None:
    t = await store.insert_transfer(make())
    t.progress = 100
    t.transfer_info["k"] = "saved"

    async def change_after_save() -> None:
        t.progress = 200
        t.transfer_info["k"] = "not saved"

    # gather steps the save first (it snapshots and queues), then the change.
    await asyncio.gather(store.save_transfer(t), change_after_save())
    got = await store.get_transfer(t.id or 0)
    assert got is not None
    assert (got.progress, got.transfer_info) == (100, {"k": "saved"})


async def test_bad_value_fails_its_caller_only(store: Store) -> None:
    good = await store.insert_transfer(make())
    bad = await store.insert_transfer(make())
    good.progress = 5
    bad.next_attempt = datetime(2024, 1, 1)  # naive
    results = await asyncio.gather(
        store.save_transfer(good), store.save_transfer(bad), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], ValueError) and "naive" in str(results[1])
    bad.next_attempt = None
    bad.src_filename = "bad\udcff.txt"  # a lone surrogate: not storable text
    with pytest.raises(ValueError, match="src_filename"):
        await store.save_transfer(bad)
    bad.src_filename = "ok"
    bad.transfer_info = {"x": object()}
    with pytest.raises(TypeError):
        await store.save_transfer(bad)
    with pytest.raises(ValueError, match="naive"):
        await store.insert_transfer(make(start=datetime(2024, 1, 1)))
    got = await store.get_transfer(good.id or 0)
    assert got is not None and got.progress == 5
    # A refused insert burns no id.
    assert (await store.insert_transfer(make())).id == 3


# -- the batching writer -----------------------------------------------------------------


async def test_concurrent_saves_are_batched_and_latest_wins(store: Store) -> None:
    assert isinstance(store, SqliteStore | PostgresStore)
    start = store.commit_count
    rows = await asyncio.gather(
        *(store.insert_transfer(make(src_filename=f"f{i}")) for i in range(500))
    )
    assert sorted(r.id for r in rows) == list(range(1, 501))
    assert store.commit_count - start <= 2, "500 gathered inserts should share a commit"

    rounds = 4
    start = store.commit_count

    async def worker(mine: list[Transfer]) -> int:
        saves = 0
        for r in range(1, rounds + 1):
            for t in mine:
                t.progress = r * 1000 + (t.id or 0)
                t.step = Step.DATA if r < rounds else Step.FINALIZATION
                await store.save_transfer(t)
                saves += 1
        return saves

    saves = sum(await asyncio.gather(*(worker(rows[i::50]) for i in range(50))))
    commits = store.commit_count - start
    assert saves == 2000
    assert commits <= saves // 10, f"{commits} commits for {saves} saves: not batched"

    got, total = await store.list_transfers(TransferFilter(limit=1000))
    assert total == 500
    assert all(t.progress == rounds * 1000 + (t.id or 0) for t in got)
    assert all(t.step == Step.FINALIZATION for t in got)

    # Several saves of the same row queued together coalesce, and the newest state wins.
    start = store.commit_count
    saves_of_same_rows = []
    for t in rows:
        for value in (1, 2, 3):
            t.progress = value
            saves_of_same_rows.append(store.save_transfer(t))
    await asyncio.gather(*saves_of_same_rows)
    assert store.commit_count - start == 1
    got, _ = await store.list_transfers(TransferFilter(limit=1000))
    assert {t.progress for t in got} == {3}


async def test_failing_sqlite_batch_fails_every_waiter(sqlite_store: SqliteStore) -> None:
    # SQLite's writer commits one batch or nothing (PostgreSQL's writes a failed batch
    # again entry by entry: see test_store_pg.py).
    store = sqlite_store
    a = await store.insert_transfer(make(progress=1))
    b = await store.insert_transfer(make())
    a.progress = 99
    b.progress = -1  # the CHECK constraint fails the commit
    c = make(src_filename="c")
    start = store.commit_count
    results = await asyncio.gather(
        store.save_transfer(a),
        store.save_transfer(b),
        store.insert_transfer(c),
        store.audit("admin", "x", "y", {}),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert store.commit_count == start
    assert c.id is None, "a failed insert must give its id back"
    got = await store.get_transfer(a.id or 0)
    assert got is not None and got.progress == 1
    assert await store.get_transfer(3) is None
    assert await store.list_audit() == []

    # The writer survives and the next batch goes through.
    b.progress = 5
    await asyncio.gather(store.save_transfer(a), store.save_transfer(b))
    assert store.commit_count == start + 1
    got = await store.get_transfer(b.id or 0)
    assert got is not None and got.progress == 5


async def test_a_save_never_rewrites_what_insertion_fixed(store: Store) -> None:
    """Rule, chains, parties and parent are the transfer's from its insertion on: a save
    writes the columns that change, and only those."""
    t = await store.insert_transfer(make(progress=1))
    t.rule, t.partner, t.post_tasks = "other", "mallory", [TaskSpec("DELETE", {})]
    t.progress, t.dest_filename = 7, "renamed.dat"
    await store.save_transfer(t)
    got = await store.get_transfer(t.id or 0)
    assert got is not None
    assert (got.progress, got.dest_filename) == (7, "renamed.dat")
    assert (got.rule, got.partner, got.post_tasks) == ("r1", "partner-a", [])


async def test_close_flushes_pending_writes(backend: Backend) -> None:
    store = backend.make()
    await store.open()
    t = await store.insert_transfer(make())
    t.progress = 77
    pending = [asyncio.ensure_future(store.save_transfer(t)) for _ in range(3)]
    pending.append(asyncio.ensure_future(store.insert_transfer(make(src_filename="late"))))
    await asyncio.sleep(0)  # let them queue: one step, not a timing assumption
    await store.close()
    assert all(p.done() and p.exception() is None for p in pending)
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="not open"):
        await store.save_transfer(t)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_transfer(1)
    async with backend.make() as again:
        got = await again.get_transfer(t.id or 0)
        assert got is not None and got.progress == 77
        late, total = await again.list_transfers(TransferFilter())
        assert total == 2 and late[1].src_filename == "late"


async def test_cancelled_caller_does_not_cancel_the_batch(store: Store) -> None:
    a = await store.insert_transfer(make())
    b = await store.insert_transfer(make())
    a.progress, b.progress = 10, 20
    save_a = asyncio.ensure_future(store.save_transfer(a))
    save_b = asyncio.ensure_future(store.save_transfer(b))
    await asyncio.sleep(0)  # both queued in the same batch
    save_a.cancel()
    await save_b
    with pytest.raises(asyncio.CancelledError):
        await save_a
    got_a, got_b = await store.get_transfer(a.id or 0), await store.get_transfer(b.id or 0)
    assert got_a is not None and got_a.progress == 10
    assert got_b is not None and got_b.progress == 20


# -- queries -----------------------------------------------------------------------------


async def _dataset(store: Store) -> list[Transfer]:
    rows = [
        make(rule="a", status=Status.DONE, start=T0, filesize=10, requester="x"),
        make(rule="b", status=Status.ERROR, start=T0 + timedelta(1), filesize=5, requester="y"),
        make(rule="a", status=Status.RUNNING, start=T0 + timedelta(2), filesize=5),
        make(rule="a", status=Status.PLANNED, start=None, partner="partner-b"),
        make(
            rule="b",
            is_server=True,
            partner=None,
            account="acct-1",
            status=Status.RUNNING,
            start=T0 + timedelta(1),
            stop=T0 + timedelta(3),
        ),
        make(
            rule="c",
            is_server=True,
            partner=None,
            account="acct-2",
            status=Status.DONE,
            start=T0 + timedelta(5),
            stop=T0 + timedelta(6),
            requested="zed",
        ),
        make(rule="a", status=Status.CANCELLED, start=T0 + timedelta(1), follow_id="chain-1"),
    ]
    for t in rows:
        await store.insert_transfer(t)
    child = make(rule="c", follow_id="chain-1", parent_id=rows[-1].id, start=T0)
    await store.insert_transfer(child)
    rows.append(child)
    return rows


def _sort_key(field: str) -> Any:
    def key(t: Transfer) -> tuple[Any, ...]:
        value = getattr(t, field)
        return (value is not None, value if value is not None else 0, t.id)

    return key


async def test_list_filters(store: Store) -> None:
    rows = await _dataset(store)

    async def ids(**kw: Any) -> list[int]:
        page, total = await store.list_transfers(TransferFilter(limit=100, **kw))
        assert total == len(page)
        return [t.id or 0 for t in page]

    def expect(pred: Any) -> list[int]:
        return [t.id or 0 for t in rows if pred(t)]

    assert await ids() == expect(lambda t: True)
    assert await ids(statuses=(Status.RUNNING, Status.DONE)) == expect(
        lambda t: t.status in (Status.RUNNING, Status.DONE)
    )
    assert await ids(rule="a") == expect(lambda t: t.rule == "a")
    assert await ids(partner="partner-b") == expect(lambda t: t.partner == "partner-b")
    assert await ids(account="acct-1") == expect(lambda t: t.account == "acct-1")
    assert await ids(is_server=True) == expect(lambda t: t.is_server)
    assert await ids(is_server=False) == expect(lambda t: not t.is_server)
    after = T0 + timedelta(1)
    assert await ids(start_after=after) == expect(
        lambda t: t.start is not None and t.start >= after
    )
    assert await ids(follow_id="chain-1") == expect(lambda t: t.follow_id == "chain-1")
    assert await ids(parent_id=rows[6].id) == [rows[7].id]
    assert await ids(rule="a", statuses=(Status.DONE,), is_server=False) == [rows[0].id]
    assert await ids(rule="nope") == []
    # The console's filters.
    assert await ids(is_send=True) == expect(lambda t: t.is_send)
    assert await ids(is_send=False) == expect(lambda t: not t.is_send)
    protocol = rows[0].protocol
    assert await ids(protocol=protocol) == expect(lambda t: t.protocol == protocol)
    assert await ids(protocol="no-such-protocol") == []


async def test_list_filename_pattern(store: Store) -> None:
    names = ["Report_1.csv", "report-2.CSV", "data%1.bin", "data_x.bin", "a\\b.txt"]
    made = [make(src_filename=n, dest_filename=f"out-{i}") for i, n in enumerate(names)]
    for t in made:
        await store.insert_transfer(t)

    async def ids(pattern: str) -> list[int]:
        page, _ = await store.list_transfers(TransferFilter(limit=100, filename_pattern=pattern))
        return [t.id or 0 for t in page]

    assert await ids("report*.csv") == [made[0].id, made[1].id]  # case-insensitive
    assert await ids("report_?.csv") == [made[0].id]  # `_` is a character
    assert await ids("data%?.bin") == [made[2].id]  # `%` too
    assert await ids("data?x.bin") == [made[3].id]
    assert await ids("a\\b.txt") == [made[4].id]
    assert await ids("out-3") == [made[3].id]  # the other side's name
    assert await ids("*") == [t.id for t in made]
    assert await ids("nothing*") == []


@pytest.mark.parametrize("field", SORT_FIELDS)
async def test_list_sort_every_field(store: Store, field: str) -> None:
    rows = await _dataset(store)
    for descending in (False, True):
        page, _ = await store.list_transfers(
            TransferFilter(limit=100, sort=field, descending=descending)
        )
        expected = sorted(rows, key=_sort_key(field), reverse=descending)
        assert [t.id for t in page] == [t.id for t in expected], (field, descending)
    with pytest.raises(ValueError, match="cannot sort"):
        await store.list_transfers(TransferFilter(sort="error_msg; DROP TABLE transfers"))


async def test_list_pagination_and_total(store: Store) -> None:
    rows = await _dataset(store)
    by_start = sorted(rows, key=_sort_key("start"), reverse=True)
    seen: list[int | None] = []
    for offset in range(0, len(rows), 3):
        page, total = await store.list_transfers(
            TransferFilter(limit=3, offset=offset, sort="start", descending=True)
        )
        assert total == len(rows)
        assert len(page) == min(3, len(rows) - offset)
        seen.extend(t.id for t in page)
    assert seen == [t.id for t in by_start]
    page, total = await store.list_transfers(TransferFilter(rule="a", limit=2, offset=50))
    assert page == [] and total == 4


async def test_find_unfinished_upload(store: Store) -> None:
    def upload(**kw: Any) -> Transfer:
        base: dict[str, Any] = {
            "is_server": True,
            "is_send": False,
            "partner": None,
            "account": "acct",
            "rule": "in",
            "dest_filename": "data.csv",
        }
        base.update(kw)
        return make(**base)

    assert await store.find_unfinished_upload("acct", "in", "data.csv") is None
    await store.insert_transfer(upload(status=Status.ERROR))
    older_id = (await store.insert_transfer(upload(status=Status.ERROR))).id
    await store.insert_transfer(upload(status=Status.DONE))
    await store.insert_transfer(upload(status=Status.CANCELLED))
    await store.insert_transfer(upload(account="other", status=Status.RUNNING))
    await store.insert_transfer(upload(rule="in2", status=Status.RUNNING))
    await store.insert_transfer(upload(dest_filename="data2.csv", status=Status.RUNNING))
    await store.insert_transfer(upload(is_send=True, status=Status.RUNNING))
    await store.insert_transfer(upload(is_server=False, status=Status.RUNNING))
    found = await store.find_unfinished_upload("acct", "in", "data.csv")
    assert found is not None and found.id == older_id

    latest = await store.insert_transfer(upload(status=Status.INTERRUPTED, progress=1234))
    found = await store.find_unfinished_upload("acct", "in", "data.csv")
    assert found is not None and (found.id, found.progress) == (latest.id, 1234)


async def test_unfinished_uploads_are_found_across_renames_ends_and_restarts(
    backend: Backend,
) -> None:
    """SQLite answers most of these without a query (its in-memory index of names
    that may have one): the answers must be the database's."""

    def upload(**kw: Any) -> Transfer:
        base: dict[str, Any] = {"is_server": True, "is_send": False, "partner": None}
        base.update(account="acct", rule="in", dest_filename="a.part", status=Status.RUNNING)
        base.update(kw)
        return make(**base)

    first = backend.make()
    await first.open()
    try:
        t = await first.insert_transfer(upload())
        t.dest_filename = "a.csv"  # the partner renamed its temporary name
        await first.save_transfer(t)
        found = await first.find_unfinished_upload("acct", "in", "a.csv")
        assert found is not None and found.id == t.id
        t.status = Status.DONE
        await first.save_transfer(t)
        assert await first.find_unfinished_upload("acct", "in", "a.csv") is None
        kept = await first.insert_transfer(upload(dest_filename="b.csv", status=Status.ERROR))
    finally:
        await first.close()
    again = backend.make()
    await again.open()
    try:
        found = await again.find_unfinished_upload("acct", "in", "b.csv")
        assert found is not None and found.id == kept.id, "rows of an earlier run count"
        assert await again.find_unfinished_upload("acct", "in", "a.csv") is None
    finally:
        await again.close()


async def test_interrupt_running(store: Store) -> None:
    rows = await _dataset(store)
    running = [t for t in rows if t.status == Status.RUNNING]
    assert len(running) == 2
    assert {t.owner for t in running} == {"node-a"}, "inserted RUNNING: owned by the node"
    changed = await store.interrupt_running()
    assert [t.id for t in changed] == [t.id for t in running]
    assert all(t.status == Status.INTERRUPTED for t in changed)
    for before in rows:
        after = await store.get_transfer(before.id or 0)
        assert after is not None
        if before in running:
            assert after.status == Status.INTERRUPTED
            assert after.updated is not None and before.updated is not None
            assert after.updated > before.updated
            assert dataclasses.replace(after, status=before.status, updated=before.updated) == (
                before
            )
        else:
            assert after == before
    assert await store.interrupt_running() == []


async def test_due_transfers_and_next_due_time(store: Store) -> None:
    now = datetime.now(UTC)
    assert await store.next_due_time() is None
    assert await store.due_transfers(now, 10) == []

    def planned(**kw: Any) -> Transfer:
        return make(status=Status.PLANNED, **kw)

    due_old = await store.insert_transfer(planned(start=now - timedelta(hours=2)))
    due_retry = await store.insert_transfer(
        planned(start=now - timedelta(hours=1), next_attempt=now - timedelta(minutes=1))
    )
    due_exactly_now = await store.insert_transfer(planned(start=now))
    due_no_start = await store.insert_transfer(planned(start=None))  # due from creation
    await store.insert_transfer(planned(start=now + timedelta(minutes=5)))
    await store.insert_transfer(
        planned(start=now - timedelta(hours=3), next_attempt=now + timedelta(minutes=2))
    )
    await store.insert_transfer(  # a pre-registration waits for its partner, not the clock
        make(
            status=Status.AVAILABLE,
            is_server=True,
            partner=None,
            account="a",
            start=now - timedelta(hours=5),
        )
    )
    await store.insert_transfer(make(status=Status.RUNNING, start=now - timedelta(hours=5)))
    await store.insert_transfer(make(status=Status.PAUSED, start=now - timedelta(hours=5)))

    due = await store.due_transfers(now, 10)
    assert [t.id for t in due] == [due_old.id, due_retry.id, due_exactly_now.id]
    assert due_no_start.created is not None
    due_later = await store.due_transfers(due_no_start.created, 10)
    assert [t.id for t in due_later] == [
        due_old.id,
        due_retry.id,
        due_exactly_now.id,
        due_no_start.id,
    ]
    assert [t.id for t in await store.due_transfers(now, 2)] == [due_old.id, due_retry.id]
    assert await store.next_due_time() == due_old.start

    # Once the due ones have started, the next is the retry in 2 minutes, then the start
    # in 5 minutes.
    for t in (due_old, due_retry, due_exactly_now, due_no_start):
        t.status = Status.RUNNING
        await store.save_transfer(t)
    assert await store.next_due_time() == now + timedelta(minutes=2)
    assert await store.due_transfers(now + timedelta(minutes=2), 10) != []
    assert [t.start for t in await store.due_transfers(now + timedelta(minutes=5), 10)] == [
        now - timedelta(hours=3),
        now + timedelta(minutes=5),
    ]


async def test_audit(store: Store) -> None:
    assert await store.list_audit() == []
    before = datetime.now(UTC)
    await store.audit("admin", "create", "rule/in", {"path": Path("/x"), "n": 1})
    await asyncio.gather(*(store.audit(f"user{i}", "update", f"account/{i}") for i in range(5)))
    entries = await store.list_audit()
    assert len(entries) == 6
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    first = entries[-1]
    assert first["who"] == "admin" and first["action"] == "create"
    assert first["target"] == "rule/in"
    assert first["details"] == {"path": "/x", "n": 1}
    assert first["at"].tzinfo == UTC and first["at"] >= before
    assert entries[0]["details"] == {}
    assert [e["id"] for e in await store.list_audit(limit=2, offset=1)] == [
        e["id"] for e in entries[1:3]
    ]


# -- kill -9 -----------------------------------------------------------------------------


CHILD_ACCOUNTS = 40


async def _run_child_until_killed(path: Path, seed: int, lines_wanted: int, jitter: float) -> int:
    """Run the child until it has reported `lines_wanted` commits, kill -9 it `jitter`
    seconds later, and return the last batch it reported committed.

    Without the jitter the kill would always land just after a print, at the same point
    of the child's loop; the jitter spreads it over the loop (the outcome checked does
    not depend on where it lands, only how much of the loop the test exercises).
    """
    env = {**os.environ, "PYTHONPATH": str(CHILD.parent.parent)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(path),
        str(seed),
        str(CHILD_ACCOUNTS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    last = -1
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < lines_wanted:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                pytest.fail(f"the child reported only {seen} commits within 60 s")
            if not line:
                err = (await proc.stderr.read()).decode(errors="replace")
                pytest.fail(f"the child exited early ({await proc.wait()}):\n{err}")
            word, number = line.decode().split()
            if word == "committed":
                last = int(number)
                seen += 1
        await asyncio.sleep(jitter)
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Lines written before the kill are committed batches too.
    for line in (await proc.stdout.read()).split(b"\n"):
        if line.startswith(b"committed "):
            last = int(line.split()[1])
    return last


async def _check_invariants(path: Path, reported: int) -> int:
    assert (await raw(path, "PRAGMA integrity_check")) == [("ok",)]
    assert await raw(path, "PRAGMA foreign_key_check") == []
    async with SqliteStore(path) as store:
        accounts, n = await store.list_transfers(TransferFilter(rule="acct", limit=-1))
        assert n == CHILD_ACCOUNTS
        assert sum(t.progress for t in accounts) == 1000 * CHILD_ACCOUNTS, "half a batch"
        stamps = {t.transfer_info["batch"] for t in accounts}
        assert len(stamps) == 1, f"rows from different batches: {stamps}"
        batch = stamps.pop()
        # The child may have committed one more batch than it managed to print.
        assert reported <= batch <= reported + 1, (reported, batch)
        logs, _ = await store.list_transfers(TransferFilter(rule="log", limit=-1))
        got = sorted((t.transfer_info["batch"], t.transfer_info["half"]) for t in logs)
        assert got == [(b, h) for b in range(1, batch + 1) for h in (0, 1)]
    return batch


@pytest.mark.timeout(120)
async def test_kill_9_keeps_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    # Several rounds on the same file: each continues a database recovered after a kill.
    batch = 0
    for seed, jitter in enumerate((0.0, 0.003, 0.007, 0.012, 0.02)):
        reported = await _run_child_until_killed(path, seed, lines_wanted=10, jitter=jitter)
        assert reported >= batch + 10
        batch = await _check_invariants(path, reported)
