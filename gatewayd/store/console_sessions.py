"""The web console's sessions kept in the database (table `console_sessions`, migration
11), so that every node of a cluster knows them: one row per logged-in browser, keyed by
the SHA-256 of its cookie, with when it was opened and last seen.

Statements are written once for both backends, as the login throttle's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gatewayd.store.codec import decode_time, encode_time
from gatewayd.store.dialect import Dialect


@dataclass(frozen=True)
class ConsoleSessionRow:
    """A session as stored: `id` is the digest of the cookie, never the cookie."""

    id: str
    user: str
    opened: datetime
    seen: datetime


_COLUMNS = 'id, "user", opened, seen'


class ConsoleSessionStatements:
    """The statements in one database's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.insert = dialect.sql(f"INSERT INTO console_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?)")
        self.get = dialect.sql(f"SELECT {_COLUMNS} FROM console_sessions WHERE id = ?")
        # Only forward: two nodes seeing the same browser at once never move it back.
        self.touch = dialect.sql("UPDATE console_sessions SET seen = ? WHERE id = ? AND seen < ?")
        self.delete = dialect.sql("DELETE FROM console_sessions WHERE id = ? RETURNING id")
        self.delete_user = dialect.sql('DELETE FROM console_sessions WHERE "user" = ?')
        # The ended ones, and beyond the `keep` newest the oldest (a bound on logins).
        self.forget = dialect.sql(
            "DELETE FROM console_sessions WHERE seen < ? OR opened < ? OR opened < ("
            "SELECT opened FROM console_sessions ORDER BY opened DESC LIMIT 1 OFFSET ?)"
        )


def params(row: ConsoleSessionRow) -> tuple[str, str, str, str]:
    return row.id, row.user, encode_time(row.opened), encode_time(row.seen)


def decode(row: Any) -> ConsoleSessionRow:
    return ConsoleSessionRow(
        id=row[0], user=row[1], opened=decode_time(row[2]), seen=decode_time(row[3])
    )
