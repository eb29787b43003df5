"""Who is calling, and may they: HTTP Basic against the configured admin users, or a
bearer token (a signed JWT that `/api/tokens` issued and that is not revoked).

Permissions are letters per area: r(ead), w(rite), d(elete). A token carries at most
its user's permissions (it may be limited further when issued); the user's current
permissions apply at every use, so removing a user or a right also disarms its tokens.
Managing tokens (listing, revoking) is a right of password logins, and of tokens issued
with it explicitly (`manageTokens`).
Verified passwords are cached (`CredentialCache`) so that a client sending the same
credential on every request does not cost a full argon2 hash each time. Hashes are
computed by the gateway's `PasswordHashing` (its worker processes); when its queue is
full, a login is answered 503 with a Retry-After, without any hashing.

Failed logins are throttled (a `LoginThrottle` of the API's own: admin users are not
partners' accounts; counted in the database across nodes on PostgreSQL, in memory on
SQLite): answers to failures slow down per user and per address, and an address with
too many failures is refused (429) for a while, before any password check. Users are
never banned: anyone could lock out `admin` otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import structlog
from aiohttp import web

from gatewayd.api.errors import ApiError, Problem
from gatewayd.api.refusals import CALLER, ReportBound
from gatewayd.config.schema import ApiConfig, LoginThrottleConfig
from gatewayd.console.sessions import COOKIE, CSRF_HEADER, Session, SessionStore
from gatewayd.fsutil import create_exclusive
from gatewayd.passwords import CredentialCache, HashingBusy, PasswordHashing
from gatewayd.pipeline.auth_throttle import AuthThrottle, LoginThrottle, ThrottlePolicy
from gatewayd.pipeline.shared_throttle import login_throttle
from gatewayd.store.base import ApiToken, Store

log = structlog.get_logger("gatewayd.api")

AREAS = ("transfers", "servers", "partners", "rules", "users", "administration")
LETTERS = "rwd"
KEY_FILE = "api-signing.key"
ISSUER = "gatewayd"
ALGORITHM = "HS256"
REALM = 'realm="gatewayd"'
# Password checks running at once: each costs tens of MiB and a core for a while.
MAX_CONCURRENT_HASHES = 4
# Routes where `X-Tapis-Token` may carry a bearer token (the Tapis-compatible API).
TAPIS_PREFIX = "/v3/"
# The API's login throttle (the README gives these numbers): within 15 minutes, two
# failures are free, then each answer waits 0.5 s, 1 s, 2 s... up to 8 s (per user and
# per address, whichever has more); the tenth failure from one address bans it for 15
# minutes. Users are slowed down, never banned.
THROTTLE = ThrottlePolicy(
    window=900.0,
    free_failures=2,
    base_delay=0.5,
    max_delay=8.0,
    max_address_failures=10,
    max_account_failures=None,
    ban=900.0,
)


def throttle_policy(config: LoginThrottleConfig) -> ThrottlePolicy:
    """The policy `api.login_throttle` configures (its defaults are `THROTTLE`)."""
    return replace(THROTTLE, **config.model_dump())


# Longest login written to the log (an attacker's may be kilobytes long).
MAX_LOGGED_LOGIN = 200
# Requests that change nothing: a console session needs no CSRF token for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The console session a request came with (set by `authenticate`).
SESSION = web.RequestKey("gatewayd_console_session", Session)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an admin user, directly or through one of its tokens."""

    user: str
    permissions: Mapping[str, str] = field(default_factory=dict)
    token_id: str | None = None
    # May list and revoke tokens (its user's; everyone's with the `users` area).
    manages_tokens: bool = False

    def can(self, area: str, letter: str) -> bool:
        return letter in self.permissions.get(area, "")

    def require(self, area: str, letter: str) -> None:
        if not self.can(area, letter):
            verb = {"r": "read", "w": "write", "d": "delete"}[letter]
            raise ApiError(
                403,
                [Problem(f"user '{self.user}' may not {verb} {area}", "forbidden")],
            )

    @property
    def who(self) -> str:
        """How the audit log names the caller."""
        return self.user if self.token_id is None else f"{self.user} (token {self.token_id})"

    def require_token_management(self) -> None:
        if not self.manages_tokens:
            raise ApiError(
                403,
                [
                    Problem(
                        f"token {self.token_id} may not manage tokens (log in with the "
                        "password, or use a token issued with manageTokens)",
                        "forbidden",
                    )
                ],
            )


def intersect(a: Mapping[str, str], b: Mapping[str, str]) -> dict[str, str]:
    """The permissions present in both `a` and `b`, per area."""
    found = {}
    for area in AREAS:
        letters = "".join(x for x in LETTERS if x in a.get(area, "") and x in b.get(area, ""))
        if letters:
            found[area] = letters
    return found


def load_signing_key(state_dir: Path) -> bytes:
    """The key tokens are signed with: made at first start, kept in the state folder
    with mode 0600 (blocking: call it in a thread). Nodes sharing the state folder share
    the key, so a token one issued works on all: of nodes starting at once, the first
    to put its key in place wins and the others read that one."""
    path = state_dir / KEY_FILE
    if not path.exists():
        create_exclusive(path, secrets.token_bytes(32).hex().encode("ascii") + b"\n", 0o600)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o600)  # never readable by others, whoever loosened it
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < 32:
        raise ValueError(f"{path}: not a valid signing key; delete it to make a new one")
    return key


def unverified(login: str) -> str:
    """How the audit names a caller by a login it gave but did not prove."""
    return f"{login} (unverified)"


def claimed_caller(request: web.Request) -> str:
    """Who a request says it is, unverified: the login of its Basic credentials, else
    "(anonymous)" (a bearer token names nobody until it is checked)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    basic = _basic_credentials(value.strip()) if scheme.lower() == "basic" else None
    return unverified(basic[0]) if basic is not None else "(anonymous)"


def _basic_credentials(value: str) -> tuple[str, str] | None:
    """(login, password) of a Basic credential; None when it is malformed."""
    try:
        login, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


class Authenticator:
    """Checks the `Authorization` header of each request."""

    def __init__(
        self,
        api_config: Callable[[], ApiConfig],
        store: Store,
        key: bytes,
        now: Callable[[], datetime],
        cache: CredentialCache | None = None,
        hashing: PasswordHashing | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._config = api_config
        self._store = store
        self._key = key
        self._now = now
        self.cache = cache or CredentialCache(ttl=60.0)
        self.hashing = hashing or PasswordHashing()
        # The API's share of the hashing workers: admin logins never take them all.
        self._hash_slots = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
        self._decoy: str | None = None
        self.throttle: LoginThrottle = throttle or AuthThrottle(THROTTLE)
        # A banned address may knock thousands of times a second: one line a minute.
        self._ban_reports = ReportBound(burst=1, interval=60.0, total_burst=20, total_interval=1.0)
        # The web console's logged-in browsers (gatewayd.api.console).
        self.sessions = SessionStore(store, key, now)

    def __repr__(self) -> str:
        return f"Authenticator(cache={self.cache!r})"

    # ------------------------------------------------------------------ checking

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        tapis_token = request.headers.get("X-Tapis-Token", "").strip()
        scheme, _, value = header.strip().partition(" ")
        basic = _basic_credentials(value.strip()) if scheme.lower() == "basic" else None
        if basic is not None:
            request[CALLER] = unverified(basic[0])  # for the audit of a refusal
        await self._refuse_if_banned(request, basic[0] if basic is not None else "")
        if not header and tapis_token and request.path.startswith(TAPIS_PREFIX):
            # Tapis clients send their JWT there: one of our bearer tokens works.
            return await self._bearer(request, tapis_token)
        if not header and COOKIE in request.cookies:
            return await self._from_session(request, request.cookies[COOKIE])
        if not header:
            raise self._unauthorized("authentication required (HTTP Basic or a bearer token)")
        if scheme.lower() == "basic":
            if basic is None:
                raise self._unauthorized("malformed Basic credentials")
            return await self._basic(request, *basic)
        if scheme.lower() == "bearer":
            return await self._bearer(request, value.strip())
        raise self._unauthorized(f"unsupported authentication scheme '{scheme}'")

    async def login(self, request: web.Request, login: str, password: str) -> Principal:
        """Check a password given in a body (the console's login form) exactly like one
        given as HTTP Basic: the same throttle, hashing slots and audit."""
        request[CALLER] = unverified(login)
        await self._refuse_if_banned(request, login)
        return await self._basic(request, login, password)

    async def _from_session(self, request: web.Request, session_id: str) -> Principal:
        """The user of a console session, with the user's current permissions; a change
        needs the session's CSRF token in a header (a cross-site page can make the
        browser send the cookie, never read the token)."""
        session = await self.sessions.get(session_id)
        if session is None:
            raise self._unauthorized("the console session has ended: log in again")
        request[CALLER] = session.user
        if request.method not in SAFE_METHODS and not session.csrf_ok(
            request.headers.get(CSRF_HEADER)
        ):
            raise ApiError(
                403,
                [
                    Problem(
                        f"a change made with a console session needs its {CSRF_HEADER} header",
                        "csrf",
                    )
                ],
            )
        user = self._config().users.get(session.user)
        if user is None or not user.enabled:
            await self.sessions.close_user(session.user)
            raise self._unauthorized("the session's user no longer exists or is disabled")
        request[SESSION] = session
        return Principal(
            session.user, {str(a): p for a, p in user.permissions.items()}, manages_tokens=True
        )

    async def _refuse_if_banned(self, request: web.Request, login: str) -> None:
        """429 for an address banned by the throttle, before any credential is checked
        (`login`: the one tried, for the log)."""
        remote = request.remote or ""
        left = await self.throttle.check(remote, "")
        if not left:
            return
        retry = max(1, math.ceil(left))
        left_out = self._ban_reports.admit(remote)
        if left_out is not None:
            log.warning(
                "api login refused: too many failures from this address",
                remote=remote,
                login=login[:MAX_LOGGED_LOGIN],
                retry_after=retry,
                refused_unlogged=left_out,
            )
        raise ApiError(
            429,
            [
                Problem(
                    f"too many failed logins from {remote}: try again in {retry} s",
                    "too_many_requests",
                )
            ],
            headers={"Retry-After": str(retry)},
        )

    async def _failed(
        self, request: web.Request, message: str, *, login: str = "", token: bool = False
    ) -> ApiError:
        """Count a failed login (a bad token: against its address only), log it (never
        the secret), wait as the throttle says (an asyncio sleep: no hashing slot held,
        no other request blocked), and return the 401 to raise."""
        remote = request.remote or ""
        delay = await self.throttle.record_failure(remote, login)
        log.warning(
            "api login failed",
            method="token" if token else "password",
            login=login[:MAX_LOGGED_LOGIN],
            remote=remote,
            reason=message,
            delay=delay,
        )
        if delay:
            await asyncio.sleep(delay)
        return self._unauthorized(message, token_error=token)

    async def _basic(self, request: web.Request, login: str, password: str) -> Principal:
        user = self._config().users.get(login)
        if user is not None and not user.enabled:
            user = None  # answered like an unknown user (a hash is checked all the same)
        try:
            hashed = user.password if user is not None else await self._decoy_hash()
            if self.cache.hit(hashed, password):
                ok = True
            else:
                async with self._hash_slots:
                    # Requests queued for a slot while their address got banned stop here.
                    await self._refuse_if_banned(request, login)
                    ok = await self.hashing.verify(hashed, password, self.cache)
        except HashingBusy as busy:
            retry = max(1, math.ceil(busy.retry_after))
            raise ApiError(
                503,
                [Problem(f"too many logins waiting: try again in {retry} s", "busy")],
                headers={"Retry-After": str(retry)},
            ) from None
        if user is None or not ok:
            raise await self._failed(request, "bad user name or password", login=login)
        await self.throttle.record_success(request.remote or "", login)
        return Principal(
            login, {str(a): p for a, p in user.permissions.items()}, manages_tokens=True
        )

    async def _decoy_hash(self) -> str:
        # An unknown user costs a hash too, so that timing does not tell which exist.
        if self._decoy is None:
            self._decoy = await self.hashing.hash(secrets.token_hex(16))
        return self._decoy

    async def _bearer(self, request: web.Request, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                # Times are checked below on the gateway's clock (the tests' is manual).
                options={
                    "require": ["exp", "iat", "jti", "sub", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            raise await self._failed(request, "invalid token", token=True) from None
        stored = await self._store.get_token(str(claims["jti"]))
        if stored is None or stored.user != claims["sub"]:
            raise await self._failed(request, "invalid token", token=True)
        # Signed by us: not a guess. Expired, revoked or orphaned tokens (a forgotten
        # script) are refused without counting against the address.
        request[CALLER] = f"{stored.user} (token {stored.id})"
        if stored.revoked is not None:
            raise self._unauthorized("the token was revoked", token_error=True)
        if not stored.active(self._now()) or claims["exp"] <= self._now().timestamp():
            raise self._unauthorized("the token has expired", token_error=True)
        user = self._config().users.get(stored.user)
        if user is None:
            raise self._unauthorized("the token's user no longer exists", token_error=True)
        if not user.enabled:
            raise self._unauthorized("the token's user is disabled", token_error=True)
        own = {str(a): p for a, p in user.permissions.items()}
        return Principal(
            stored.user,
            intersect(own, stored.permissions),
            token_id=stored.id,
            manages_tokens=stored.manage_tokens,
        )

    @staticmethod
    def _unauthorized(message: str, *, token_error: bool = False) -> ApiError:
        bearer = f'Bearer {REALM}, error="invalid_token"' if token_error else f"Bearer {REALM}"
        error = ApiError(401, [Problem(message, "unauthorized")])
        # Both schemes are offered; aiohttp keeps repeated headers apart in a CIMultiDict,
        # but one header with both challenges is what most clients parse.
        error.headers["WWW-Authenticate"] = f'Basic {REALM}, charset="UTF-8", {bearer}'
        return error

    # ------------------------------------------------------------------ issuing

    async def issue(
        self,
        principal: Principal,
        lifetime: timedelta,
        permissions: Mapping[str, str] | None,
        comment: str,
        manage_tokens: bool = False,
    ) -> tuple[str, ApiToken]:
        """A new token for the caller's user, limited to `permissions` (default: all of
        the caller's), allowed to list and revoke tokens only with `manage_tokens`,
        recorded in the store; returns the JWT and its record."""
        allowed = dict(principal.permissions)
        granted = allowed if permissions is None else intersect(allowed, permissions)
        now = self._now().replace(microsecond=0)
        record = ApiToken(
            id=secrets.token_hex(8),
            user=principal.user,
            created=now,
            expires=now + lifetime,
            permissions=granted,
            comment=comment,
            manage_tokens=manage_tokens,
        )
        await self._store.insert_token(record)
        claims = {
            "iss": ISSUER,
            "sub": record.user,
            "jti": record.id,
            "iat": int(now.timestamp()),
            "exp": int(record.expires.timestamp()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), record


async def open_authenticator(
    api_config: Callable[[], ApiConfig],
    store: Store,
    state_dir: Path,
    now: Callable[[], datetime],
    hashing: PasswordHashing | None = None,
    shared: bool = False,
) -> Authenticator:
    """The API's authenticator; with `shared` (nodes share the database) its login
    throttle counts the failures of every node."""
    key = await asyncio.to_thread(load_signing_key, state_dir)
    throttle = login_throttle(
        store, "api", shared=shared, policy=throttle_policy(api_config().login_throttle)
    )
    return Authenticator(api_config, store, key, now, hashing=hashing, throttle=throttle)
