"""The store's statements, written once for both backends (`Statements(dialect)`), and
the conversions of the rows that are not transfers (tokens, Tapis tasks)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gatewayd import lifecycle
from gatewayd.lifecycle import Event
from gatewayd.model import Status, Transfer
from gatewayd.store.base import (
    SORT_FIELDS,
    ApiToken,
    LiveWatched,
    TapisTask,
    TransferFilter,
    WatchedFile,
)
from gatewayd.store.codec import (
    AUDIT_COLUMNS,
    COLUMNS,
    UPDATE_COLUMNS,
    decode_time,
    encode_json,
    encode_time,
)
from gatewayd.store.dialect import Dialect


def status_list(statuses: Iterable[Status]) -> str:
    """An SQL list of status values (constants of the code, never input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


def placeholders(count: int) -> str:
    return ", ".join("?" for _ in range(count))


# The statuses the lifecycle's table gives the bulk queries (gatewayd.lifecycle).
LAUNCHABLE = lifecycle.sources(Event.LAUNCH)
LAUNCHED = lifecycle.after(Status.PLANNED, Event.LAUNCH)
CRASHED_FROM = lifecycle.sources(Event.CRASH)
CRASHED = lifecycle.after(Status.RUNNING, Event.CRASH)
RESUMED_FROM = Status.INTERRUPTED
RESUMED = lifecycle.after(RESUMED_FROM, Event.RESUME)
EXPIRED = lifecycle.after(Status.AVAILABLE, Event.EXPIRE)

COLS = ", ".join(COLUMNS)
# A planned transfer without a start time is due from its creation.
_DUE_AT = "coalesce(start, created)"
_PLANNED = f"status IN {status_list(LAUNCHABLE)}"
_DUE = f"{_PLANNED} AND {_DUE_AT} <= ? AND (next_attempt IS NULL OR next_attempt <= ?)"
_UNFINISHED = f"status NOT IN {status_list(lifecycle.FINAL)}"
_AVAILABLE = (
    f"status IN {status_list(lifecycle.sources(Event.EXPIRE))} AND next_attempt IS NOT NULL"
)
# `user` is quoted: a reserved word of PostgreSQL.
TOKEN_COLUMNS = 'id, "user", permissions, comment, created, expires, revoked, manage_tokens'
TAPIS_COLUMNS = "uuid, tag, username, created, elements, cancelled"
# Tables `gatewayd db copy` moves, with their columns in the order it reads them.
TABLES: dict[str, tuple[str, ...]] = {
    "transfers": COLUMNS,
    "audit": AUDIT_COLUMNS,
    "api_tokens": tuple(c.strip() for c in TOKEN_COLUMNS.split(",")),
    "tapis_tasks": ("seq", *(c.strip() for c in TAPIS_COLUMNS.split(","))),
    "watched_files": (
        "id",
        "watcher",
        "path",
        "inode",
        "size",
        "mtime_ns",
        "transfers",
        "taken",
        "node",
        "gone",
    ),
    # -- schedules and pollers
    "schedule_state": ("name", "since", "paused", "last_error", "updated"),
    "schedule_runs": ("schedule", "fire_time", "transfer_id", "node", "created"),
    "poller_files": (
        "poller",
        "name",
        "size",
        "mtime",
        "transfer_id",
        "node",
        "created",
        "gone",
    ),
    # -- the automation's shared state (pause, a poller's first looks)
    "automation_state": ("kind", "name", "paused", "paused_by", "paused_at"),
    "poller_seen": ("poller", "name", "size", "mtime", "seen"),
}
WATCHED_COLUMNS = ", ".join(TABLES["watched_files"])


class Statements:
    """Every statement of the store, as `dialect` writes it."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        q = dialect.sql
        self.select = f"SELECT {COLS} FROM transfers"
        self.insert = q(f"INSERT INTO transfers ({COLS}) VALUES ({placeholders(len(COLUMNS))})")
        self.update = q(
            f"UPDATE transfers SET {', '.join(f'{c} = ?' for c in UPDATE_COLUMNS)} WHERE id = ?"
        )
        self.insert_audit = q(
            f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS[1:])}) "
            f"VALUES ({placeholders(len(AUDIT_COLUMNS) - 1)})"
        )
        self.get_transfer = q(f"{self.select} WHERE id = ?")
        self.interrupt_all = q(
            f"UPDATE transfers SET status = ?, updated = ? "
            f"WHERE status IN {status_list(CRASHED_FROM)} RETURNING {COLS}"
        )
        # Several nodes share the database: each takes back only the rows it ran (and
        # those nobody owns: copied from SQLite, or from before owners were recorded).
        self.interrupt_owned = q(
            f"UPDATE transfers SET status = ?, updated = ? "
            f"WHERE status IN {status_list(CRASHED_FROM)} AND (owner = ? OR owner IS NULL) "
            f"RETURNING {COLS}"
        )
        self.expire = q(
            "UPDATE transfers SET status = ?, error_code = ?, error_msg = ?, "
            f"error_step = ?, stop = ?, updated = ? WHERE {_AVAILABLE} "
            f"AND next_attempt <= ? RETURNING {COLS}"
        )
        self.find_unfinished_upload = q(
            f"{self.select} WHERE account = ? AND rule = ? AND dest_filename = ? "
            f"AND is_server = 1 AND is_send = 0 AND {_UNFINISHED} ORDER BY id DESC LIMIT 1"
        )
        self.unfinished_uploads = (
            "SELECT id, account, rule, dest_filename FROM transfers "
            f"WHERE is_server = 1 AND is_send = 0 AND {_UNFINISHED} AND account IS NOT NULL"
        )
        self.due = q(f"{self.select} WHERE {_DUE} ORDER BY {_DUE_AT}, id LIMIT ?")
        self.count_due = q(f"SELECT count(*) FROM transfers WHERE {_DUE}")
        self.next_due_time = (
            f"SELECT min({dialect.greatest}({_DUE_AT}, coalesce(next_attempt, ''))) "
            f"FROM transfers WHERE {_PLANNED}"
        )
        self.next_expiry = f"SELECT min(next_attempt) FROM transfers WHERE {_AVAILABLE}"
        self.temp_paths_in_use = (
            f"SELECT tmp_filepath FROM transfers WHERE {_UNFINISHED} AND tmp_filepath <> ''"
        )
        self.list_audit = q(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY id DESC LIMIT ? OFFSET ?"
        )
        self.insert_tapis = q(
            f"INSERT INTO tapis_tasks ({TAPIS_COLUMNS}) VALUES ({placeholders(6)})"
        )
        self.get_tapis = q(f"SELECT {TAPIS_COLUMNS} FROM tapis_tasks WHERE uuid = ?")
        self.list_tapis = q(
            f"SELECT {TAPIS_COLUMNS} FROM tapis_tasks ORDER BY seq DESC LIMIT ? OFFSET ?"
        )
        self.cancel_tapis = q(
            "UPDATE tapis_tasks SET cancelled = coalesce(cancelled, ?) WHERE uuid = ?"
        )
        self.insert_token = q(
            f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(8)})"
        )
        self.get_token = q(f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?")
        self.list_tokens = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created DESC, id"
        self.list_user_tokens = q(
            f'SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE "user" = ? ORDER BY created DESC, id'
        )
        self.revoke_token = q(
            "UPDATE api_tokens SET revoked = ? WHERE id = ? AND revoked IS NULL RETURNING id"
        )

        # -- watchers
        self.insert_watched = q(
            f"INSERT INTO watched_files ({', '.join(TABLES['watched_files'][1:])}) "
            f"VALUES ({placeholders(9)}) "
            "ON CONFLICT (watcher, path, inode, size, mtime_ns) DO NOTHING RETURNING id"
        )
        self.live_watched = q(
            "SELECT id, path, inode, size, mtime_ns FROM watched_files "
            "WHERE watcher = ? AND gone IS NULL AND id > ? ORDER BY id"
        )
        self.watched_gone = q("UPDATE watched_files SET gone = ? WHERE id = ? AND gone IS NULL")
        self.count_watched = q("SELECT count(*) FROM watched_files WHERE watcher = ?")

    def plan_interrupted(self, ids: int) -> str:
        """`ids` rows PLANNED if INTERRUPTED (parameters: updated, the ids)."""
        return self.dialect.sql(
            f"UPDATE transfers SET status = '{RESUMED.value}', next_attempt = NULL, "
            f"updated = ? WHERE id IN ({placeholders(ids)}) "
            f"AND status = '{RESUMED_FROM.value}' RETURNING {COLS}"
        )

    # -- claims ------------------------------------------------------------------------

    def claim_candidates(self, full: int, *, lock: bool) -> str:
        """Due rows oldest first (id, partner), leaving out the `full` partners given as
        parameters after the two times; the window's size comes last. `lock`: rows
        locked for the claim's transaction, skipping those another holds."""
        skip = f" AND (partner IS NULL OR partner NOT IN ({placeholders(full)}))" if full else ""
        locking = " FOR UPDATE SKIP LOCKED" if lock else ""
        return self.dialect.sql(
            f"SELECT id, partner FROM transfers WHERE {_DUE}{skip} "
            f"ORDER BY {_DUE_AT}, id LIMIT ?{locking}"
        )

    def running_per_partner(self, partners: int) -> str:
        """RUNNING rows of each of `partners` partners, whoever runs them."""
        return self.dialect.sql(
            f"SELECT partner, count(*) FROM transfers WHERE status = '{LAUNCHED.value}' "
            f"AND partner IN ({placeholders(partners)}) GROUP BY partner"
        )

    def launch(self, ids: int) -> str:
        """`ids` rows RUNNING, owned by the node (parameters: owner, updated, the ids)."""
        return self.dialect.sql(
            f"UPDATE transfers SET status = '{LAUNCHED.value}', owner = ?, updated = ? "
            f"WHERE id IN ({placeholders(ids)}) AND {_PLANNED} RETURNING {COLS}"
        )

    # -- listings ----------------------------------------------------------------------

    def list_transfers(self, filt: TransferFilter) -> tuple[str, str, tuple[Any, ...]]:
        """(page with total, count alone, parameters of the count) for a listing; the
        page takes the parameters twice, then the limit and the offset."""
        if filt.sort not in SORT_FIELDS:
            raise ValueError(f"cannot sort on {filt.sort!r}; allowed: {', '.join(SORT_FIELDS)}")
        where, params = where_clause(filt)
        direction = "DESC" if filt.descending else "ASC"
        order = f"id {direction}"
        if filt.sort != "id":
            # Written out: SQLite's default (empty values first going up), not PostgreSQL's.
            nulls = "NULLS LAST" if filt.descending else "NULLS FIRST"
            order = f"{filt.sort} {direction} {nulls}, {order}"
        # The count rides along as an uncorrelated sub-query (evaluated once): page and
        # total come from the same snapshot in one round trip.
        page = self.dialect.sql(
            f"SELECT {COLS}, (SELECT count(*) FROM transfers{where}) "
            f"FROM transfers{where} ORDER BY {order} LIMIT ? OFFSET ?"
        )
        count = self.dialect.sql(f"SELECT count(*) FROM transfers{where}")
        return page, count, params


def glob_to_like(pattern: str) -> str:
    """A file name pattern (`*`, `?`) as a LIKE pattern escaped with a backslash."""
    out = []
    for char in pattern:
        if char in "\\%_":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


def where_clause(filt: TransferFilter) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (with a leading space, or empty) and its parameters."""
    terms: list[str] = []
    params: list[Any] = []
    if filt.statuses:
        terms.append(f"status IN ({placeholders(len(filt.statuses))})")
        params.extend(Status(s).value for s in filt.statuses)
    for column in ("rule", "partner", "account", "follow_id", "parent_id", "owner"):
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
    if filt.is_send is not None:
        terms.append("is_send = ?")
        params.append(int(filt.is_send))
    if filt.protocol is not None:
        terms.append("protocol = ?")
        params.append(filt.protocol)
    if filt.filename_pattern is not None:
        like = glob_to_like(filt.filename_pattern)
        terms.append(
            "(lower(src_filename) LIKE lower(?) ESCAPE '\\' "
            "OR lower(dest_filename) LIKE lower(?) ESCAPE '\\')"
        )
        params.extend((like, like))
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


def encode_tapis(task: TapisTask) -> tuple[Any, ...]:
    """A task in `TAPIS_COLUMNS` order."""
    return (
        task.uuid,
        task.tag,
        task.username,
        encode_time(task.created),
        encode_json(task.elements),
        None if task.cancelled is None else encode_time(task.cancelled),
    )


def decode_tapis(row: Iterable[Any]) -> TapisTask:
    uuid, tag, username, created, elements, cancelled = row
    return TapisTask(
        uuid=uuid,
        tag=tag,
        username=username,
        created=decode_time(created),
        elements=json.loads(elements),
        cancelled=None if cancelled is None else decode_time(cancelled),
    )


def encode_token(token: ApiToken) -> tuple[Any, ...]:
    """A token in `TOKEN_COLUMNS` order."""
    return (
        token.id,
        token.user,
        encode_json(dict(token.permissions)),
        token.comment,
        encode_time(token.created),
        encode_time(token.expires),
        None if token.revoked is None else encode_time(token.revoked),
        int(token.manage_tokens),
    )


def decode_token(row: Iterable[Any]) -> ApiToken:
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


# -- watchers


def forget_unrecorded_ids(
    items: list[tuple[WatchedFile, list[Transfer]]], recorded: list[int]
) -> None:
    """`insert_watched`'s ids given back: the transfers of every item not in `recorded`
    (the indexes committed) were not inserted, so they have no id."""
    kept = set(recorded)
    for index, (_, transfers) in enumerate(items):
        if index not in kept:
            for t in transfers:
                t.id = None


def encode_watched(record: WatchedFile) -> tuple[Any, ...]:
    """The row of a watched file, without its id."""
    return (
        record.watcher,
        record.path,
        record.inode,
        record.size,
        record.mtime_ns,
        json.dumps(record.transfers),
        encode_time(record.taken),
        record.node,
        None if record.gone is None else encode_time(record.gone),
    )


def decode_live(row: Any) -> LiveWatched:
    return LiveWatched(int(row[0]), row[1], int(row[2]), int(row[3]), int(row[4]))
