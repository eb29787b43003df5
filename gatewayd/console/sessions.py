"""Console sessions: random ids with an idle timeout and a lifetime, kept in the
database, so that every node of a cluster knows them.

The cookie holds only the random id; the database keeps its SHA-256 digest, who it is
and when it was opened and last seen, so a logout or an expiry ends it at once on every
node (a signed cookie could not be taken back), a restart or the loss of a node logs
nobody out, and whoever reads the database cannot log in with what it holds. Each
session's CSRF token is derived from its id with the API's signing key (shared by the
nodes): nothing more to store, the same on every node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from gatewayd.store import Store
from gatewayd.store.console_sessions import ConsoleSessionRow

COOKIE = "gatewayd_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = 30 * 60.0  # seconds without a request
LIFETIME = 12 * 3600.0  # seconds from the login, whatever the activity
# Sessions kept at most: logins are password checks (throttled), so this is reached
# only by many real logins; the oldest go first.
MAX_SESSIONS = 10_000
# A session's last activity is written at most this often (a fraction of the idle
# timeout): the console's every request would otherwise be a database write.
TOUCH_SHARE = 0.02


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    user: str
    csrf: str
    opened: datetime

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether `presented` is this session's CSRF token (compared in constant time)."""
        return presented is not None and hmac.compare_digest(presented, self.csrf)


def digest(session_id: str) -> str:
    """What the database keeps of a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionStore:
    """The console's sessions, in the database every node shares."""

    def __init__(
        self,
        store: Store,
        key: bytes,
        now: Callable[[], datetime],
        idle: float = IDLE_TIMEOUT,
        lifetime: float = LIFETIME,
        limit: int = MAX_SESSIONS,
    ) -> None:
        self.idle = timedelta(seconds=idle)
        self.lifetime = timedelta(seconds=lifetime)
        self.limit = limit
        self._store = store
        self._key = key
        self._now = now

    async def open(self, user: str) -> Session:
        """A new session for `user` (already authenticated); ended ones are dropped."""
        now = self._now()
        await self._store.forget_console_sessions(
            now - self.idle, now - self.lifetime, keep=max(0, self.limit - 1)
        )
        session_id = secrets.token_urlsafe(32)
        await self._store.insert_console_session(
            ConsoleSessionRow(digest(session_id), user, now, now)
        )
        return self._session(session_id, user, now)

    async def get(self, session_id: str) -> Session | None:
        """The live session of that id (its idle time restarts), else None."""
        row = await self._store.get_console_session(digest(session_id))
        if row is None:
            return None
        now = self._now()
        if self._expired(row, now):
            await self._store.delete_console_session(row.id)
            return None
        if now - row.seen > self.idle * TOUCH_SHARE:
            await self._store.touch_console_session(row.id, now)
        return self._session(session_id, row.user, row.opened)

    async def alive(self, session_id: str) -> bool:
        """Whether the session still lasts, without counting this as activity (an open
        event stream does not keep a session alive)."""
        row = await self._store.get_console_session(digest(session_id))
        return row is not None and not self._expired(row, self._now())

    async def close(self, session_id: str) -> bool:
        """End a session (logout), on every node; whether it existed."""
        return await self._store.delete_console_session(digest(session_id))

    async def close_user(self, user: str) -> None:
        """End every session of `user` (removed or disabled)."""
        await self._store.delete_user_console_sessions(user)

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: until the session's lifetime ends."""
        left = session.opened + self.lifetime - self._now()
        return max(0, int(left.total_seconds()))

    def _session(self, session_id: str, user: str, opened: datetime) -> Session:
        csrf = hmac.new(self._key, b"console-csrf:" + session_id.encode(), "sha256")
        return Session(session_id, user, csrf.hexdigest(), opened)

    def _expired(self, row: ConsoleSessionRow, now: datetime) -> bool:
        return now - row.seen > self.idle or now - row.opened > self.lifetime
