"""Console sessions: random ids kept in this node's memory with an idle timeout and a
lifetime, each with its own CSRF token.

The cookie holds only the random id; the server keeps who it is and when it ends, so a
logout or an expiry ends it at once (a signed cookie could not be taken back). Sessions
live in the memory of the node that opened them: a restart logs everyone out, and behind
a load balancer over several nodes the balancer must keep a browser on one node.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "gatewayd_session"
CSRF_HEADER = "X-CSRF-Token"
IDLE_TIMEOUT = 30 * 60.0  # seconds without a request
LIFETIME = 12 * 3600.0  # seconds from the login, whatever the activity
# Sessions kept at most: logins are password checks (throttled), so this is reached
# only by many real logins; the oldest go first.
MAX_SESSIONS = 10_000


@dataclass
class Session:
    """One logged-in browser."""

    id: str
    user: str
    csrf: str
    opened: float  # monotonic seconds
    seen: float

    def csrf_ok(self, presented: str | None) -> bool:
        """Whether `presented` is this session's CSRF token (compared in constant time)."""
        return presented is not None and hmac.compare_digest(presented, self.csrf)


class SessionStore:
    """The sessions of one node."""

    def __init__(
        self,
        idle: float = IDLE_TIMEOUT,
        lifetime: float = LIFETIME,
        limit: int = MAX_SESSIONS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self._now = monotonic
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, user: str) -> Session:
        """A new session for `user` (already authenticated)."""
        self._purge()
        while len(self._sessions) >= self.limit:
            del self._sessions[next(iter(self._sessions))]  # dicts keep insertion order
        now = self._now()
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The live session of that id (its idle time restarts), else None."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._now()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.seen = now
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session still lasts, without counting this as activity (an open
        event stream does not keep a session alive)."""
        session = self._sessions.get(session_id)
        return session is not None and not self._expired(session, self._now())

    def close(self, session_id: str) -> bool:
        """End a session (logout); whether it existed."""
        return self._sessions.pop(session_id, None) is not None

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: until the session's lifetime ends."""
        return max(0, int(session.opened + self.lifetime - self._now()))

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.seen > self.idle or now - session.opened > self.lifetime

    def _purge(self) -> None:
        now = self._now()
        for sid in [s.id for s in self._sessions.values() if self._expired(s, now)]:
            del self._sessions[sid]
