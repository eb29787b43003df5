"""The SQLite store: WAL, versioned migrations, one batching writer, one reader.

Two connections: every write goes through the `BatchWriter` on the write connection;
reads use a read-only connection, so a read never waits behind a batch being written and
never sees a batch that is not committed yet.

Transfer ids are allocated here, in memory, from the largest id at `open()`: one daemon
owns the database (it holds a lock file), so nobody else inserts. That lets an insert
join a batch like any save, and the caller knows its id before the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.store.automation_sql import AutomationStatements, decode_pause, listing_changes
from gatewayd.store.base import (
    ApiToken,
    Listening,
    LiveWatched,
    NodeCommand,
    NodeLease,
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
    TAKEN,
    BusStatements,
    decode_command,
    decode_lease,
    decode_notice,
)
from gatewayd.store.claims import Candidate, Limits, choose
from gatewayd.store.codec import (
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
from gatewayd.store.dialect import SQLITE
from gatewayd.store.login_failures import (
    LoginFailures,
    LoginFailureStatements,
)
from gatewayd.store.login_failures import add_params as login_failure_params
from gatewayd.store.login_failures import decode as decode_login_failures
from gatewayd.store.migrate import apply_migrations, current_version, load_migrations
from gatewayd.store.nodes_sql import NodeStatements, decode_node, expired_before, record_values
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
from gatewayd.store.upload_index import UploadIndex
from gatewayd.store.writer import BatchWriter

_Q = Statements(SQLITE)
_N = NodeStatements(SQLITE)
_BUS = BusStatements(SQLITE)
_LF = LoginFailureStatements(SQLITE)
_CS = ConsoleSessionStatements(SQLITE)
_S = ScheduleStatements(SQLITE)
_A = AutomationStatements(SQLITE)
# Within a batch, inserts go before the updates that may follow them.
_STATEMENTS = (_Q.insert, _Q.update, _Q.insert_audit)

_SYNCHRONOUS = ("NORMAL", "FULL")
# Rounds of one claim, at most: each leaves out the partners found full in the last.
_CLAIM_ROUNDS = 16
# Ids per statement of a bulk change (SQLite's parameters are limited).
_ID_CHUNK = 500
# Ids `insert_soon` may give ahead of their rows' commits, covered by a committed
# sqlite_sequence: a crash never lets an id that left this process be given again.
_ID_BLOCK = 1000
# The statements that keep sqlite_sequence's value for transfers (its row exists once a
# row was ever inserted; `max` never takes it back below what SQLite itself recorded).
_SET_SEQUENCE = (
    "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'transfers'",
    "INSERT INTO sqlite_sequence (name, seq) SELECT 'transfers', ? "
    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'transfers')",
)
_RESET_SEQUENCE = "UPDATE sqlite_sequence SET seq = ? WHERE name = 'transfers'"


def _now() -> datetime:
    return datetime.now(UTC)


class _Queued:
    """The commit of a queued write. Awaited through a shield (the future is its whole
    batch's); never awaited, it warns of nothing (the writer retrieves failures)."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.shield(self._future).__await__()


class SqliteStore(Store):
    """`Store` on one SQLite file.

    Reads (`get_transfer`, `list_transfers`, the scheduler's queries, `list_audit`) see
    exactly the committed state: every write whose call has returned, and none of the
    writes still pending in the writer.
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        node: str | None = None,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must not be negative")
        self.path = Path(path)
        # Recorded as the owner of the rows that become RUNNING here (None: not recorded
        # by saves; a claim names its node itself).
        self.node = node
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._write_conn: aiosqlite.Connection | None = None
        self._read_conn: aiosqlite.Connection | None = None
        self._writer: BatchWriter | None = None
        self._last_id = 0
        # Ids up to this one are covered by the committed sqlite_sequence (insert_soon).
        self._covered = 0
        self._covering = asyncio.Lock()
        self._closed = False
        self._uploads = UploadIndex()
        self._on_commit: Callable[[float], None] | None = None

    # -- life cycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Create the folder and the file if missing, migrate, start the writer.

        Raises `SchemaTooNewError` for a database written by a newer gatewayd and
        `SchemaError` when a migration fails (the database keeps its previous version).
        """
        if self._writer is not None or self._closed:
            raise RuntimeError("a SqliteStore is opened once")
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        migrations = await asyncio.to_thread(load_migrations)
        try:
            self._write_conn = await self._connect()
            await self._write_conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            rows = list(await self._write_conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            if str(rows[0][0]).lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {rows[0][0]})")
            await apply_migrations(self._write_conn, migrations, where=str(self.path))
            self._last_id = self._covered = await self._max_transfer_id(self._write_conn)
            uploads = await self._write_conn.execute_fetchall(_Q.unfinished_uploads)
            self._uploads.load((int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in uploads)
            self._read_conn = await self._connect()
            await self._read_conn.execute("PRAGMA query_only = ON")
        except BaseException:
            await self._close_connections()
            raise
        self._writer = BatchWriter(self._write_conn, _STATEMENTS)
        self._writer.on_commit = self._on_commit
        self._writer.start()

    async def close(self) -> None:
        """Write everything pending, stop the writer, close the connections. Idempotent."""
        if not self._closed and self._writer is not None and self._covered > self._last_id:
            # A clean stop gives back the ids covered but not given: no gap after it.
            with contextlib.suppress(Exception):
                async with self._writer.transaction() as conn:
                    await conn.execute(_RESET_SEQUENCE, (self._last_id,))
        self._closed = True
        try:
            if self._writer is not None:
                await self._writer.close()
        finally:
            await self._close_connections()

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

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path)
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def _close_connections(self) -> None:
        # The writer's connection closes last: the last connection checkpoints the WAL.
        for attr in ("_read_conn", "_write_conn"):
            conn: aiosqlite.Connection | None = getattr(self, attr)
            setattr(self, attr, None)
            if conn is not None:
                await conn.close()

    @staticmethod
    async def _max_transfer_id(conn: aiosqlite.Connection) -> int:
        # sqlite_sequence also remembers ids of rows deleted since: never reuse them.
        rows = list(
            await conn.execute_fetchall(
                "SELECT max(coalesce((SELECT max(id) FROM transfers), 0), coalesce("
                "(SELECT seq FROM sqlite_sequence WHERE name = 'transfers'), 0))"
            )
        )
        return int(rows[0][0])

    def _live_writer(self) -> BatchWriter:
        if self._writer is None or self._closed:
            raise RuntimeError("the store is not open")
        return self._writer

    def _reader(self) -> aiosqlite.Connection:
        if self._read_conn is None or self._closed:
            raise RuntimeError("the store is not open")
        return self._read_conn

    def observe_commits(self, callback: Callable[[float], None] | None) -> None:
        self._on_commit = callback
        if self._writer is not None:
            self._writer.on_commit = callback

    @property
    def commit_count(self) -> int:
        """Transactions committed since `open()`: shows how well saves are batched."""
        return 0 if self._writer is None else self._writer.commit_count

    async def schema_version(self) -> int:
        return await current_version(self._reader())

    # -- writes ----------------------------------------------------------------------

    async def insert_transfer(self, transfer: Transfer) -> Transfer:
        """Persist a new row; returns `transfer` once committed.

        The id is set on the object at once (before the commit), as are `created`,
        `updated` and, when empty, `remote_id` and `follow_id` (uuid4 hex). If the batch
        fails, the id is taken back (set to None) and the error raised.
        """
        await self.insert_transfers([transfer])
        return transfer

    def _new_rows(self, transfers: list[Transfer]) -> list[tuple[Any, ...]]:
        """Ids and rows for new transfers, every one encoded before any is written (a
        bad value fails them all, and takes the ids back)."""
        for t in transfers:
            if t.id is not None:
                raise ValueError(f"transfer {t.id} is already inserted")
        now = _now()
        rows: list[tuple[Any, ...]] = []
        try:
            for t in transfers:
                t.created = t.updated = now
                t.remote_id = t.remote_id or uuid.uuid4().hex
                t.follow_id = t.follow_id or uuid.uuid4().hex
                t.id = self._last_id + len(rows) + 1
                if t.status == Status.RUNNING and self.node is not None:
                    t.owner = self.node
                rows.append(encode_row(t))
                self._uploads.written(t)
        except BaseException:
            for t in transfers:
                t.id = None
            raise
        self._last_id += len(rows)
        return rows

    async def insert_soon(self, transfer: Transfer) -> Awaitable[None]:
        """The id now (ids are this process's to give), the insert queued for the next
        commit (see Store.insert_soon)."""
        writer = self._live_writer()
        while self._last_id >= self._covered:
            await self._cover()
        (row,) = self._new_rows([transfer])
        future = writer.submit(_Q.insert, row, key=transfer.id)
        return _Queued(future)

    async def _cover(self) -> None:
        """Commit a sqlite_sequence value _ID_BLOCK ids ahead (once per block)."""
        async with self._covering:
            if self._last_id < self._covered:
                return  # covered while this call waited
            ahead = self._last_id + _ID_BLOCK
            async with self._live_writer().transaction() as conn:
                for sql in _SET_SEQUENCE:
                    await conn.execute(sql, (ahead,))
            self._covered = ahead

    async def insert_transfers(self, transfers: list[Transfer]) -> None:
        """Persist new rows in one commit: all of them, or (the batch failing) none,
        with their ids taken back."""
        writer = self._live_writer()
        rows = self._new_rows(transfers)
        # Submitted without a pause in between: they join the same batch, one commit.
        futures = [
            writer.submit(_Q.insert, row, key=t.id) for t, row in zip(transfers, rows, strict=True)
        ]
        try:
            for future in set(futures):
                await asyncio.shield(future)
        except asyncio.CancelledError:
            raise  # the inserts themselves go on
        except Exception:
            for t in transfers:
                t.id = None
            raise

    async def save_transfer(self, transfer: Transfer) -> None:
        """Persist the current state of `transfer` (a snapshot taken now, so later
        changes to the object do not leak into this write); sets `updated`.

        Returns once committed. Saves of the same row queued before the writer picks
        them up coalesce into one write of the newest state; saves issued in the same
        event-loop turn (e.g. gathered) share one commit.
        """
        writer = self._live_writer()
        if transfer.id is not None and transfer.id > self._last_id:
            raise ValueError(f"transfer {transfer.id} was not inserted by this store")
        transfer.updated = _now()
        if transfer.status == Status.RUNNING and self.node is not None:
            transfer.owner = self.node
        row = encode_update(transfer)
        self._uploads.written(transfer)
        await asyncio.shield(writer.submit(_Q.update, row, key=transfer.id))
        self._uploads.committed(transfer)

    async def interrupt_running(self) -> list[Transfer]:
        """Call at start-up, before any transfer runs: a RUNNING row saved after this
        stays RUNNING."""
        writer = self._live_writer()
        now = encode_time(_now())
        async with writer.transaction() as conn:
            # One daemon owns the file: every RUNNING row was ours.
            rows = await conn.execute_fetchall(_Q.interrupt_all, (CRASHED.value, now))
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    async def plan_interrupted(self, ids: list[int]) -> list[Transfer]:
        writer = self._live_writer()
        changed: list[Transfer] = []
        async with writer.transaction() as conn:
            for start in range(0, len(ids), _ID_CHUNK):
                chunk = ids[start : start + _ID_CHUNK]
                rows = await conn.execute_fetchall(
                    _Q.plan_interrupted(len(chunk)), (encode_time(_now()), *chunk)
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
        """In one transaction of the writer's connection: one daemon owns the file, so
        nothing else claims at the same time."""
        writer = self._live_writer()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        limits = Limits(max_running, dict(partner_limits), default_partner_limit)
        at = encode_time(now)
        claimed: list[Transfer] = []
        if max_running <= 0:
            return claimed
        async with writer.transaction() as conn:
            running: dict[str, int] = {}
            full: set[str] = set()
            for _ in range(_CLAIM_ROUNDS):
                skipped = sorted(full)
                found = [
                    Candidate(row[0], row[1])
                    for row in await conn.execute_fetchall(
                        _Q.claim_candidates(len(skipped), lock=False),
                        (at, at, *skipped, limit),
                    )
                ]
                partners = sorted({c.partner for c in found if c.partner} - running.keys())
                running.update(dict.fromkeys(partners, 0))
                if partners:
                    counted = await conn.execute_fetchall(
                        _Q.running_per_partner(len(partners)), partners
                    )
                    running.update({partner: int(n) for partner, n in counted})
                left = Limits(
                    limits.slots - len(claimed), limits.partner_limits, default_partner_limit
                )
                chosen, now_full = choose(found, running, left)
                if chosen:
                    rows = await conn.execute_fetchall(
                        _Q.launch(len(chosen)), (node, encode_time(_now()), *chosen)
                    )
                    order = {transfer_id: i for i, transfer_id in enumerate(chosen)}
                    claimed += sorted((decode_row(r) for r in rows), key=lambda t: order[t.id or 0])
                progress = bool(chosen) or bool(now_full - full)
                full |= now_full
                if len(found) < limit or len(claimed) >= limits.slots or not progress:
                    break
        return claimed

    async def audit(
        self, who: str, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record an admin action; returns once committed (it joins the current batch)."""
        writer = self._live_writer()
        row = encode_audit(_now(), who, action, target, dict(details or {}))
        await asyncio.shield(writer.submit(_Q.insert_audit, row))

    async def expire_available(self, now: datetime, message: str) -> list[Transfer]:
        writer = self._live_writer()
        at = encode_time(now)
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                _Q.expire,
                (
                    EXPIRED.value,
                    ErrorCode.TeExpired.value,
                    message,
                    Step.NONE.value,
                    at,
                    encode_time(_now()),
                    at,
                ),
            )
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    async def insert_tapis_task(self, task: TapisTask, children: list[Transfer]) -> None:
        writer = self._live_writer()
        rows = self._new_rows(children)
        try:
            await self._insert_task(writer, task, rows)
        except BaseException:
            for t in children:
                t.id = None
            raise

    async def _insert_task(
        self, writer: BatchWriter, task: TapisTask, rows: list[tuple[Any, ...]]
    ) -> None:
        async with writer.transaction() as conn:
            if rows:
                await conn.executemany(_Q.insert, rows)
            await conn.execute(_Q.insert_tapis, encode_tapis(task))

    async def get_tapis_task(self, uuid: str) -> TapisTask | None:
        rows = list(await self._reader().execute_fetchall(_Q.get_tapis, (uuid,)))
        return decode_tapis(rows[0]) if rows else None

    async def list_tapis_tasks(self, limit: int, offset: int) -> list[TapisTask]:
        rows = await self._reader().execute_fetchall(_Q.list_tapis, (limit, offset))
        return [decode_tapis(row) for row in rows]

    async def cancel_tapis_task(self, uuid: str, at: datetime) -> None:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            await conn.execute(_Q.cancel_tapis, (encode_time(at), uuid))

    async def insert_token(self, token: ApiToken) -> None:
        writer = self._live_writer()
        row = encode_token(token)
        try:
            async with writer.transaction() as conn:
                await conn.execute(_Q.insert_token, row)
        except aiosqlite.IntegrityError as exc:
            raise ValueError(f"token id {token.id!r} is taken") from exc

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(_Q.revoke_token, (encode_time(at), token_id))
        return bool(list(rows))

    # -- reads -----------------------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Transfer]:
        rows = await self._reader().execute_fetchall(sql, params)
        return [decode_row(row) for row in rows]

    async def get_transfer(self, transfer_id: int) -> Transfer | None:
        found = await self._fetch(_Q.get_transfer, (transfer_id,))
        return found[0] if found else None

    async def list_transfers(self, filt: TransferFilter) -> tuple[list[Transfer], int]:
        page, count, params = _Q.list_transfers(filt)
        rows = list(
            await self._reader().execute_fetchall(
                page, (*params, *params, SQLITE.limit(filt.limit), filt.offset)
            )
        )
        if rows:
            return [decode_row(row[:-1]) for row in rows], int(rows[0][-1])
        # An empty page (e.g. an offset past the end) still reports the total.
        counted = list(await self._reader().execute_fetchall(count, params))
        return [], int(counted[0][0])

    async def find_unfinished_upload(
        self, account: str, rule: str, filename: str
    ) -> Transfer | None:
        if not self._uploads.may_have(account, rule, filename):
            return None
        found = await self._fetch(_Q.find_unfinished_upload, (account, rule, filename))
        return found[0] if found else None

    async def due_transfers(self, now: datetime, limit: int) -> list[Transfer]:
        """PLANNED transfers whose start (or, without one, creation) and next attempt
        have passed, by start time then id. The bounds are inclusive."""
        at = encode_time(now)
        return await self._fetch(_Q.due, (at, at, limit))

    async def count_due(self, now: datetime) -> int:
        at = encode_time(now)
        rows = list(await self._reader().execute_fetchall(_Q.count_due, (at, at)))
        return int(rows[0][0])

    async def next_due_time(self) -> datetime | None:
        """The earliest time at which a PLANNED transfer is due: the later of its
        start (or creation) and its next attempt. It may be in the past."""
        rows = list(await self._reader().execute_fetchall(_Q.next_due_time))
        value = rows[0][0]
        return None if value is None else datetime.fromisoformat(value).astimezone(UTC)

    async def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Audit entries, newest first: dicts with `id`, `at` (aware UTC datetime),
        `who`, `action`, `target` and `details` (a dict)."""
        rows = await self._reader().execute_fetchall(_Q.list_audit, (limit, offset))
        return [decode_audit(row) for row in rows]

    async def next_expiry(self) -> datetime | None:
        rows = list(await self._reader().execute_fetchall(_Q.next_expiry))
        value = rows[0][0]
        return None if value is None else decode_time(value)

    async def get_token(self, token_id: str) -> ApiToken | None:
        rows = list(await self._reader().execute_fetchall(_Q.get_token, (token_id,)))
        return decode_token(rows[0]) if rows else None

    async def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        if user is None:
            rows = await self._reader().execute_fetchall(_Q.list_tokens)
        else:
            rows = await self._reader().execute_fetchall(_Q.list_user_tokens, (user,))
        return [decode_token(row) for row in rows]

    # -- console sessions (shared by the nodes) ---------------------------------------

    async def insert_console_session(self, row: ConsoleSessionRow) -> None:
        async with self._live_writer().transaction() as conn:
            await conn.execute(_CS.insert, console_session_params(row))

    async def get_console_session(self, session_id: str) -> ConsoleSessionRow | None:
        rows = list(await self._reader().execute_fetchall(_CS.get, (session_id,)))
        return decode_console_session(rows[0]) if rows else None

    async def touch_console_session(self, session_id: str, seen: datetime) -> None:
        at = encode_time(seen)
        async with self._live_writer().transaction() as conn:
            await conn.execute(_CS.touch, (at, session_id, at))

    async def delete_console_session(self, session_id: str) -> bool:
        async with self._live_writer().transaction() as conn:
            rows = list(await conn.execute_fetchall(_CS.delete, (session_id,)))
        return bool(rows)

    async def delete_user_console_sessions(self, user: str) -> None:
        async with self._live_writer().transaction() as conn:
            await conn.execute(_CS.delete_user, (user,))

    async def forget_console_sessions(
        self, seen_before: datetime, opened_before: datetime, keep: int
    ) -> None:
        args = (encode_time(seen_before), encode_time(opened_before), max(0, keep - 1))
        async with self._live_writer().transaction() as conn:
            await conn.execute(_CS.forget, args)

    # -- nodes (issue 13: node registry, leases, takeover) ------------------------------
    # One daemon per file: the registry only records this node, nobody takes it over
    # while it runs; the statements are the same as PostgreSQL's all the same.

    async def db_now(self) -> datetime:
        return _now()

    async def lock_node(self, name: str) -> None:
        """Nothing: the state folder's lock file keeps one daemon per database file."""

    async def register_node(self, node: NodeRecord) -> None:
        async with self._live_writer().transaction() as conn:
            await conn.execute(_N.register, record_values(node))

    async def renew_heartbeat(self, name: str, now: datetime) -> bool:
        async with self._live_writer().transaction() as conn:
            rows = await conn.execute_fetchall(_N.renew, (encode_time(now), name))
        return bool(list(rows))

    async def list_nodes(self, now: datetime) -> list[NodeState]:
        rows = await self._reader().execute_fetchall(_N.list)
        return [decode_node(row, now) for row in rows]

    async def stop_node(self, name: str, now: datetime) -> None:
        async with self._live_writer().transaction() as conn:
            await conn.execute(_N.stop, (encode_time(now), name))

    async def take_over(self, dead: str, by: str, now: datetime) -> list[Transfer] | None:
        at = encode_time(now)
        async with self._live_writer().transaction() as conn:
            leases = list(await conn.execute_fetchall(_N.lease_of, (dead,)))
            if not leases:
                return None
            before = expired_before(now, float(leases[0][0]))
            if not list(await conn.execute_fetchall(_N.claim, (by, at, dead, before))):
                return None
            rows = await conn.execute_fetchall(
                _N.interrupt_taken, (by, at, encode_time(_now()), dead)
            )
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    # -- cluster bus: commands between nodes, notifications, notices ----------------
    # One node owns the file: commands work (and are tested) but nobody else posts
    # any, and there is nobody to notify.

    async def save_transfer_if(self, transfer: Transfer, status: Status) -> bool:
        writer = self._live_writer()
        if transfer.id is not None and transfer.id > self._last_id:
            raise ValueError(f"transfer {transfer.id} was not inserted by this store")
        transfer.updated = _now()
        if transfer.status == Status.RUNNING and self.node is not None:
            transfer.owner = self.node
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                _BUS.save_if_status, (*encode_update(transfer), status.value)
            )
        return bool(list(rows))

    async def post_command(
        self, node: str, transfer_id: int, action: str, sender: str
    ) -> NodeCommand:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    _BUS.post_command, (node, transfer_id, action, sender, encode_time(_now()))
                )
            )
        return decode_command(rows[0])

    async def pending_commands(self, node: str) -> list[NodeCommand]:
        rows = await self._reader().execute_fetchall(_BUS.pending_commands, (node,))
        return [decode_command(row) for row in rows]

    async def answer_command(self, command_id: int, result: str, error: str = "") -> bool:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                _BUS.answer_command, (encode_time(_now()), result, error, command_id)
            )
        return bool(list(rows))

    async def take_command(self, command_id: int) -> bool:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(_BUS.take_command, (TAKEN, command_id))
        return bool(list(rows))

    async def withdraw_command(self, command_id: int, error: str) -> bool:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                _BUS.withdraw_command, (encode_time(_now()), error, command_id)
            )
        return bool(list(rows))

    async def get_command(self, command_id: int) -> NodeCommand | None:
        rows = list(await self._reader().execute_fetchall(_BUS.get_command, (command_id,)))
        return decode_command(rows[0]) if rows else None

    async def purge_commands(self, answered_before: datetime) -> int:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            cursor = await conn.execute(_BUS.purge_commands, (encode_time(answered_before),))
            return max(cursor.rowcount, 0)

    async def bump_notice(self, name: str, by_node: str) -> Notice:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = list(
                await conn.execute_fetchall(_BUS.bump_notice, (name, encode_time(_now()), by_node))
            )
        return decode_notice(rows[0])

    async def get_notice(self, name: str) -> Notice | None:
        rows = list(await self._reader().execute_fetchall(_BUS.get_notice, (name,)))
        return decode_notice(rows[0]) if rows else None

    async def node_lease(self, name: str) -> NodeLease | None:
        rows = list(await self._reader().execute_fetchall(_BUS.node_lease, (name,)))
        return decode_lease(rows[0]) if rows else None

    async def next_due_after(self, now: datetime) -> datetime | None:
        rows = list(await self._reader().execute_fetchall(_BUS.next_due_after, (encode_time(now),)))
        value = rows[0][0]
        return None if value is None else decode_time(value)

    async def notify(self, notification: Notification) -> None:
        return None

    async def listen(
        self, heard: Callable[[Notification], None], connected: Callable[[], None]
    ) -> Listening:
        return Listening()

    # -- the login throttle across nodes (cluster: shared) ----------------------------

    async def login_failures(self, keys: list[str]) -> list[LoginFailures]:
        if not keys:
            return []
        rows = await self._reader().execute_fetchall(_LF.select(len(keys)), tuple(keys))
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
        async with self._live_writer().transaction() as conn:
            rows = list(await conn.execute_fetchall(_LF.add, params))
        return decode_login_failures(rows[0])

    async def clear_login_failures(self, key: str) -> None:
        async with self._live_writer().transaction() as conn:
            await conn.execute(_LF.clear, (key,))

    async def forget_login_failures(self, before: datetime) -> int:
        async with self._live_writer().transaction() as conn:
            cursor = await conn.execute(_LF.forget, (encode_time(before),))
            return cursor.rowcount

    # -- watchers ----------------------------------------------------------------------

    async def insert_watched(self, items: list[tuple[WatchedFile, list[Transfer]]]) -> list[int]:
        writer = self._live_writer()
        rows = [self._new_rows(transfers) for _, transfers in items]
        recorded: list[int] = []
        try:
            async with writer.transaction() as conn:
                for index, ((record, transfers), new) in enumerate(zip(items, rows, strict=True)):
                    ids = [t.id for t in transfers if t.id is not None]
                    done = replace(record, transfers=ids)
                    row = encode_watched(done)
                    if not list(await conn.execute_fetchall(_Q.insert_watched, row)):
                        continue  # taken already (a rescan after a crash): the key decides
                    if new:
                        await conn.executemany(_Q.insert, new)
                    recorded.append(index)
        except BaseException:
            forget_unrecorded_ids(items, [])
            raise
        forget_unrecorded_ids(items, recorded)
        return recorded

    async def live_watched(self, watcher: str, after_id: int = 0) -> list[LiveWatched]:
        rows = await self._reader().execute_fetchall(_Q.live_watched, (watcher, after_id))
        return [decode_live(row) for row in rows]

    async def mark_watched_gone(self, ids: list[int], at: datetime) -> None:
        if not ids:
            return
        async with self._live_writer().transaction() as conn:
            await conn.executemany(_Q.watched_gone, [(encode_time(at), i) for i in ids])

    async def count_watched(self, watcher: str) -> int:
        rows = list(await self._reader().execute_fetchall(_Q.count_watched, (watcher,)))
        return int(rows[0][0])

    # -- schedules and pollers ----------------------------------------------------------

    async def ensure_schedules(self, names: list[str], now: datetime) -> None:
        if not names:
            return
        at = encode_time(now)
        async with self._live_writer().transaction() as conn:
            await conn.executemany(_S.ensure, [(name, at, at) for name in names])

    async def schedule_states(self) -> list[ScheduleState]:
        rows = await self._reader().execute_fetchall(_S.states)
        return [decode_schedule_state(row) for row in rows]

    async def schedule_state(self, name: str) -> ScheduleState | None:
        rows = list(await self._reader().execute_fetchall(_S.state, (name,)))
        return decode_schedule_state(rows[0]) if rows else None

    async def insert_fire(
        self, schedule: str, fire_time: datetime, transfers: list[Transfer], node: str
    ) -> bool:
        writer = self._live_writer()
        try:
            async with writer.transaction() as conn:
                rows = self._new_rows(transfers)
                claim = (
                    schedule,
                    encode_time(fire_time),
                    transfers[0].id if transfers else None,
                    node,
                    encode_time(_now()),
                )
                if not list(await conn.execute_fetchall(_S.claim_fire, claim)):
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
        async with self._live_writer().transaction() as conn:
            await conn.execute_fetchall(_S.set_error, (error, encode_time(now), name))

    async def poller_taken(self, poller: str) -> set[tuple[str, int, str]]:
        rows = await self._reader().execute_fetchall(_S.taken, (poller,))
        return {(name, int(size), mtime) for name, size, mtime in rows}

    async def insert_take(
        self, poller: str, key: tuple[str, int, str], transfer: Transfer, node: str
    ) -> bool:
        try:
            async with self._live_writer().transaction() as conn:
                rows = self._new_rows([transfer])
                claim = (poller, *key, transfer.id, node, encode_time(_now()))
                if not list(await conn.execute_fetchall(_S.claim_file, claim)):
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
        rows = await self._reader().execute_fetchall(_Q.temp_paths_in_use)
        return {row[0] for row in rows}

    # -- automation state: pause, a poller's first looks, retention (migration 0010) ----

    async def set_paused(self, kind: str, name: str, paused: bool, by: str, at: datetime) -> None:
        row = (kind, name, int(paused), by, encode_time(at))
        async with self._live_writer().transaction() as conn:
            await conn.execute(_A.set_paused, row)

    async def pause_states(self, kind: str) -> dict[str, PauseState]:
        rows = await self._reader().execute_fetchall(_A.states, (kind,))
        return {state.name: state for state in map(decode_pause, rows)}

    async def poller_seen(self, poller: str) -> dict[str, tuple[int, str]]:
        rows = await self._reader().execute_fetchall(_A.seen, (poller,))
        return {name: (int(size), mtime) for name, size, mtime in rows}

    async def set_poller_seen(
        self, poller: str, seen: dict[str, tuple[int, str]], dropped: list[str], at: datetime
    ) -> None:
        if not seen and not dropped:
            return
        when = encode_time(at)
        async with self._live_writer().transaction() as conn:
            await conn.executemany(
                _A.seen_upsert, [(poller, n, s, m, when) for n, (s, m) in seen.items()]
            )
            await conn.executemany(_A.seen_drop, [(poller, name) for name in dropped])

    async def note_poller_listing(
        self, poller: str, listed: set[tuple[str, int, str]], at: datetime
    ) -> None:
        rows = list(await self._reader().execute_fetchall(_A.taken_with_gone, (poller,)))
        changes = listing_changes(rows, listed, encode_time(at))
        if changes:
            async with self._live_writer().transaction() as conn:
                await conn.executemany(_A.taken_gone, [(c[0], poller, *c[1:]) for c in changes])

    async def purge_automation(self, before: datetime) -> dict[str, int]:
        cutoff = (encode_time(before),)
        counts: dict[str, int] = {}
        async with self._live_writer().transaction() as conn:
            for table, statement in _A.purges:
                counts[table] = (await conn.execute(statement, cutoff)).rowcount
        return counts


class _AlreadyFired(Exception):
    """Rolls back a firing that another commit recorded first."""
