"""The statements of the node registry (issue 13), for both backends, and the
conversions of its rows. Times are the codec's UTC text, as everywhere in the store:
its fixed width keeps text order time order, so a lease compares as text."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from gatewayd.store.base import NodeRecord, NodeState
from gatewayd.store.codec import COLUMNS, decode_time, encode_time
from gatewayd.store.dialect import Dialect
from gatewayd.store.sql import CRASHED, CRASHED_FROM, LAUNCHED, status_list

_NODE_COLUMNS = (
    "name, host, pid, version, started, heartbeat, lease_seconds, marker, api, "
    "stopped, taken_over_by, taken_over_at"
)
_COLS = ", ".join(COLUMNS)


class NodeStatements:
    """Every statement of the node registry, as `dialect` writes it."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        # A restarted node replaces its old record: whatever happened to it before (a
        # takeover, a stop) is over once it runs again.
        self.register = q(
            "INSERT INTO nodes (name, host, pid, version, started, heartbeat, lease_seconds, "
            "marker, api, stopped, taken_over_by, taken_over_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL) "
            "ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
            "version = excluded.version, started = excluded.started, "
            "heartbeat = excluded.heartbeat, lease_seconds = excluded.lease_seconds, "
            "marker = excluded.marker, api = excluded.api, stopped = NULL, "
            "taken_over_by = NULL, taken_over_at = NULL"
        )
        # Fencing: a node taken over renews nothing, and learns it.
        self.renew = q(
            "UPDATE nodes SET heartbeat = ? WHERE name = ? AND taken_over_by IS NULL RETURNING name"
        )
        self.list = (
            f"SELECT {_NODE_COLUMNS}, (SELECT count(*) FROM transfers t "
            f"WHERE t.owner = nodes.name AND t.status = '{LAUNCHED.value}') "
            "FROM nodes ORDER BY name"
        )
        self.get = q(f"SELECT {_NODE_COLUMNS}, 0 FROM nodes WHERE name = ?")
        self.stop = q("UPDATE nodes SET stopped = ? WHERE name = ? AND taken_over_by IS NULL")
        self.lease_of = q("SELECT lease_seconds FROM nodes WHERE name = ?")
        # The claim of a dead node: the row lock makes it one node's, and the conditions
        # are checked again once the lock is had (a renewal that came first wins).
        self.claim = q(
            "UPDATE nodes SET taken_over_by = ?, taken_over_at = ? WHERE name = ? "
            "AND heartbeat < ? AND taken_over_by IS NULL AND stopped IS NULL RETURNING name"
        )
        # `interrupt_running` of a node that is not alone: its own rows only.
        self.interrupt_mine = q(
            "UPDATE transfers SET status = ?, updated = ? "
            f"WHERE status IN {status_list(CRASHED_FROM)} AND owner = ? RETURNING {_COLS}"
        )
        self.interrupt_taken = q(
            f"UPDATE transfers SET status = '{CRASHED.value}', taken_over_by = ?, "
            f"taken_over_at = ?, updated = ? WHERE owner = ? "
            f"AND status IN {status_list(CRASHED_FROM)} RETURNING {_COLS}"
        )


def record_values(node: NodeRecord) -> tuple[Any, ...]:
    """`register`'s parameters: the heartbeat starts at the start."""
    started = encode_time(node.started)
    return (
        node.name,
        node.host,
        node.pid,
        node.version,
        started,
        started,
        float(node.lease),
        node.marker,
        node.api,
    )


def expired_before(now: datetime, lease: float) -> str:
    """The heartbeat older than which a node of `lease` seconds is dead at `now`."""
    return encode_time(now - timedelta(seconds=lease))


def decode_node(row: Sequence[Any], now: datetime) -> NodeState:
    (name, host, pid, version, started, heartbeat, lease, marker, api) = row[:9]
    stopped, taken_by, taken_at, running = row[9:13]
    beat = decode_time(heartbeat)
    return NodeState(
        name=name,
        host=host,
        pid=int(pid),
        version=version,
        started=decode_time(started),
        heartbeat=beat,
        lease=float(lease),
        marker=marker,
        api=api,
        stopped=None if stopped is None else decode_time(stopped),
        taken_over_by=taken_by,
        taken_over_at=None if taken_at is None else decode_time(taken_at),
        running=int(running),
        alive=stopped is None
        and taken_by is None
        and beat >= now - timedelta(seconds=float(lease)),
    )
