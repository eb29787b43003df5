"""The statements of schedules (their firings and their shared state) and of remote
pollers (the remote files taken), written once for both backends like
`gatewayd.store.sql`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gatewayd.store.base import ScheduleState
from gatewayd.store.codec import decode_time
from gatewayd.store.dialect import Dialect

STATE_COLUMNS = "name, since, paused, last_error, updated"
RUN_COLUMNS = "schedule, fire_time, transfer_id, node, created"
TAKEN_COLUMNS = "poller, name, size, mtime, transfer_id, node, created"
# A state with what its firings say: the last one, its transfer, how many.
_STATE = (
    # Paused: automation_state says (migration 0010), shared with watchers and pollers.
    "SELECT s.name, s.since, coalesce((SELECT a.paused FROM automation_state a "
    "WHERE a.kind = 'schedule' AND a.name = s.name), 0), s.last_error, "
    "(SELECT max(r.fire_time) FROM schedule_runs r WHERE r.schedule = s.name), "
    "(SELECT r.transfer_id FROM schedule_runs r WHERE r.schedule = s.name "
    "ORDER BY r.fire_time DESC LIMIT 1), "
    "(SELECT count(*) FROM schedule_runs r WHERE r.schedule = s.name) "
    "FROM schedule_state s"
)


class ScheduleStatements:
    """Every statement of schedules, as `dialect` writes it."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        # Known from now on, unless it was already: `since` is never moved.
        self.ensure = q(
            f"INSERT INTO schedule_state ({STATE_COLUMNS}) VALUES (?, ?, 0, '', ?) "
            "ON CONFLICT (name) DO NOTHING"
        )
        self.states = f"{_STATE} ORDER BY s.name"
        self.state = q(f"{_STATE} WHERE s.name = ?")
        # The firing's record first: when it exists already (another node, a restart),
        # nothing is returned and no transfer is inserted.
        self.claim_fire = q(
            f"INSERT INTO schedule_runs ({RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (schedule, fire_time) DO NOTHING RETURNING schedule"
        )
        self.taken = q("SELECT name, size, mtime FROM poller_files WHERE poller = ?")
        self.claim_file = q(
            f"INSERT INTO poller_files ({TAKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (poller, name, size, mtime) DO NOTHING RETURNING poller"
        )
        self.set_error = q(
            "UPDATE schedule_state SET last_error = ?, updated = ? WHERE name = ? RETURNING name"
        )


def decode_state(row: Sequence[Any]) -> ScheduleState:
    name, since, paused, last_error, last_fire, last_transfer, fires = row
    return ScheduleState(
        name=name,
        since=decode_time(since),
        paused=bool(paused),
        last_error=last_error,
        last_fire=None if last_fire is None else decode_time(last_fire),
        last_transfer_id=last_transfer,
        fires=int(fires),
    )
