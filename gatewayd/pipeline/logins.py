"""Partners' logins to our servers: accounts, their password hashes and keys, and the
throttle, shared by every server of the gateway so that switching from SFTP to HTTP
gains an attacker nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from gatewayd.config.schema import AccountConfig
from gatewayd.passwords import CredentialCache, DecoyHash, HashingBusy, PasswordHashing
from gatewayd.pipeline.auth_throttle import AuthThrottle, LoginThrottle

log = structlog.get_logger("gatewayd.server")

# A flood refused as busy is logged once per this many seconds, with the count.
_BUSY_LOG_INTERVAL = 5.0


def _public_key_id(key: str) -> tuple[str, str] | None:
    parts = key.split()
    return (parts[0], parts[1]) if len(parts) >= 2 else None


class Logins:
    """Checks partners' credentials against the configured accounts."""

    def __init__(
        self,
        accounts: Callable[[], dict[str, AccountConfig]],
        *,
        on_failure: Callable[[str, str], None] = lambda server, protocol: None,
        throttle: LoginThrottle | None = None,
        hashing: PasswordHashing | None = None,
    ) -> None:
        self._accounts = accounts
        self._on_failure = on_failure
        self.throttle: LoginThrottle = throttle or AuthThrottle()
        # Where passwords are checked: the gateway's worker processes (threads of its
        # own when none is given), never the event loop or the file I/O threads.
        self.hashing = hashing or PasswordHashing()
        # Verified passwords, briefly: HTTP clients send them on every request, and an
        # argon2 check costs ~0.1-0.2 s of CPU.
        self.credentials = CredentialCache()
        self.decoy = DecoyHash(self.hashing)
        self._busy_refused = 0
        self._busy_logged = -_BUSY_LOG_INTERVAL

    def account(self, login: str) -> AccountConfig | None:
        """The enabled account `login`, None otherwise."""
        found = self._accounts().get(login)
        return found if found is not None and found.enabled else None

    async def authenticate(
        self,
        login: str,
        *,
        server: str,
        protocol: str,
        password: str | None = None,
        public_key: str | None = None,
        remote: str = "",
    ) -> str | None:
        """The account name when the credential is good, None otherwise. Failed
        passwords are logged (never the secret), counted per address and account,
        answered ever slower, then refused for a while. When too many password checks
        are waiting already, a login is refused at once (not counted as a failure)."""
        where = {"server": server, "login": login, "remote": remote}
        if await self.throttle.check(remote, login):
            log.warning("login refused: too many failures", **where)
            self._on_failure(server, protocol)
            return None
        try:
            ok = await self._credential_ok(login, password, public_key)
        except HashingBusy as busy:
            self._refused_busy(busy, where)
            return None
        if ok:
            await self.throttle.record_success(remote, login)
            return login
        if password is None:
            # A refused key is not a failure: clients offer each of their keys in turn.
            return None
        delay = await self.throttle.record_failure(remote, login)
        log.warning("login failed", method="password", delay=delay, **where)
        self._on_failure(server, protocol)
        if delay:
            await asyncio.sleep(delay)
        return None

    async def _credential_ok(
        self, login: str, password: str | None, public_key: str | None
    ) -> bool:
        account = self.account(login)
        if password is not None:
            # The same work whether the login exists or not: an unknown, disabled or
            # password-less account is checked against a decoy, never answered at once.
            hashed = account.password if account is not None else None
            ok = await self.hashing.verify(
                hashed or await self.decoy.get(), password, self.credentials
            )
            return ok and hashed is not None
        if account is None or public_key is None:
            return False
        wanted = _public_key_id(public_key)
        return wanted is not None and wanted in {_public_key_id(k) for k in account.public_keys}

    def _refused_busy(self, busy: HashingBusy, where: dict[str, str]) -> None:
        self._busy_refused += 1
        now = time.monotonic()
        if now - self._busy_logged < _BUSY_LOG_INTERVAL:
            return
        log.warning(
            "login refused: too many password checks waiting",
            refused=self._busy_refused,
            waiting=self.hashing.pending,
            retry_after=round(busy.retry_after, 1),
            **where,
        )
        self._busy_refused, self._busy_logged = 0, now

    def authorized_keys(self, login: str) -> list[str]:
        account = self.account(login)
        return list(account.public_keys) if account is not None else []
