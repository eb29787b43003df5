"""The statements of the cluster bus (node commands, notices, conditional saves, the
leases it reads), written once for both backends like `gatewayd.store.sql`, and the
payload of the notifications PostgreSQL carries between nodes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gatewayd.store.base import NodeCommand, NodeLease, Notice, Notification
from gatewayd.store.codec import UPDATE_COLUMNS, decode_time
from gatewayd.store.dialect import Dialect
from gatewayd.store.sql import LAUNCHABLE, status_list

# The one channel every node listens on; the payload says what it is about.
CHANNEL = "gatewayd"
COMMAND_COLUMNS = "id, node, transfer_id, action, sender, created, answered, result, error"
NOTICE_COLUMNS = "name, generation, changed, by_node"
# The result of a command its target has started on and not answered yet.
TAKEN = "TAKEN"


class BusStatements:
    """Every statement of the bus, as `dialect` writes it."""

    def __init__(self, dialect: Dialect) -> None:
        q = dialect.sql
        self.post_command = q(
            "INSERT INTO node_commands (node, transfer_id, action, sender, created) "
            f"VALUES (?, ?, ?, ?, ?) RETURNING {COMMAND_COLUMNS}"
        )
        self.pending_commands = q(
            f"SELECT {COMMAND_COLUMNS} FROM node_commands WHERE node = ? AND answered IS NULL "
            "ORDER BY id"
        )
        self.get_command = q(f"SELECT {COMMAND_COLUMNS} FROM node_commands WHERE id = ?")
        # Answered once: a command taken twice (a notification and a poll) keeps the
        # first answer.
        self.answer_command = q(
            "UPDATE node_commands SET answered = ?, result = ?, error = ? "
            f"WHERE id = ? AND answered IS NULL RETURNING {COMMAND_COLUMNS}"
        )
        # The target starts on it: from now on the sender waits for its answer.
        self.take_command = q(
            "UPDATE node_commands SET result = ? "
            "WHERE id = ? AND answered IS NULL AND result = '' RETURNING id"
        )
        # The sender gives up on it, only while the target has not started on it.
        self.withdraw_command = q(
            "UPDATE node_commands SET answered = ?, error = ? "
            "WHERE id = ? AND answered IS NULL AND result = '' RETURNING id"
        )
        self.purge_commands = q(
            "DELETE FROM node_commands WHERE answered IS NOT NULL AND answered < ?"
        )
        self.bump_notice = q(
            f"INSERT INTO cluster_notices ({NOTICE_COLUMNS}) VALUES (?, 1, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET generation = cluster_notices.generation + 1, "
            f"changed = excluded.changed, by_node = excluded.by_node RETURNING {NOTICE_COLUMNS}"
        )
        self.get_notice = q(f"SELECT {NOTICE_COLUMNS} FROM cluster_notices WHERE name = ?")
        self.node_lease = q(
            "SELECT name, heartbeat, lease_seconds, stopped FROM nodes WHERE name = ?"
        )
        # The scheduler's next wake-up when the due rows are held back by limits: the
        # earliest due time still to come, computed by the database (reading and
        # decoding every upcoming row made each look cost O(backlog)).
        due_at = f"{dialect.greatest}(coalesce(start, created), coalesce(next_attempt, ''))"
        self.next_due_after = q(
            f"SELECT min({due_at}) FROM transfers WHERE status IN {status_list(LAUNCHABLE)} "
            f"AND {due_at} > ?"
        )
        # A save that happens only while the row still has the status it was read with:
        # a row another node claimed meanwhile is left to it.
        self.save_if_status = q(
            f"UPDATE transfers SET {', '.join(f'{c} = ?' for c in UPDATE_COLUMNS)} "
            "WHERE id = ? AND status = ? RETURNING id"
        )


def decode_command(row: Sequence[Any]) -> NodeCommand:
    id_, node, transfer_id, action, sender, created, answered, result, error = row
    return NodeCommand(
        id=int(id_),
        node=node,
        transfer_id=int(transfer_id),
        action=action,
        sender=sender,
        created=decode_time(created),
        answered=None if answered is None else decode_time(answered),
        result=result,
        error=error,
    )


def decode_notice(row: Sequence[Any]) -> Notice:
    name, generation, changed, by_node = row
    return Notice(name, int(generation), decode_time(changed), by_node)


def decode_lease(row: Sequence[Any]) -> NodeLease:
    name, heartbeat, lease_seconds, stopped = row
    return NodeLease(
        name,
        decode_time(heartbeat),
        float(lease_seconds),
        None if stopped is None else decode_time(stopped),
    )


def encode_notification(n: Notification) -> str:
    return json.dumps({"kind": n.kind, "node": n.node, "value": n.value}, separators=(",", ":"))


def decode_notification(payload: str) -> Notification | None:
    """The notification a payload carries; None for one this version does not know."""
    try:
        data = json.loads(payload)
        return Notification(str(data["kind"]), str(data["node"]), str(data.get("value", "")))
    except (ValueError, KeyError, TypeError):
        return None
