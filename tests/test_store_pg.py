"""What is PostgreSQL's own in the store, against the session's private server: its
schema and migrations (version table, advisory lock, a newer schema refused), several
nodes claiming at once, the writer's failures, TLS to the server and the settings."""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gatewayd.config.schema import DatabaseConfig
from gatewayd.model import Status, Transfer
from gatewayd.store import make_store
from gatewayd.store.codec import COLUMNS, encode_row
from gatewayd.store.dialect import POSTGRESQL
from gatewayd.store.migrate import (
    Migration,
    SchemaError,
    SchemaTooNewError,
    load_migrations,
    pg_apply_migrations,
)
from gatewayd.store.postgres import PgTarget, PostgresStore
from tests.pg_support import PgServer, pg_raw

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
LATEST = len(load_migrations())

pytestmark = pytest.mark.timeout(120)


def make(**kw: Any) -> Transfer:
    base: dict[str, Any] = {
        "rule": "out",
        "is_server": False,
        "is_send": True,
        "requester": "gw",
        "requested": "p",
        "protocol": "sftp",
        "partner": "p",
        "start": T0,
    }
    base.update(kw)
    return Transfer(**base)


def store(dsn: str, node: str = "node-a", **kw: Any) -> PostgresStore:
    return PostgresStore(PgTarget(dsn=dsn, **kw), node=node)


# -- schema and migrations ---------------------------------------------------------------


async def test_migrations_from_empty(pg_database: str) -> None:
    async with store(pg_database) as s:
        assert await s.schema_version() == LATEST
    versions = await pg_raw(pg_database, "SELECT version, filename FROM schema_migrations")
    assert [(r[0], r[1]) for r in versions] == [(m.version, m.filename) for m in load_migrations()]
    tables = {
        r[0]
        for r in await pg_raw(
            pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert tables == {
        "transfers",
        "audit",
        "api_tokens",
        "tapis_tasks",
        "schema_migrations",
        "nodes",
        "node_commands",
        "login_failures",
        "cluster_notices",
        "schedule_runs",
        "schedule_state",
        "poller_files",
        "watched_files",
        "automation_state",
        "poller_seen",
        "console_sessions",
    }
    columns = await pg_raw(
        pg_database,
        "SELECT column_name, data_type, collation_name FROM information_schema.columns "
        "WHERE table_name = 'transfers'",
    )
    assert sorted(r[0] for r in columns) == sorted(COLUMNS)
    kinds = {r[0]: (r[1], r[2]) for r in columns}
    # 64-bit integers as in SQLite, and byte order for text (time order for timestamps).
    assert kinds["filesize"] == ("bigint", None)
    assert kinds["start"] == ("text", "C")
    assert kinds["retry_increment_factor"] == ("double precision", None)
    identity = await pg_raw(
        pg_database,
        "SELECT is_identity FROM information_schema.columns "
        "WHERE table_name = 'transfers' AND column_name = 'id'",
    )
    assert identity[0][0] == "YES"
    indexes = {r[0] for r in await pg_raw(pg_database, "SELECT indexname FROM pg_indexes")} & {
        "transfers_status",
        "transfers_upload",
        "audit_at",
        "api_tokens_user",
    }
    assert len(indexes) == 4


def test_every_migration_translates() -> None:
    for migration in load_migrations():
        sql = re.sub(r"--[^\n]*", "", POSTGRESQL.migration(migration.sql))
        assert "AUTOINCREMENT" not in sql and "STRICT" not in sql
    with pytest.raises(ValueError, match="PRAGMA"):
        POSTGRESQL.migration("PRAGMA foreign_keys = ON;")


async def test_nodes_opening_together_migrate_once(pg_database: str) -> None:
    # Four nodes start at the same moment on an empty database.
    stores = [store(pg_database, node=f"node-{i}") for i in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [await s.schema_version() for s in stores] == [LATEST] * 4
        rows = await pg_raw(pg_database, "SELECT version FROM schema_migrations ORDER BY 1")
        assert [r[0] for r in rows] == list(range(1, LATEST + 1)), "each applied once"
        # And they share it: a row inserted by one is seen by another.
        t = await stores[0].insert_transfer(make())
        assert await stores[3].get_transfer(t.id or 0) == t
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_a_newer_schema_is_refused(pg_database: str) -> None:
    async with store(pg_database):
        pass
    await pg_raw(
        pg_database, "INSERT INTO schema_migrations (version, filename) VALUES (99, 'x.sql')"
    )
    refused = store(pg_database)
    with pytest.raises(SchemaTooNewError, match=r"schema version 99.*newer gatewayd") as info:
        await refused.open()
    assert "127.0.0.1" in str(info.value), "the message names the database"
    await refused.close()
    rows = await pg_raw(pg_database, "SELECT max(version) FROM schema_migrations")
    assert rows[0][0] == 99


async def test_failed_migration_leaves_previous_version(pg_database: str) -> None:
    bad = Migration(
        LATEST + 1, "0099_bad.sql", "CREATE TABLE half (a INTEGER);\nSELECT * FROM no_such;"
    )
    conn = await asyncpg.connect(pg_database)
    try:
        assert await pg_apply_migrations(conn, load_migrations()) == LATEST
        with pytest.raises(SchemaError, match=rf"0099_bad\.sql failed.*stays at version {LATEST}"):
            await pg_apply_migrations(conn, [*load_migrations(), bad])
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == LATEST
        # The lock was released: another migration run goes through at once.
        assert await pg_apply_migrations(conn, load_migrations()) == LATEST
    finally:
        await conn.close()


async def test_upgrade_from_version_1_keeps_rows(pg_database: str) -> None:
    old = make(id=7, remote_id="r7", follow_id="f7", created=T0, updated=T0, progress=42)
    conn = await asyncpg.connect(pg_database)
    try:
        assert await pg_apply_migrations(conn, load_migrations()[:1]) == 1
        columns = COLUMNS[:-3]  # every field but the owner and the takeover (6 and 7)
        await conn.execute(
            POSTGRESQL.sql(
                f"INSERT INTO transfers ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})"
            ),
            *encode_row(old)[:-3],
        )
    finally:
        await conn.close()
    async with store(pg_database) as s:
        assert await s.schema_version() == LATEST
        assert await s.get_transfer(7) == old
        # The rows copied in with their ids: the sequence is moved past them by the
        # copy (gatewayd db copy); here the row came in by hand, so it is moved by hand.
        await pg_raw(pg_database, "SELECT setval(pg_get_serial_sequence('transfers', 'id'), 7)")
        assert (await s.insert_transfer(make())).id == 8


# -- several nodes -----------------------------------------------------------------------

PARTNER_LIMITS = {"p0": 1, "p1": 2, "p2": 3}
DEFAULT_LIMIT = 4
NODE_SLOTS = 6


async def test_two_nodes_claim_each_row_once_within_partner_limits(pg_database: str) -> None:
    nodes = [store(pg_database, node=name) for name in ("node-a", "node-b")]
    await asyncio.gather(*(s.open() for s in nodes))
    try:
        rows = [make(partner=f"p{i % 5}", start=T0 - timedelta(seconds=i % 7)) for i in range(200)]
        await nodes[0].insert_transfers(rows)
        claimed: dict[str, list[int]] = {"node-a": [], "node-b": []}
        violations: list[str] = []
        done = asyncio.Event()

        async def watch() -> None:
            # Every committed state keeps the limits: look at it as often as we can.
            while not done.is_set():
                counts = await pg_raw(
                    pg_database,
                    "SELECT partner, count(*) FROM transfers WHERE status = 'RUNNING' "
                    "GROUP BY partner",
                )
                for partner, n in counts:
                    if n > PARTNER_LIMITS.get(partner, DEFAULT_LIMIT):
                        violations.append(f"{partner}: {n} running")

        async def node(s: PostgresStore, rng: random.Random) -> None:
            running: set[asyncio.Task[None]] = set()

            async def run(t: Transfer) -> None:
                await asyncio.sleep(rng.random() / 200)
                t.status = Status.DONE
                await s.save_transfer(t)

            while True:
                got = await s.claim_due(
                    T0, 8, s.node, NODE_SLOTS - len(running), PARTNER_LIMITS, DEFAULT_LIMIT
                )
                claimed[s.node] += [t.id or 0 for t in got]
                for t in got:
                    assert (t.status, t.owner) == (Status.RUNNING, s.node)
                    task = asyncio.create_task(run(t))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not got and not running and await s.count_due(T0) == 0:
                    return
                if running:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(0.001)  # the other node holds the last rows

        watcher = asyncio.create_task(watch())
        async with asyncio.timeout(90):
            await asyncio.gather(node(nodes[0], random.Random(1)), node(nodes[1], random.Random(2)))
        done.set()
        await watcher
        everything = claimed["node-a"] + claimed["node-b"]
        assert sorted(everything) == sorted(t.id for t in rows), "each row claimed once"
        assert claimed["node-a"] and claimed["node-b"], "both nodes took a share"
        assert violations == []
        owners = await pg_raw(
            pg_database, "SELECT owner, count(*) FROM transfers WHERE status = 'DONE' GROUP BY 1"
        )
        assert dict(owners) == {k: len(v) for k, v in claimed.items()}
    finally:
        await asyncio.gather(*(s.close() for s in nodes))


async def test_a_node_interrupts_only_its_own_running_rows(pg_database: str) -> None:
    a, b = store(pg_database, node="node-a"), store(pg_database, node="node-b")
    await a.open()
    await b.open()
    try:
        mine = await a.insert_transfer(make(status=Status.RUNNING))
        theirs = await b.insert_transfer(make(status=Status.RUNNING))
        nobodys = await a.insert_transfer(make(status=Status.PLANNED))
        await pg_raw(
            pg_database, "UPDATE transfers SET status = 'RUNNING' WHERE id = $1", nobodys.id
        )
        interrupted = await a.interrupt_running()
        assert [t.id for t in interrupted] == [mine.id, nobodys.id]
        got = await b.get_transfer(theirs.id or 0)
        assert got is not None and (got.status, got.owner) == (Status.RUNNING, "node-b")
    finally:
        await a.close()
        await b.close()


# -- the writer --------------------------------------------------------------------------


async def test_a_bad_write_fails_its_caller_only(pg_database: str) -> None:
    async with store(pg_database) as s:
        a = await s.insert_transfer(make())
        b = await s.insert_transfer(make())
        a.progress = 99
        b.progress = -1  # the CHECK constraint fails the commit
        c = make(src_filename="c")
        results = await asyncio.gather(
            s.save_transfer(a),
            s.save_transfer(b),
            s.insert_transfer(c),
            s.audit("admin", "x", "y", {}),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is c and results[3] is None
        assert isinstance(results[1], asyncpg.CheckViolationError)
        got = await s.get_transfer(a.id or 0)
        assert got is not None and got.progress == 99
        got = await s.get_transfer(b.id or 0)
        assert got is not None and got.progress == 0
        assert len(await s.list_audit()) == 1


async def test_text_with_nul_is_stored(pg_database: str) -> None:
    # A partner's error message may carry NUL, which PostgreSQL's text refuses.
    async with store(pg_database) as s:
        t = await s.insert_transfer(make(error_msg="bad\x00byte"))
        got = await s.get_transfer(t.id or 0)
        assert got is not None and got.error_msg == "bad\ufffdbyte"
        await s.audit("x\x00y", "login", "")
        assert (await s.list_audit())[0]["who"] == "x\ufffdy"


# -- settings and TLS --------------------------------------------------------------------


async def _tls_in_use(s: PostgresStore) -> bool:
    pool = s._pool
    assert pool is not None
    return bool(await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))


async def test_make_store_from_the_settings_with_tls(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    dbname = pg_database.rsplit("/", 1)[1].split("?")[0]
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pg_server.ca.cert.read_bytes())
    config = DatabaseConfig(
        backend="postgresql",
        host=pg_server.host,
        port=pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        dbname=dbname,
        pool_size=3,
        sslmode="verify-full",
        ssl_root_cert=Path("ca.pem"),
    )
    assert pg_server.password not in repr(config)
    made = make_store(config, tmp_path / "unused.db", node="node-a", home=tmp_path)
    assert isinstance(made, PostgresStore)
    assert pg_server.password not in repr(made) and pg_server.password not in repr(made.target)
    async with made:
        assert await _tls_in_use(made)
        assert made._pool is not None and made._pool.get_max_size() == 3
        await made.insert_transfer(make())
    # Plain TLS without verification, and none at all.
    async with store(pg_server.dsn(dbname), sslmode="require") as s:
        assert await _tls_in_use(s)
    async with store(pg_server.dsn(dbname), sslmode="disable") as s:
        assert not await _tls_in_use(s)


async def test_a_server_certificate_from_another_ca_is_refused(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    from tests.http_support import make_cert

    other = make_cert(tmp_path, "other-ca", common_name="not ours", ca=True)
    dbname = pg_database.rsplit("/", 1)[1].split("?")[0]
    s = store(pg_server.dsn(dbname), sslmode="verify-full", ssl_root_cert=other.cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        await s.open()
    await s.close()


async def test_messages_never_show_the_password(pg_server: PgServer) -> None:
    s = store(pg_server.dsn("no_such_database"), sslmode="disable")
    with pytest.raises(asyncpg.InvalidCatalogNameError) as info:
        await s.open()
    await s.close()
    assert pg_server.password not in str(info.value)
    assert pg_server.password not in s.target.describe()
    assert s.target.describe().startswith(f"postgresql://{pg_server.user}@127.0.0.1:")
    wrong = store(pg_server.dsn("postgres").replace(pg_server.password, "wrong"), sslmode="disable")
    with pytest.raises(asyncpg.InvalidPasswordError) as refused:
        await wrong.open()
    await wrong.close()
    assert "wrong" not in str(refused.value)
