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
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiosqlite

from gatewayd import lifecycle
from gatewayd.lifecycle import Event
from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.store.base import SORT_FIELDS, ApiToken, Store, TapisTask, TransferFilter
from gatewayd.store.codec import (
    AUDIT_COLUMNS,
    COLUMNS,
    UPDATE_COLUMNS,
    decode_audit,
    decode_row,
    decode_time,
    encode_audit,
    encode_json,
    encode_row,
    encode_time,
    encode_update,
)
from gatewayd.store.migrate import apply_migrations, current_version, load_migrations
from gatewayd.store.writer import BatchWriter


def _in(statuses: Iterable[Status]) -> str:
    """An SQL list of status values (constants of the code, never input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


_COLS = ", ".join(COLUMNS)
_SELECT = f"SELECT {_COLS} FROM transfers"
_INSERT = f"INSERT INTO transfers ({_COLS}) VALUES ({', '.join('?' for _ in COLUMNS)})"
_UPDATE = f"UPDATE transfers SET {', '.join(f'{c} = ?' for c in UPDATE_COLUMNS)} WHERE id = ?"
_INSERT_AUDIT = (
    f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS[1:])}) "
    f"VALUES ({', '.join('?' for _ in AUDIT_COLUMNS[1:])})"
)
# Within a batch, inserts go before the updates that may follow them.
_STATEMENTS = (_INSERT, _UPDATE, _INSERT_AUDIT)

# The statuses the lifecycle's table gives these queries (gatewayd.lifecycle).
_LAUNCHABLE = _in(lifecycle.sources(Event.LAUNCH))
_CRASHED_FROM = lifecycle.sources(Event.CRASH)
_CRASHED = lifecycle.after(Status.RUNNING, Event.CRASH)
_EXPIRED = lifecycle.after(Status.AVAILABLE, Event.EXPIRE)
# A planned transfer without a start time is due from its creation.
_DUE_AT = "coalesce(start, created)"
_PLANNED = f"status IN {_LAUNCHABLE}"
_UNFINISHED = f"status NOT IN {_in(lifecycle.FINAL)}"

_SYNCHRONOUS = ("NORMAL", "FULL")

_AVAILABLE = f"status IN {_in(lifecycle.sources(Event.EXPIRE))} AND next_attempt IS NOT NULL"
_TOKEN_COLUMNS = "id, user, permissions, comment, created, expires, revoked, manage_tokens"
_TAPIS_COLUMNS = "uuid, tag, username, created, elements, cancelled"


def _now() -> datetime:
    return datetime.now(UTC)


class SqliteStore(Store):
    """`Store` on one SQLite file.

    Reads (`get_transfer`, `list_transfers`, the scheduler's queries, `list_audit`) see
    exactly the committed state: every write whose call has returned, and none of the
    writes still pending in the writer.
    """

    def __init__(
        self, path: Path, *, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must not be negative")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._write_conn: aiosqlite.Connection | None = None
        self._read_conn: aiosqlite.Connection | None = None
        self._writer: BatchWriter | None = None
        self._last_id = 0
        self._closed = False
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
            self._last_id = await self._max_transfer_id(self._write_conn)
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
                rows.append(encode_row(t))
        except BaseException:
            for t in transfers:
                t.id = None
            raise
        self._last_id += len(rows)
        return rows

    async def insert_transfers(self, transfers: list[Transfer]) -> None:
        """Persist new rows in one commit: all of them, or (the batch failing) none,
        with their ids taken back."""
        writer = self._live_writer()
        rows = self._new_rows(transfers)
        # Submitted without a pause in between: they join the same batch, one commit.
        futures = [
            writer.submit(_INSERT, row, key=t.id) for t, row in zip(transfers, rows, strict=True)
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
        row = encode_update(transfer)
        await asyncio.shield(writer.submit(_UPDATE, row, key=transfer.id))

    async def interrupt_running(self) -> list[Transfer]:
        """Call at start-up, before any transfer runs: a RUNNING row saved after this
        stays RUNNING."""
        writer = self._live_writer()
        now = encode_time(_now())
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE transfers SET status = ?, updated = ? "
                f"WHERE status IN {_in(_CRASHED_FROM)} RETURNING {_COLS}",
                (_CRASHED.value, now),
            )
        return sorted((decode_row(row) for row in rows), key=lambda t: t.id or 0)

    async def audit(
        self, who: str, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record an admin action; returns once committed (it joins the current batch)."""
        writer = self._live_writer()
        row = encode_audit(_now(), who, action, target, dict(details or {}))
        await asyncio.shield(writer.submit(_INSERT_AUDIT, row))

    async def expire_available(self, now: datetime, message: str) -> list[Transfer]:
        writer = self._live_writer()
        at = encode_time(now)
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE transfers SET status = ?, error_code = ?, error_msg = ?, "
                f"error_step = ?, stop = ?, updated = ? WHERE {_AVAILABLE} "
                f"AND next_attempt <= ? RETURNING {_COLS}",
                (
                    _EXPIRED.value,
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
                await conn.executemany(_INSERT, rows)
            await conn.execute(
                f"INSERT INTO tapis_tasks ({_TAPIS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    task.uuid,
                    task.tag,
                    task.username,
                    encode_time(task.created),
                    encode_json(task.elements),
                    None if task.cancelled is None else encode_time(task.cancelled),
                ),
            )

    async def get_tapis_task(self, uuid: str) -> TapisTask | None:
        rows = list(
            await self._reader().execute_fetchall(
                f"SELECT {_TAPIS_COLUMNS} FROM tapis_tasks WHERE uuid = ?", (uuid,)
            )
        )
        return _decode_tapis(rows[0]) if rows else None

    async def list_tapis_tasks(self, limit: int, offset: int) -> list[TapisTask]:
        rows = await self._reader().execute_fetchall(
            f"SELECT {_TAPIS_COLUMNS} FROM tapis_tasks ORDER BY seq DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_decode_tapis(row) for row in rows]

    async def cancel_tapis_task(self, uuid: str, at: datetime) -> None:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            await conn.execute(
                "UPDATE tapis_tasks SET cancelled = coalesce(cancelled, ?) WHERE uuid = ?",
                (encode_time(at), uuid),
            )

    async def insert_token(self, token: ApiToken) -> None:
        writer = self._live_writer()
        row = (
            token.id,
            token.user,
            encode_json(dict(token.permissions)),
            token.comment,
            encode_time(token.created),
            encode_time(token.expires),
            None if token.revoked is None else encode_time(token.revoked),
            int(token.manage_tokens),
        )
        try:
            async with writer.transaction() as conn:
                await conn.execute(
                    f"INSERT INTO api_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
        except aiosqlite.IntegrityError as exc:
            raise ValueError(f"token id {token.id!r} is taken") from exc

    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        writer = self._live_writer()
        async with writer.transaction() as conn:
            rows = await conn.execute_fetchall(
                "UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL RETURNING id",
                (encode_time(at), token_id),
            )
        return bool(list(rows))

    # -- reads -----------------------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Transfer]:
        rows = await self._reader().execute_fetchall(sql, params)
        return [decode_row(row) for row in rows]

    async def get_transfer(self, transfer_id: int) -> Transfer | None:
        found = await self._fetch(f"{_SELECT} WHERE id = ?", (transfer_id,))
        return found[0] if found else None

    async def list_transfers(self, filt: TransferFilter) -> tuple[list[Transfer], int]:
        if filt.sort not in SORT_FIELDS:
            raise ValueError(f"cannot sort on {filt.sort!r}; allowed: {', '.join(SORT_FIELDS)}")
        where, params = _where(filt)
        direction = "DESC" if filt.descending else "ASC"
        order = f"id {direction}"
        if filt.sort != "id":
            order = f"{filt.sort} {direction}, {order}"
        # The count rides along as an uncorrelated sub-query (evaluated once): page and
        # total come from the same snapshot in one round trip.
        rows = list(
            await self._reader().execute_fetchall(
                f"SELECT {_COLS}, (SELECT count(*) FROM transfers{where}) "
                f"FROM transfers{where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*params, *params, filt.limit, filt.offset),
            )
        )
        if rows:
            return [decode_row(row[:-1]) for row in rows], int(rows[0][-1])
        # An empty page (e.g. an offset past the end) still reports the total.
        counted = list(
            await self._reader().execute_fetchall(f"SELECT count(*) FROM transfers{where}", params)
        )
        return [], int(counted[0][0])

    async def find_unfinished_upload(
        self, account: str, rule: str, filename: str
    ) -> Transfer | None:
        found = await self._fetch(
            f"{_SELECT} WHERE account = ? AND rule = ? AND dest_filename = ? "
            f"AND is_server = 1 AND is_send = 0 AND {_UNFINISHED} ORDER BY id DESC LIMIT 1",
            (account, rule, filename),
        )
        return found[0] if found else None

    async def due_transfers(self, now: datetime, limit: int) -> list[Transfer]:
        """PLANNED transfers whose start (or, without one, creation) and next attempt
        have passed, by start time then id. The bounds are inclusive."""
        at = encode_time(now)
        return await self._fetch(
            f"{_SELECT} WHERE {_PLANNED} AND {_DUE_AT} <= ? "
            "AND (next_attempt IS NULL OR next_attempt <= ?) "
            f"ORDER BY {_DUE_AT}, id LIMIT ?",
            (at, at, limit),
        )

    async def next_due_time(self) -> datetime | None:
        """The earliest time at which a PLANNED transfer is due: the later of its
        start (or creation) and its next attempt. It may be in the past."""
        rows = list(
            await self._reader().execute_fetchall(
                f"SELECT min(max({_DUE_AT}, coalesce(next_attempt, ''))) "
                f"FROM transfers WHERE {_PLANNED}"
            )
        )
        value = rows[0][0]
        return None if value is None else datetime.fromisoformat(value).astimezone(UTC)

    async def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Audit entries, newest first: dicts with `id`, `at` (aware UTC datetime),
        `who`, `action`, `target` and `details` (a dict)."""
        rows = await self._reader().execute_fetchall(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY id DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [decode_audit(row) for row in rows]

    async def next_expiry(self) -> datetime | None:
        rows = list(
            await self._reader().execute_fetchall(
                f"SELECT min(next_attempt) FROM transfers WHERE {_AVAILABLE}"
            )
        )
        value = rows[0][0]
        return None if value is None else decode_time(value)

    async def get_token(self, token_id: str) -> ApiToken | None:
        rows = list(
            await self._reader().execute_fetchall(
                f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,)
            )
        )
        return _decode_token(rows[0]) if rows else None

    async def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        where, params = ("", ()) if user is None else (" WHERE user = ?", (user,))
        rows = await self._reader().execute_fetchall(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens{where} ORDER BY created DESC, id",
            params,
        )
        return [_decode_token(row) for row in rows]


def _where(filt: TransferFilter) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (with a leading space, or empty) and its parameters."""
    terms: list[str] = []
    params: list[Any] = []
    if filt.statuses:
        terms.append(f"status IN ({', '.join('?' for _ in filt.statuses)})")
        params.extend(Status(s).value for s in filt.statuses)
    for column in ("rule", "partner", "account", "follow_id", "parent_id"):
        value = getattr(filt, column)
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    if filt.is_server is not None:
        terms.append("is_server = ?")
        params.append(int(filt.is_server))
    if filt.start_after is not None:
        terms.append("start >= ?")
        params.append(encode_time(filt.start_after))
    if filt.stop_before is not None:
        terms.append("stop <= ?")
        params.append(encode_time(filt.stop_before))
    if filt.filename is not None:
        terms.append("(src_filename = ? OR dest_filename = ?)")
        params.extend((filt.filename, filt.filename))
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


def _decode_tapis(row: Any) -> TapisTask:
    uuid, tag, username, created, elements, cancelled = row
    return TapisTask(
        uuid=uuid,
        tag=tag,
        username=username,
        created=decode_time(created),
        elements=json.loads(elements),
        cancelled=None if cancelled is None else decode_time(cancelled),
    )


def _decode_token(row: Any) -> ApiToken:
    token_id, user, permissions, comment, created, expires, revoked, manage_tokens = row
    return ApiToken(
        id=token_id,
        user=user,
        permissions=json.loads(permissions),
        comment=comment,
        created=decode_time(created),
        expires=decode_time(expires),
        revoked=None if revoked is None else decode_time(revoked),
        manage_tokens=bool(manage_tokens),
    )
