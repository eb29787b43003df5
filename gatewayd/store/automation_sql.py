"""The statements of the automation's shared state (migration 0010): pause and resume
of watchers, pollers and schedules, a poller's first looks, the remote files a poller
no longer sees, and the retention's purge. Written once for both backends like
`gatewayd.store.sql`; only the purge of watched files differs (reading a JSON list)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatewayd import lifecycle
from gatewayd.store.base import PauseState
from gatewayd.store.codec import decode_time
from gatewayd.store.dialect import Dialect
from gatewayd.store.sql import status_list

PAUSE_COLUMNS = "kind, name, paused, paused_by, paused_at"
SEEN_COLUMNS = "poller, name, size, mtime, seen"
# A transfer that may still run (or run again): not DONE, not CANCELLED. A record whose
# transfer is missing (deleted) counts as finished.
_ACTIVE = f"t.status NOT IN {status_list(lifecycle.FINAL)}"


class AutomationStatements:
    """Every statement of the automation's shared state, as `dialect` writes it."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        self.set_paused = q(
            f"INSERT INTO automation_state ({PAUSE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
            # A resume keeps who paused it and when (shown until the next pause).
            "ON CONFLICT (kind, name) DO UPDATE SET paused = excluded.paused, "
            "paused_by = CASE WHEN excluded.paused = 1 THEN excluded.paused_by "
            "ELSE automation_state.paused_by END, "
            "paused_at = CASE WHEN excluded.paused = 1 THEN excluded.paused_at "
            "ELSE automation_state.paused_at END"
        )
        self.states = q(f"SELECT {PAUSE_COLUMNS} FROM automation_state WHERE kind = ?")
        self.seen = q("SELECT name, size, mtime FROM poller_seen WHERE poller = ?")
        self.seen_upsert = q(
            f"INSERT INTO poller_seen ({SEEN_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (poller, name) DO UPDATE SET size = excluded.size, "
            "mtime = excluded.mtime, seen = excluded.seen"
        )
        self.seen_drop = q("DELETE FROM poller_seen WHERE poller = ? AND name = ?")
        self.taken_with_gone = q(
            "SELECT name, size, mtime, gone FROM poller_files WHERE poller = ?"
        )
        self.taken_gone = q(
            "UPDATE poller_files SET gone = ? "
            "WHERE poller = ? AND name = ? AND size = ? AND mtime = ?"
        )
        # Schedules: every firing but the newest of each schedule (missed firings are
        # counted from it: gone, the latest due time would fire again).
        self.purge_runs = q(
            "DELETE FROM schedule_runs WHERE created < ? "
            "AND fire_time < (SELECT max(n.fire_time) FROM schedule_runs n "
            "WHERE n.schedule = schedule_runs.schedule) "
            "AND NOT EXISTS (SELECT 1 FROM transfers t "
            f"WHERE t.id = schedule_runs.transfer_id AND {_ACTIVE})"
        )
        # Pollers: only the files the poller's looks no longer list since `before`.
        self.purge_polled = q(
            "DELETE FROM poller_files WHERE gone IS NOT NULL AND gone < ? "
            "AND NOT EXISTS (SELECT 1 FROM transfers t "
            f"WHERE t.id = poller_files.transfer_id AND {_ACTIVE})"
        )
        # A poller's first looks that no second look followed (the poller deleted, or
        # paused, or the file refused): at worst, the file needs one more look.
        self.purge_seen = q("DELETE FROM poller_seen WHERE seen < ?")
        # Watchers: only the files seen gone since `before` (their path missing, or
        # holding another file) whose transfers (a JSON list of ids) all finished.
        elements = (
            "jsonb_array_elements_text(watched_files.transfers::jsonb) AS j(value)"
            if dialect.is_postgresql
            else "json_each(watched_files.transfers) AS j"
        )
        cast = "j.value::bigint" if dialect.is_postgresql else "j.value"
        self.purge_watched = q(
            "DELETE FROM watched_files WHERE gone IS NOT NULL AND gone < ? "
            f"AND NOT EXISTS (SELECT 1 FROM {elements} JOIN transfers t ON t.id = {cast} "
            f"WHERE {_ACTIVE})"
        )
        # `purge_automation`'s statements (each takes the time before which it purges),
        # by the table they purge, run in one commit.
        self.purges = (
            ("watched_files", self.purge_watched),
            ("poller_files", self.purge_polled),
            ("schedule_runs", self.purge_runs),
            ("poller_seen", self.purge_seen),
        )


def decode_pause(row: Sequence[Any]) -> PauseState:
    kind, name, paused, paused_by, paused_at = row
    return PauseState(
        kind=kind,
        name=name,
        paused=bool(paused),
        paused_by=paused_by,
        paused_at=None if paused_at is None else decode_time(paused_at),
    )


def listing_changes(
    rows: Sequence[Sequence[Any]], listed: set[tuple[str, int, str]], at: str
) -> list[tuple[Any, ...]]:
    """The `taken_gone` parameters after a look: records of `rows` (name, size, mtime,
    gone) not listed and not gone yet get `at`, gone ones listed again get NULL."""
    changes: list[tuple[Any, ...]] = []
    for name, size, mtime, gone in rows:
        present = (name, int(size), mtime) in listed
        if present and gone is not None:
            changes.append((None, name, int(size), mtime))
        elif not present and gone is None:
            changes.append((at, name, int(size), mtime))
    return changes
