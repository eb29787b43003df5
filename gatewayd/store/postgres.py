"""The PostgreSQL store: asyncpg with a pool, shared by several nodes.

The same tables and values as the SQLite store (`gatewayd.store.dialect` says how the
statements differ). What changes with several nodes writing:

- transfer ids come from the database's sequence (taken before the insert, so that the
  caller knows them at once and an insert joins a batch like any save);
- the migrations run once under an advisory lock (`gatewayd.store.migrate`);
- a claim (`claim_due`) counts each partner's RUNNING rows under a transaction advisory
  lock of that partner and launches only rows still PLANNED (the update locks them), so
  that two nodes never take the same row nor, between them, more than a partner's limit;
  it locks no row it does not take, so a node that cannot take a row never hides it
  from one that can;
- at start-up a node interrupts only the RUNNING rows it owns.

Writes of rows go through a `PgWriter` (batched, in order); the other writes are
transactions of their own on a pooled connection. Reads see what is committed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.store.automation_sql import AutomationStatements, decode_pause, listing_changes
from gatewayd.store.base import (
    ApiToken,
    LeaseLost,
    Listening,
    LiveWatched,
    NodeCommand,
    NodeLease,
    NodeLocked,
    NodeRecord,
    NodeState,
    Notice,
    Notification,
    PauseState,
    ScheduleState,
    Store,
    TapisTask,
    TransferFilter,
    WatchedFile,
)
from gatewayd.store.bus_sql import (
    CHANNEL,
    TAKEN,
    BusStatements,
    decode_command,
    decode_lease,
    decode_notice,
    encode_notification,
)
from gatewayd.store.claims import Candidate, Limits, choose
from gatewayd.store.codec import (
    COLUMNS,
    decode_audit,
    decode_row,
    decode_time,
    encode_audit,
    encode_row,
    encode_time,
    encode_update,
)
from gatewayd.store.console_sessions import (
    ConsoleSessionRow,
    ConsoleSessionStatements,
)
from gatewayd.store.console_sessions import decode as decode_console_session
from gatewayd.store.console_sessions import params as console_session_params
from gatewayd.store.dialect import POSTGRESQL
from gatewayd.store.login_failures import (
    LoginFailures,
    LoginFailureStatements,
)
from gatewayd.store.login_failures import add_params as login_failure_params
from gatewayd.store.login_failures import decode as decode_login_failures
from gatewayd.store.migrate import load_migrations, pg_apply_migrations, pg_current_version
from gatewayd.store.nodes_sql import NodeStatements, decode_node, expired_before, record_values
from gatewayd.store.pg_writer import PgWriter
from gatewayd.store.schedules_sql import ScheduleStatements
from gatewayd.store.schedules_sql import decode_state as decode_schedule_state
from gatewayd.store.sql import (
    CRASHED,
    EXPIRED,
    Statements,
    decode_live,
    decode_tapis,
    decode_token,
    encode_tapis,
    encode_token,
    encode_watched,
    forget_unrecorded_ids,
)

if TYPE_CHECKING:
    from gatewayd.store.migrate import PgConnection

_Q = Statements(POSTGRESQL)
_N = NodeStatements(POSTGRESQL)
_BUS = BusStatements(POSTGRESQL)
_NOTIFY = "SELECT pg_notify($1, $2)"
_LF = LoginFailureStatements(POSTGRESQL)
_CS = ConsoleSessionStatements(POSTGRESQL)
_S = ScheduleStatements(POSTGRESQL)
_A = AutomationStatements(POSTGRESQL)
_STATEMENTS = (_Q.insert, _Q.update, _Q.insert_audit)
_ID = COLUMNS.index("id")
_NEXT_IDS = "SELECT nextval(pg_get_serial_sequence('transfers', 'id')) FROM generate_series(1, $1)"
# The transaction advisory locks of partners: (this key, hashtext(partner)); apart from
# the migration lock's key.
_PARTNER_LOCK = 0x67617466
_LOCK_PARTNERS = (
    "SELECT pg_advisory_xact_lock($1, hashtext(p)) "
    "FROM (SELECT p FROM unnest($2::text[]) AS p ORDER BY p) AS sorted"
)
_CLAIM_ROUNDS = 16
# The session advisory lock of a node's name (the per-node guard): (this key,
# hashtext('gatewayd-node:' || name)), apart from the partners' and the migrations'.
_NODE_LOCK = 0x6E6F6465
_TRY_NODE_LOCK = "SELECT pg_try_advisory_lock($1, hashtext('gatewayd-node:' || $2))"
_ID_CHUNK = 500
_WATCH_LOCK = 0x77617463
_TRY_WATCH_LOCK = "SELECT pg_try_advisory_lock($1, hashtext('gatewayd-watcher:' || $2))"
_WATCH_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext('gatewayd-watcher:' || $2))"
# The sessions that hold a watcher's lock, with the node they say they are.
_WATCH_HOLDERS = (
    "SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::oid "
    "AND l.objid = hashtext('gatewayd-watcher:' || $2)::oid"
)
_APP_PREFIX = "gatewayd "
# Tries of a claim that met a deadlock: partner locks taken in a later round of the
# claim are out of order with another node's.
_CLAIM_TRIES = 5
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _now() -> datetime:
    return datetime.now(UTC)


class _Ids:
    """Transfer ids from the database's sequence. Requests made in the same event-loop
    turn (gathered inserts) share one query, so that the inserts that follow still join
    one batch of the writer; ids stay dense and in the order they were asked for."""

    def __init__(self) -> None:
        self._waiting: list[tuple[int, asyncio.Future[list[int]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def take(self, pool: asyncpg.Pool, count: int) -> list[int]:
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        # A caller cancelled meanwhile never reads a failure: not worth a warning.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((count, future))
        if self._task is None:
            self._task = asyncio.create_task(self._fetch(pool), name="gatewayd-store-ids")
        return await asyncio.shield(future)

    async def _fetch(self, pool: asyncpg.Pool) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let the rest of this turn's requests queue
                waiting, self._waiting = self._waiting, []
                try:
                    rows = await pool.fetch(_NEXT_IDS, sum(n for n, _ in waiting))
                except Exception as exc:
                    for _, future in waiting:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                ids = [int(r[0]) for r in rows]
                for n, future in waiting:
                    taken, ids = ids[:n], ids[n:]
                    if not future.done():
                        future.set_result(taken)
        finally:
            self._task = None


def describe_dsn(dsn: str) -> str:
    """`dsn` without its password, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class PgTarget:
    """Where the database is and how to reach it. `password` is a secret: kept out of
    `repr` and of every message (`describe()`)."""

    dsn: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    sslmode: str | None = None
    ssl_root_cert: Path | None = None
    pool_size: int = 10
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.sslmode is not None and self.sslmode not in SSL_MODES:
            raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}")
        if self.pool_size < 2:
            # The writer holds one connection while it writes; claims and reads need more.
            raise ValueError("pool_size must be at least 2")

    def describe(self) -> str:
        """The database, as messages name it: never with its password."""
        if self.dsn is not None:
            return describe_dsn(self.dsn)
        host = self.host or "localhost"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"postgresql://{user}{host}{port}/{self.dbname or ''}"

    def ssl_context(self) -> ssl.SSLContext | str | None:
        """What asyncpg's `ssl` takes: a context verifying against the CA file, or the
        mode itself (None: the DSN's, else asyncpg's default). Reads the CA file: call
        it off the event loop."""
        if self.ssl_root_cert is None:
            return self.sslmode
        context = ssl.create_default_context(cafile=str(self.ssl_root_cert))
        if self.sslmode != "verify-full":
            context.check_hostname = False  # verify-ca: the chain, not the name
        return context

    def connect_args(self, ssl_arg: ssl.SSLContext | str | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "dsn": self.dsn,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": self.dbname,
            "timeout": self.connect_timeout,
        }
        if ssl_arg is not None:
            args["ssl"] = ssl_arg
        return {k: v for k, v in args.items() if v is not None}


class PostgresStore(Store):
    """`Store` on a PostgreSQL database that several nodes may share; `node` names this
    one (the owner of the rows it runs)."""

    def __init__(self, target: PgTarget, *, node: str) -> None:
        if not node:
            raise ValueError("a PostgreSQL store needs its node's name")
        self.target = target
        self.node = node
        self._pool: asyncpg.Pool | None = None
        self._writer: PgWriter | None = None
        self._closed = False
        self._on_commit: Callable[[float], None] | None = None
        self._ids = _Ids()
        # Inserts between their id and their submission to the writer: close waits.
        self._inserting = 0
        self._inserted = asyncio.Event()
        self._inserted.set()
        # How open() connected, for the connections of the guard and of the bus's
        # listener; the guard itself.
        self._connect: dict[str, Any] = {}
        self._guard: asyncpg.Connection | None = None
        # The watchers' advisory locks, on a connection of their own (its end, with the
        # node's, releases them), and the watchers they hold.
        self._watch_conn: asyncpg.Connection | None = None
        self._watch_held: set[str] = set()
        self._watch_lock = asyncio.Lock()
        self._guarded: str | None = None
        # Writes are refused past this time.monotonic() (hold_lease).
        self._lease_until: float | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.target.describe()!r}, node={self.node!r})"

    # -- life cycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate (once across nodes: under the migration lock), open the
        pool and start the writer. Raises `SchemaTooNewError` for a database written by
        a newer gatewayd and `SchemaError` when a migration fails."""
        if self._pool is not None or self._closed:
            raise RuntimeError("a PostgresStore is opened once")
        ssl_arg = await asyncio.to_thread(self.target.ssl_context)
        args = self.target.connect_args(ssl_arg)
        settings = {"application_name": f"gatewayd {self.node}"[:63]}
        migrations = await asyncio.to_thread(load_migrations)
        self._connect = {"server_settings": settings, **args}
        # Its own connection: closing it releases the migration lock whatever happens.
        conn = await asyncpg.connect(server_settings=settings, **args)
        try:
            await pg_apply_migrations(conn, migrations, where=self.target.describe())
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            min_size=1, max_size=self.target.pool_size, server_settings=settings, **args
        )
        self._writer = PgWriter(self._pool, _STATEMENTS)
        self._writer.on_commit = self._on_commit
        self._writer.may_write = self._check_lease
        self._writer.start()

    async def close(self) -> None:
        """Write everything pending, stop the writer, close the pool. Idempotent."""
        self._closed = True
        watch, self._watch_conn = self._watch_conn, None
        if watch is not None:
            await watch.close()
        try:
            await self._inserted.wait()
            if self._writer is not None:
                await self._writer.close()
        finally:
            pool, self._pool = self._pool, None
            try:
                if pool is not None:
                    await pool.close()
            finally:
                guard, self._guard = self._guard, None
                if guard is not None:
                    await guard.close()  # the node's guard goes last: our rows are written

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _live_writer(self) -> PgWriter:
        if self._writer is None or self._closed:
            raise RuntimeError("the store is not open")
        self._check_lease()
        return self._writer

    def _check_lease(self) -> None:
        if self._lease_until is not None and time.monotonic() > self._lease_until:
            raise LeaseLost(f"node {self.node}: its lease may have run out, nothing is written")

    def _live_pool(self) -> asyncpg.Pool:
        if self._pool is None or self._closed:
            raise RuntimeError("the store is not open")
        return self._pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PgConnection]:
        self._check_lease()
        async with self._live_pool().acquire() as conn, conn.transaction():
            yield conn

    def observe_commits(self, callback: Callable[[float], None] | None) -> None:
        self._on_commit = callback
        if self._writer is not None:
            self._writer.on_commit = callback

    @property
    def commit_count(self) -> int:
        """Batches committed by the writer since `open()`."""
        return 0 if self._writer is None else self._writer.commit_count

    async def schema_version(self) -> int:
        async with self._live_pool().acquire() as conn:
            return await pg_current_version(conn)

    # -- writes ----------------------------------------------------------------------

    async def _new_rows(
        self, pool: asyncpg.Pool, transfers: list[Transfer]
    ) -> list[tuple[Any, ...]]:
        """Rows for new transfers with ids from the sequence, every one encoded before
        an id is taken (a bad value fails them all and burns no id)."""
        for t in transfers:
            if t.id is not None:
                raise ValueError(f"transfer {t.id} is already inserted")
        now = _now()
        rows: list[tuple[Any, ...]] = []
        for t in transfers:
            t.created = t.updated = now
            t.remote_id = t.remote_id or uuid.uuid4().hex
            t.follow_id = t.follow_id or uuid.uuid4().hex
            if t.status == Status.RUNNING:
                t.owner = self.node
            rows.append(POSTGRESQL.values(encode_row(t)))
        if not rows:
            return rows
        ids = await self._ids.take(pool, len(rows))
        for t, transfer_id in zip(transfers, ids, strict=True):
            t.id = transfer_id
        return [(*row[:_ID], i, *row[_ID + 1 :]) for row, i in zip(rows, ids, strict=True)]

    async def insert_transfer(self, transfer: Transfer) -> Transfer:
        """Persist a new row; returns `transfer` once committed, its id from the
        database's sequence (taken back, set to None, if the insert fails)."""
        await self.insert_transfers([transfer])
        return transfer

    async def insert_transfers(self, transfers: list[Transfer]) -> None:
        writer, pool = self._live_writer(), self._live_pool()
        self._inserting += 1
        self._inserted.clear()
        try:
            rows = await self._new_rows(pool, transfers)
            # One entry: its rows are written in the same transaction, all or none.
            written = writer.submit(_Q.insert, rows, order=transfers[0].id) if rows else None
        finally:
            self._inserting -= 1
            if not self._inserting:
                self._inserted.set()
        if written is None:
            return
        try:
            await asyncio.shield(written)
        except asyncio.CancelledError:
            raise  # the insert itself goes on
        except Exception:
            for t in transfers:
                t.id = None
            raise

    async def save_transfer(self, transfer: Transfer) -> None:
        """Persist a snapshot of `transfer` taken now; returns once committed. Saves of
        the same row queued together coalesce into one write of the newest."""
        writer = self._live_writer()
        transfer.updated = _now()
        if transfer.status == Status.RUNNING:
            transfer.owner = self.node
        row = POSTGRESQL.values(encode_update(transfer))
        await asyncio.shield(writer.submit(_Q.update, [row], key=transfer.id, order=transfer.id))

    async def interrupt_running(self) -> list[Transfer]:
        """The RUNNING rows this node owns become INTERRUPTED: other nodes' stay theirs.
        Rows nobody owns (copied from SQLite, or from before owners were recorded) are
        taken too, but only while no other node is alive: one that is may be running
        them."""
        now = await self.db_now()
        others = [n for n in await self.list_nodes(now) if n.alive and n.name != self.node]
        statement = _N.interrupt_mine if others else _Q.interrupt_owned
        rows = await self._live_pool().fetch(
            statement, CRASHED.value, encode_time(_now()), self.node
        )
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    async def plan_interrupted(self, ids: list[int]) -> list[Transfer]:
        changed: list[Transfer] = []
        async with self._transaction() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                rows = await conn.fetch(
                    _Q.plan_interrupted(len(chunk)), encode_time(_now()), *chunk
                )
                changed += [decode_row(row) for row in rows]
        return sorted(changed, key=lambda t: t.id or 0)

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        node: str,
        max_running: int,
        partner_limits: Mapping[str, int],
        default_partner_limit: int,
    ) -> list[Transfer]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if max_running <= 0:
            return []
        limits = Limits(max_running, dict(partner_limits), default_partner_limit)
        for attempt in range(1, _CLAIM_TRIES + 1):
            try:
                async with self._transaction() as conn:
                    return await self._claim(conn, encode_time(now), limit, node, limits)
            except asyncpg.DeadlockDetectedError:
                if attempt == _CLAIM_TRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _claim(
        self, conn: PgConnection, at: str, limit: int, node: str, limits: Limits
    ) -> list[Transfer]:
        claimed: list[Transfer] = []
        running: dict[str, int] = {}
        full: set[str] = set()
        for _ in range(_CLAIM_ROUNDS):
            skipped = sorted(full)
            # Read without locking: a claim that locked rows it then leaves (its node
            # full, or the partner full by its node's limits) would hide them from the
            # claims of other nodes skipping locked rows, and nobody would take them
            # until some node looked again. The launch below takes a row only while it
            # is still PLANNED, so a row taken meanwhile by another node is left to it.
            found = [
                Candidate(row[0], row[1])
                for row in await conn.fetch(
                    _Q.claim_candidates(len(skipped), lock=False), at, at, *skipped, limit
                )
            ]
            partners = sorted({c.partner for c in found if c.partner} - running.keys())
            if partners:
                # Counted under each partner's lock: a claim of another node that counted
                # the same partner has committed (its rows are RUNNING) or waits for us.
                await conn.execute(_LOCK_PARTNERS, _PARTNER_LOCK, partners)
                running.update(dict.fromkeys(partners, 0))
                counted = await conn.fetch(_Q.running_per_partner(len(partners)), *partners)
                running.update({row[0]: int(row[1]) for row in counted})
            left = Limits(
                limits.slots - len(claimed), limits.partner_limits, limits.default_partner_limit
            )
            chosen, now_full = choose(found, running, left)
            if chosen:
                rows = await conn.fetch(_Q.launch(len(chosen)), node, encode_time(_now()), *chosen)
                order = {transfer_id: i for i, transfer_id in enumerate(chosen)}
                taken = sorted((decode_row(r) for r in rows), key=lambda t: order[t.id or 0])
                claimed += taken
                # Another node launched these since our read: it held the partner's
                # lock then, so our count (made under that lock) holds them already.
                lost = set(chosen) - {t.id for t in taken}
                for c in found:
                    if c.id in lost and c.partner is not None:
                        running[c.partner] -= 1
            progress = bool(chosen) or bool(now_full - full)
            full |= now_full
            if len(found) < limit or len(claimed) >= limits.slots or not progress:
                break
        return claimed

    async def audit(
        self, who: str, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> None:
        writer = self._live_writer()
        row = POSTGRESQL.values(encode_audit(_now(), who, action, target, dict(details or {})))
        await asyncio.shield(writer.submit(_Q.insert_audit, [row]))

    async def expire_available(self, now: datetime, message: str) -> list[Transfer]:
        at = encode_time(now)
        rows = await self._live_pool().fetch(
            _Q.expire,
            *POSTGRESQL.values(
                (
                    EXPIRED.value,
                    ErrorCode.TeExpired.value,
                    message,
                    Step.NONE.value,
                    at,
                    encode_time(_now()),
                    at,
                )
            ),
        )
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    async def insert_tapis_task(self, task: TapisTask, children: list[Transfer]) -> None:
        task_row = POSTGRESQL.values(encode_tapis(task))
        rows = await self._new_rows(self._live_pool(), children)
        try:
            async with self._transaction() as conn:
                if rows:
                    await conn.executemany(_Q.insert, rows)
                await conn.execute(_Q.insert_tapis, *task_row)
        except BaseException:
            for t in children:
                t.id = None
            raise

    async def get_tapis_task(self, uuid: str) -> TapisTask | None:
        row = await self._live_pool().fetchrow(_Q.get_tapis, uuid)
        return None if row is None else decode_tapis(row)

    async def list_tapis_tasks(self, limit: int, offset: int) -> list[TapisTask]:
        rows = await self._live_pool().fetch(_Q.list_tapis, POSTGRESQL.limit(limit), offset)
        return [decode_tapis(row) for row in rows]

    async def cancel_tapis_task(self, uuid: str, at: datetime) -> None:
        await self._live_pool().execute(_Q.cancel_tapis, encode_time(at), uuid)

    async def insert_token(self, token: ApiToken) -> None:
        row = POSTGRESQL.values(encode_token(token))
        try:
            await self._live_pool().execute(_Q.insert_token, *row)
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"token id {token.id!r} is taken") from exc

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        found = await self._live_pool().fetchval(_Q.revoke_token, encode_time(at), token_id)
        return found is not None

    # -- reads -----------------------------------------------------------------------

    async def get_transfer(self, transfer_id: int) -> Transfer | None:
        row = await self._live_pool().fetchrow(_Q.get_transfer, transfer_id)
        return None if row is None else decode_row(row)

    async def list_transfers(self, filt: TransferFilter) -> tuple[list[Transfer], int]:
        page, count, params = _Q.list_transfers(filt)
        pool = self._live_pool()
        rows = await pool.fetch(page, *params, *params, POSTGRESQL.limit(filt.limit), filt.offset)
        if rows:
            return [decode_row(tuple(row)[:-1]) for row in rows], int(rows[0][-1])
        # An empty page (e.g. an offset past the end) still reports the total.
        return [], int(await pool.fetchval(count, *params))

    async def find_unfinished_upload(
        self, account: str, rule: str, filename: str
    ) -> Transfer | None:
        row = await self._live_pool().fetchrow(_Q.find_unfinished_upload, account, rule, filename)
        return None if row is None else decode_row(row)

    async def due_transfers(self, now: datetime, limit: int) -> list[Transfer]:
        at = encode_time(now)
        rows = await self._live_pool().fetch(_Q.due, at, at, POSTGRESQL.limit(limit))
        return [decode_row(row) for row in rows]

    async def count_due(self, now: datetime) -> int:
        at = encode_time(now)
        return int(await self._live_pool().fetchval(_Q.count_due, at, at))

    async def next_due_time(self) -> datetime | None:
        value = await self._live_pool().fetchval(_Q.next_due_time)
        return None if value is None else datetime.fromisoformat(value).astimezone(UTC)

    async def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = await self._live_pool().fetch(_Q.list_audit, POSTGRESQL.limit(limit), offset)
        return [decode_audit(tuple(row)) for row in rows]

    async def next_expiry(self) -> datetime | None:
        value = await self._live_pool().fetchval(_Q.next_expiry)
        return None if value is None else decode_time(value)

    async def get_token(self, token_id: str) -> ApiToken | None:
        row = await self._live_pool().fetchrow(_Q.get_token, token_id)
        return None if row is None else decode_token(row)

    async def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        pool = self._live_pool()
        if user is None:
            rows = await pool.fetch(_Q.list_tokens)
        else:
            rows = await pool.fetch(_Q.list_user_tokens, user)
        return [decode_token(row) for row in rows]

    # -- console sessions (shared by the nodes) ---------------------------------------

    async def insert_console_session(self, row: ConsoleSessionRow) -> None:
        await self._live_pool().execute(_CS.insert, *console_session_params(row))

    async def get_console_session(self, session_id: str) -> ConsoleSessionRow | None:
        row = await self._live_pool().fetchrow(_CS.get, session_id)
        return None if row is None else decode_console_session(row)

    async def touch_console_session(self, session_id: str, seen: datetime) -> None:
        at = encode_time(seen)
        await self._live_pool().execute(_CS.touch, at, session_id, at)

    async def delete_console_session(self, session_id: str) -> bool:
        return await self._live_pool().fetchval(_CS.delete, session_id) is not None

    async def delete_user_console_sessions(self, user: str) -> None:
        await self._live_pool().execute(_CS.delete_user, user)

    async def forget_console_sessions(
        self, seen_before: datetime, opened_before: datetime, keep: int
    ) -> None:
        await self._live_pool().execute(
            _CS.forget, encode_time(seen_before), encode_time(opened_before), max(0, keep - 1)
        )

    # -- nodes (issue 13: node registry, leases, takeover) ------------------------------
    # Heartbeats are written and leases judged by the database server's clock
    # (`db_now`): the nodes' own clocks may differ by more than a lease, the server's is
    # one for all of them.

    def hold_lease(self, until: float | None) -> None:
        self._lease_until = until

    async def db_now(self) -> datetime:
        value = await self._live_pool().fetchval("SELECT clock_timestamp()")
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    async def lock_node(self, name: str) -> None:
        """A session advisory lock of the node's name on a connection of its own, held
        until `close()` (or the process's end: the server drops it with the session)."""
        self._live_pool()
        if self._guard is not None:
            raise RuntimeError("the node's guard is already held")
        conn = await asyncpg.connect(**self._connect)
        try:
            got = await conn.fetchval(_TRY_NODE_LOCK, _NODE_LOCK, name)
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            raise NodeLocked(await self._holder(name))
        self._guard, self._guarded = conn, name

    async def _holder(self, name: str) -> str:
        row = await self._live_pool().fetchrow(_N.get, name)
        where = ""
        if row is not None:
            node = decode_node(tuple(row), _now())
            where = f" (recorded: host {node.host or '?'}, pid {node.pid or '?'})"
        return (
            f"another gatewayd runs as node {name!r} on {self.target.describe()}{where}: "
            "every node needs a name of its own (daemon.node)"
        )

    async def _guard_held(self) -> bool:
        """Whether the guard is still ours: a lost connection (the server restarted)
        takes it again, unless another daemon of our name took it meanwhile."""
        if self._guarded is None or (self._guard is not None and not self._guard.is_closed()):
            return True
        self._guard = None
        try:
            await self.lock_node(self._guarded)
        except NodeLocked:
            return False
        return True

    async def register_node(self, node: NodeRecord) -> None:
        await self._live_pool().execute(_N.register, *record_values(node))

    async def renew_heartbeat(self, name: str, now: datetime) -> bool:
        if not await self._guard_held():
            return False
        found = await self._live_pool().fetchval(_N.renew, encode_time(now), name)
        return found is not None

    async def list_nodes(self, now: datetime) -> list[NodeState]:
        rows = await self._live_pool().fetch(_N.list)
        return [decode_node(tuple(row), now) for row in rows]

    async def stop_node(self, name: str, now: datetime) -> None:
        await self._live_pool().execute(_N.stop, encode_time(now), name)

    async def take_over(self, dead: str, by: str, now: datetime) -> list[Transfer] | None:
        at = encode_time(now)
        async with self._transaction() as conn:
            lease = await conn.fetchval(_N.lease_of, dead)
            if lease is None:
                return None
            claimed = await conn.fetchval(_N.claim, by, at, dead, expired_before(now, float(lease)))
            if claimed is None:
                return None
            rows = await conn.fetch(_N.interrupt_taken, by, at, encode_time(_now()), dead)
        return sorted((decode_row(tuple(row)) for row in rows), key=lambda t: t.id or 0)

    # -- cluster bus: commands between nodes, notifications, notices ----------------

    @property
    def shared(self) -> bool:
        return True

    async def save_transfer_if(self, transfer: Transfer, status: Status) -> bool:
        """Outside the writer, in a transaction of its own: a save of the same row
        still queued in this node's writer could land after it, so this is for rows no
        run of this node is saving (the service's changes of rows nobody runs here)."""
        pool = self._live_pool()
        transfer.updated = _now()
        if transfer.status == Status.RUNNING:
            transfer.owner = self.node
        row = POSTGRESQL.values((*encode_update(transfer), status.value))
        return await pool.fetchval(_BUS.save_if_status, *row) is not None

    async def post_command(
        self, node: str, transfer_id: int, action: str, sender: str
    ) -> NodeCommand:
        async with self._transaction() as conn:
            row = await conn.fetchrow(
                _BUS.post_command, node, transfer_id, action, sender, encode_time(_now())
            )
            assert row is not None
            command = decode_command(tuple(row))
            await self._notify_in(conn, Notification("command", node, str(command.id)))
        return command

    async def pending_commands(self, node: str) -> list[NodeCommand]:
        rows = await self._live_pool().fetch(_BUS.pending_commands, node)
        return [decode_command(tuple(row)) for row in rows]

    async def answer_command(self, command_id: int, result: str, error: str = "") -> bool:
        values = POSTGRESQL.values((encode_time(_now()), result, error))
        async with self._transaction() as conn:
            row = await conn.fetchrow(_BUS.answer_command, *values, command_id)
            if row is None:
                return False
            command = decode_command(tuple(row))
            await self._notify_in(conn, Notification("answer", command.sender, str(command_id)))
        return True

    async def take_command(self, command_id: int) -> bool:
        found = await self._live_pool().fetchval(_BUS.take_command, TAKEN, command_id)
        return found is not None

    async def withdraw_command(self, command_id: int, error: str) -> bool:
        values = POSTGRESQL.values((encode_time(_now()), error))
        found = await self._live_pool().fetchval(_BUS.withdraw_command, *values, command_id)
        return found is not None

    async def get_command(self, command_id: int) -> NodeCommand | None:
        row = await self._live_pool().fetchrow(_BUS.get_command, command_id)
        return None if row is None else decode_command(tuple(row))

    async def purge_commands(self, answered_before: datetime) -> int:
        status = await self._live_pool().execute(_BUS.purge_commands, encode_time(answered_before))
        return int(status.split()[-1]) if status.startswith("DELETE") else 0

    async def bump_notice(self, name: str, by_node: str) -> Notice:
        async with self._transaction() as conn:
            row = await conn.fetchrow(_BUS.bump_notice, name, encode_time(_now()), by_node)
            assert row is not None
            notice = decode_notice(tuple(row))
            await self._notify_in(conn, Notification("notice", by_node, name))
        return notice

    async def get_notice(self, name: str) -> Notice | None:
        row = await self._live_pool().fetchrow(_BUS.get_notice, name)
        return None if row is None else decode_notice(tuple(row))

    async def node_lease(self, name: str) -> NodeLease | None:
        row = await self._live_pool().fetchrow(_BUS.node_lease, name)
        return None if row is None else decode_lease(tuple(row))

    async def next_due_after(self, now: datetime) -> datetime | None:
        value = await self._live_pool().fetchval(_BUS.next_due_after, encode_time(now))
        return None if value is None else decode_time(value)

    async def notify(self, notification: Notification) -> None:
        await self._live_pool().execute(_NOTIFY, CHANNEL, encode_notification(notification))

    @staticmethod
    async def _notify_in(conn: PgConnection, notification: Notification) -> None:
        # Inside the transaction: delivered at its commit, never before the row exists.
        await conn.execute(_NOTIFY, CHANNEL, encode_notification(notification))

    async def listen(
        self, heard: Callable[[Notification], None], connected: Callable[[], None]
    ) -> Listening:
        from gatewayd.store.pg_listen import PgListening

        self._live_pool()
        args = dict(self._connect)

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(**args)

        return PgListening(connect, heard, connected)

    # -- the login throttle across nodes (cluster: shared) ----------------------------

    async def login_failures(self, keys: list[str]) -> list[LoginFailures]:
        if not keys:
            return []
        rows = await self._live_pool().fetch(_LF.select(len(keys)), *keys)
        return [decode_login_failures(row) for row in rows]

    async def add_login_failure(
        self,
        key: str,
        now: datetime,
        *,
        window_start: datetime,
        ban_start: datetime,
        limit: int | None,
    ) -> LoginFailures:
        params = login_failure_params(key, now, window_start, ban_start, limit)
        row = await self._live_pool().fetchrow(_LF.add, *params)
        return decode_login_failures(row)

    async def clear_login_failures(self, key: str) -> None:
        await self._live_pool().execute(_LF.clear, key)

    async def forget_login_failures(self, before: datetime) -> int:
        status = await self._live_pool().execute(_LF.forget, encode_time(before))
        return int(status.split()[-1])

    # -- watchers ----------------------------------------------------------------------

    async def insert_watched(self, items: list[tuple[WatchedFile, list[Transfer]]]) -> list[int]:
        # Ids for every transfer at once (one trip to the sequence), then split per file.
        every = [t for _, transfers in items for t in transfers]
        flat = await self._new_rows(self._live_pool(), every)
        rows: list[list[tuple[Any, ...]]] = []
        for _, transfers in items:
            rows.append(flat[: len(transfers)])
            flat = flat[len(transfers) :]
        recorded: list[int] = []
        try:
            async with self._transaction() as conn:
                for index, ((record, transfers), new) in enumerate(zip(items, rows, strict=True)):
                    ids = [t.id for t in transfers if t.id is not None]
                    values = POSTGRESQL.values(encode_watched(replace(record, transfers=ids)))
                    if await conn.fetchval(_Q.insert_watched, *values) is None:
                        continue  # taken already (another node, a rescan): the key decides
                    if new:
                        await conn.executemany(_Q.insert, new)
                    recorded.append(index)
        except BaseException:
            forget_unrecorded_ids(items, [])
            raise
        forget_unrecorded_ids(items, recorded)
        return recorded

    async def live_watched(self, watcher: str, after_id: int = 0) -> list[LiveWatched]:
        rows = await self._live_pool().fetch(_Q.live_watched, watcher, after_id)
        return [decode_live(tuple(row)) for row in rows]

    async def mark_watched_gone(self, ids: list[int], at: datetime) -> None:
        if ids:
            async with self._transaction() as conn:
                await conn.executemany(_Q.watched_gone, [(encode_time(at), i) for i in ids])

    async def count_watched(self, watcher: str) -> int:
        return int(await self._live_pool().fetchval(_Q.count_watched, watcher))

    async def try_watch_lock(self, watcher: str) -> bool:
        async with self._watch_lock:
            self._live_pool()
            conn = self._watch_conn
            if conn is not None and conn.is_closed():
                conn, self._watch_conn = None, None
                self._watch_held.clear()  # the server dropped them with the session
            if watcher in self._watch_held:
                return True
            if conn is None:
                conn = self._watch_conn = await asyncpg.connect(**self._connect)
            got = bool(await conn.fetchval(_TRY_WATCH_LOCK, _WATCH_LOCK, watcher))
            if not got and await self._end_dead_holders(conn, watcher):
                got = bool(await conn.fetchval(_TRY_WATCH_LOCK, _WATCH_LOCK, watcher))
            if got:
                self._watch_held.add(watcher)
            return got

    async def _end_dead_holders(self, conn: asyncpg.Connection, watcher: str) -> bool:
        """A holder whose node's lease ran out (frozen, cut off from us but not from the
        database) keeps its session, and the lock with it: end that session. Whether one
        was ended."""
        now = await self.db_now()
        ended = False
        for pid, app in await conn.fetch(_WATCH_HOLDERS, _WATCH_LOCK, watcher):
            if not isinstance(app, str) or not app.startswith(_APP_PREFIX) or len(app) >= 63:
                continue  # not a node of ours, or its name cut short: left alone
            node = app[len(_APP_PREFIX) :]
            if node == self.node:
                continue
            lease = await self.node_lease(node)
            if lease is not None and not lease.alive(now):
                ended = bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid)) or ended
        return ended

    async def release_watch_lock(self, watcher: str) -> None:
        async with self._watch_lock:
            conn = self._watch_conn
            if watcher not in self._watch_held or conn is None or conn.is_closed():
                self._watch_held.discard(watcher)
                return
            self._watch_held.discard(watcher)
            await conn.fetchval(_WATCH_UNLOCK, _WATCH_LOCK, watcher)

    # -- schedules and pollers ----------------------------------------------------------

    async def ensure_schedules(self, names: list[str], now: datetime) -> None:
        if not names:
            return
        at = encode_time(now)
        async with self._transaction() as conn:
            await conn.executemany(_S.ensure, [(name, at, at) for name in names])

    async def schedule_states(self) -> list[ScheduleState]:
        rows = await self._live_pool().fetch(_S.states)
        return [decode_schedule_state(tuple(row)) for row in rows]

    async def schedule_state(self, name: str) -> ScheduleState | None:
        row = await self._live_pool().fetchrow(_S.state, name)
        return None if row is None else decode_schedule_state(tuple(row))

    async def insert_fire(
        self, schedule: str, fire_time: datetime, transfers: list[Transfer], node: str
    ) -> bool:
        rows = await self._new_rows(self._live_pool(), transfers)
        claim = (
            schedule,
            encode_time(fire_time),
            transfers[0].id if transfers else None,
            node,
            encode_time(_now()),
        )
        try:
            async with self._transaction() as conn:
                # The key decides: a second node (or a restart) trying the same firing
                # gets nothing back and inserts nothing.
                if await conn.fetchval(_S.claim_fire, *claim) is None:
                    raise _AlreadyFired
                if rows:
                    await conn.executemany(_Q.insert, rows)
        except _AlreadyFired:
            for t in transfers:
                t.id = None
            return False
        except BaseException:
            for t in transfers:
                t.id = None
            raise
        return True

    async def set_schedule_paused(self, name: str, paused: bool, now: datetime) -> bool:
        if await self.schedule_state(name) is None:
            return False
        await self.set_paused("schedule", name, paused, "", now)
        return True

    async def set_schedule_error(self, name: str, error: str, now: datetime) -> None:
        async with self._transaction() as conn:
            await conn.execute(_S.set_error, *POSTGRESQL.values((error, encode_time(now), name)))

    async def poller_taken(self, poller: str) -> set[tuple[str, int, str]]:
        rows = await self._live_pool().fetch(_S.taken, poller)
        return {(row[0], int(row[1]), row[2]) for row in rows}

    async def insert_take(
        self, poller: str, key: tuple[str, int, str], transfer: Transfer, node: str
    ) -> bool:
        rows = await self._new_rows(self._live_pool(), [transfer])
        claim = POSTGRESQL.values((poller, *key, transfer.id, node, encode_time(_now())))
        try:
            async with self._transaction() as conn:
                if await conn.fetchval(_S.claim_file, *claim) is None:
                    raise _AlreadyFired
                await conn.executemany(_Q.insert, rows)
        except _AlreadyFired:
            transfer.id = None
            return False
        except BaseException:
            transfer.id = None
            raise
        return True

    # -- leftovers of placed files

    async def temp_paths_in_use(self) -> set[str]:
        rows = await self._live_pool().fetch(_Q.temp_paths_in_use)
        return {row[0] for row in rows}

    # -- automation state: pause, a poller's first looks, retention (migration 0010) ----

    async def set_paused(self, kind: str, name: str, paused: bool, by: str, at: datetime) -> None:
        row = POSTGRESQL.values((kind, name, int(paused), by, encode_time(at)))
        async with self._transaction() as conn:
            await conn.execute(_A.set_paused, *row)

    async def pause_states(self, kind: str) -> dict[str, PauseState]:
        rows = await self._live_pool().fetch(_A.states, kind)
        return {state.name: state for state in (decode_pause(tuple(r)) for r in rows)}

    async def poller_seen(self, poller: str) -> dict[str, tuple[int, str]]:
        rows = await self._live_pool().fetch(_A.seen, poller)
        return {row[0]: (int(row[1]), row[2]) for row in rows}

    async def set_poller_seen(
        self, poller: str, seen: dict[str, tuple[int, str]], dropped: list[str], at: datetime
    ) -> None:
        if not seen and not dropped:
            return
        when = encode_time(at)
        async with self._transaction() as conn:
            if seen:
                await conn.executemany(
                    _A.seen_upsert, [(poller, n, s, m, when) for n, (s, m) in seen.items()]
                )
            if dropped:
                await conn.executemany(_A.seen_drop, [(poller, name) for name in dropped])

    async def note_poller_listing(
        self, poller: str, listed: set[tuple[str, int, str]], at: datetime
    ) -> None:
        rows = [tuple(r) for r in await self._live_pool().fetch(_A.taken_with_gone, poller)]
        changes = listing_changes(rows, listed, encode_time(at))
        if changes:
            async with self._transaction() as conn:
                await conn.executemany(_A.taken_gone, [(c[0], poller, *c[1:]) for c in changes])

    async def purge_automation(self, before: datetime) -> dict[str, int]:
        cutoff = encode_time(before)
        counts: dict[str, int] = {}
        async with self._transaction() as conn:
            for table, statement in _A.purges:
                status = await conn.execute(statement, cutoff)  # "DELETE <count>"
                counts[table] = int(status.split()[-1])
        return counts


class _AlreadyFired(Exception):
    """Rolls back a firing that another commit recorded first."""
