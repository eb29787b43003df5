"""The login throttle's counts kept in the database (table `login_failures`, migration
7), so that nodes sharing it count failures together: one row per key (an address or an
account, prefixed by whose throttle it is), its failures since `first`, the `last` one.

A count starts again at 1 when its window has passed (the first failure is older than
the window) or, for a key that reached its limit (banned), once the ban has passed.
Both are decided in the one upsert, so that failures on several nodes at once all count.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gatewayd.store.codec import decode_time, encode_time
from gatewayd.store.dialect import Dialect

# A limit that is never reached: keys that are slowed down, never banned.
NO_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class LoginFailures:
    """A key's failures counted since `first` (the latest at `last`)."""

    key: str
    failures: int
    first: datetime
    last: datetime


_COLUMNS = "key, failures, first, last"
_RESTART = (
    "(login_failures.failures < ? AND login_failures.first < ?) "
    "OR (login_failures.failures >= ? AND login_failures.last < ?)"
)


class LoginFailureStatements:
    """The statements in one database's dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.add = dialect.sql(
            f"INSERT INTO login_failures ({_COLUMNS}) VALUES (?, 1, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET "
            f"failures = CASE WHEN {_RESTART} THEN 1 ELSE login_failures.failures + 1 END, "
            f"first = CASE WHEN {_RESTART} THEN excluded.first ELSE login_failures.first END, "
            f"last = excluded.last RETURNING {_COLUMNS}"
        )
        self.clear = dialect.sql("DELETE FROM login_failures WHERE key = ?")
        self.forget = dialect.sql("DELETE FROM login_failures WHERE last < ?")

    def select(self, count: int) -> str:
        return self.dialect.sql(
            f"SELECT {_COLUMNS} FROM login_failures WHERE key IN ({', '.join('?' * count)})"
        )


def add_params(
    key: str, now: datetime, window_start: datetime, ban_start: datetime, limit: int | None
) -> tuple[Any, ...]:
    """The parameters of `add` (see `Store.add_login_failure`)."""
    at = encode_time(now)
    most = NO_LIMIT if limit is None else limit
    restart = (most, encode_time(window_start), most, encode_time(ban_start))
    return (key, at, at, *restart, *restart)


def decode(row: Any) -> LoginFailures:
    key, failures, first, last = tuple(row)
    return LoginFailures(str(key), int(failures), decode_time(first), decode_time(last))
