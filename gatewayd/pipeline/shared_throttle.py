"""The login throttle of nodes sharing a PostgreSQL database: failures counted in the
database (`Store.add_login_failure`), so that guesses spread over the nodes add up and a
ban reached through one node holds on every node.

The policy is the in-memory throttle's (`gatewayd.pipeline.auth_throttle`); what
differs: a count runs from its key's first failure for one window (not a sliding
window), and times are the nodes' wall clocks (keep them in sync, as TLS and tokens
need anyway). Each login costs one read (both keys at once); each failure one upsert
per key; a good login a delete only when its account had failures. When the database
cannot be reached, the node counts on its own (in memory) until it can again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from gatewayd.pipeline.auth_throttle import (
    AuthThrottle,
    LoginThrottle,
    ThrottlePolicy,
    failure_delay,
    throttle_keys,
)
from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.server")

# Counts older than the window and the ban are dropped this often.
_PURGE_INTERVAL = 300.0
# A database outage is logged once per this many seconds.
_OUTAGE_LOG_INTERVAL = 60.0
# Accounts known to have failures recorded, so that a good login deletes only those.
_MAX_FAILED_ACCOUNTS = 10_000


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class SharedThrottle(LoginThrottle):
    """A `LoginThrottle` whose counts are in the store, under keys prefixed by `scope`
    (the partners' servers and the admin API count apart, as on one node)."""

    def __init__(
        self,
        store: Store,
        scope: str,
        policy: ThrottlePolicy | None = None,
        now: Callable[[], datetime] = _wall_clock,
    ) -> None:
        super().__init__(policy)
        self._store = store
        self._scope = scope
        self._now = now
        self._alone = AuthThrottle(self.policy)
        self._failed_accounts: set[str] = set()
        self._purged = time.monotonic()
        self._outage_logged = -_OUTAGE_LOG_INTERVAL

    def _key(self, kind: str, key: str) -> str:
        return f"{self._scope}:{kind}:{key}"

    def _limit(self, kind: str) -> int | None:
        policy = self.policy
        return policy.max_address_failures if kind == "address" else policy.max_account_failures

    def _outage(self, exc: Exception) -> AuthThrottle:
        now = time.monotonic()
        if now - self._outage_logged >= _OUTAGE_LOG_INTERVAL:
            self._outage_logged = now
            log.warning(
                "login throttle: the database cannot be reached, this node counts alone",
                error=f"{type(exc).__name__}: {exc}",
            )
        self._alone.policy = self.policy
        return self._alone

    async def check(self, remote: str, login: str) -> float:
        keys = {self._key(kind, key): kind for kind, key in throttle_keys(remote, login)}
        try:
            rows = await self._store.login_failures(list(keys))
        except Exception as exc:
            return await self._outage(exc).check(remote, login)
        now = self._now()
        ban = timedelta(seconds=self.policy.ban)
        left = 0.0
        for row in rows:
            kind = keys.get(row.key, "")
            if kind == "account":
                self._remember(row.key)
            limit = self._limit(kind)
            if limit is not None and row.failures >= limit:
                left = max(left, (row.last + ban - now).total_seconds())
        if left > 0:
            self.refused_total += 1
            return left
        return 0.0

    async def record_failure(self, remote: str, login: str) -> float:
        self.failures_total += 1
        policy = self.policy
        now = self._now()
        worst = 0
        try:
            for kind, key in throttle_keys(remote, login):
                counted = await self._store.add_login_failure(
                    self._key(kind, key),
                    now,
                    window_start=now - timedelta(seconds=policy.window),
                    ban_start=now - timedelta(seconds=policy.ban),
                    limit=self._limit(kind),
                )
                if kind == "account":
                    self._remember(counted.key)
                limit = self._limit(kind)
                if limit is None or counted.failures < limit:
                    # A key just banned counts no more (as in memory): the ban says enough.
                    worst = max(worst, counted.failures)
            await self._purge(now)
        except Exception as exc:
            return await self._outage(exc).record_failure(remote, login)
        return failure_delay(policy, worst)

    async def record_success(self, remote: str, login: str) -> None:
        await self._alone.record_success(remote, login)
        key = self._key("account", throttle_keys("", login)[0][1]) if login else ""
        if key not in self._failed_accounts:
            return
        try:
            await self._store.clear_login_failures(key)
        except Exception as exc:
            self._outage(exc)
            return
        self._failed_accounts.discard(key)

    def _remember(self, key: str) -> None:
        if len(self._failed_accounts) >= _MAX_FAILED_ACCOUNTS:
            self._failed_accounts.clear()  # a good login then leaves a count to expire
        self._failed_accounts.add(key)

    async def _purge(self, now: datetime) -> None:
        if time.monotonic() - self._purged < _PURGE_INTERVAL:
            return
        self._purged = time.monotonic()
        horizon = max(self.policy.window, self.policy.ban)
        await self._store.forget_login_failures(now - timedelta(seconds=horizon))


def login_throttle(
    store: Store,
    scope: str,
    *,
    shared: bool,
    policy: ThrottlePolicy | None = None,
    now: Callable[[], datetime] = _wall_clock,
) -> LoginThrottle:
    """The throttle of one node (`shared` false: in memory) or of all the nodes sharing
    `store`'s database."""
    if shared:
        return SharedThrottle(store, scope, policy, now)
    return AuthThrottle(policy)
