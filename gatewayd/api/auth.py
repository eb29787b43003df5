"""Who is calling, and may they: HTTP Basic against the configured admin users, or a
bearer token (a signed JWT that `/api/tokens` issued and that is not revoked).

Permissions are letters per area: r(ead), w(rite), d(elete). A token carries at most
its user's permissions (it may be limited further when issued); the user's current
permissions apply at every use, so removing a user or a right also disarms its tokens.
Verified passwords are cached (`CredentialCache`) so that a client sending the same
credential on every request does not cost a full argon2 hash each time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import jwt
from aiohttp import web

from gatewayd.api.errors import ApiError, Problem
from gatewayd.config.schema import ApiConfig
from gatewayd.passwords import CredentialCache, averify_password, hash_password
from gatewayd.store.base import ApiToken, Store

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


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an admin user, directly or through one of its tokens."""

    user: str
    permissions: Mapping[str, str] = field(default_factory=dict)
    token_id: str | None = None

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
    with mode 0600 (blocking: call it in a thread)."""
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = secrets.token_bytes(32)
    try:
        os.write(fd, key.hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


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


class Authenticator:
    """Checks the `Authorization` header of each request."""

    def __init__(
        self,
        api_config: Callable[[], ApiConfig],
        store: Store,
        key: bytes,
        now: Callable[[], datetime],
        cache: CredentialCache | None = None,
    ) -> None:
        self._config = api_config
        self._store = store
        self._key = key
        self._now = now
        self.cache = cache or CredentialCache(ttl=60.0)
        self._hashing = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
        self._decoy: str | None = None

    def __repr__(self) -> str:
        return f"Authenticator(cache={self.cache!r})"

    # ------------------------------------------------------------------ checking

    async def authenticate(self, request: web.Request) -> Principal:
        header = request.headers.get("Authorization", "")
        tapis_token = request.headers.get("X-Tapis-Token", "").strip()
        if not header and tapis_token and request.path.startswith(TAPIS_PREFIX):
            # Tapis clients send their JWT there: one of our bearer tokens works.
            return await self._bearer(tapis_token)
        scheme, _, value = header.strip().partition(" ")
        if not header:
            raise self._unauthorized("authentication required (HTTP Basic or a bearer token)")
        if scheme.lower() == "basic":
            return await self._basic(value.strip())
        if scheme.lower() == "bearer":
            return await self._bearer(value.strip())
        raise self._unauthorized(f"unsupported authentication scheme '{scheme}'")

    async def _basic(self, value: str) -> Principal:
        try:
            login, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise self._unauthorized("malformed Basic credentials") from None
        if not sep:
            raise self._unauthorized("malformed Basic credentials")
        user = self._config().users.get(login)
        hashed = user.password if user is not None else await self._decoy_hash()
        if self.cache.hit(hashed, password):
            ok = True
        else:
            async with self._hashing:
                ok = await averify_password(hashed, password, self.cache)
        if user is None or not ok:
            raise self._unauthorized("bad user name or password")
        return Principal(login, {str(a): p for a, p in user.permissions.items()})

    async def _decoy_hash(self) -> str:
        # An unknown user costs a hash too, so that timing does not tell which exist.
        if self._decoy is None:
            self._decoy = await asyncio.to_thread(hash_password, secrets.token_hex(16))
        return self._decoy

    async def _bearer(self, token: str) -> Principal:
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
            raise self._unauthorized("invalid token", token_error=True) from None
        stored = await self._store.get_token(str(claims["jti"]))
        if stored is None or stored.user != claims["sub"]:
            raise self._unauthorized("invalid token", token_error=True)
        if stored.revoked is not None:
            raise self._unauthorized("the token was revoked", token_error=True)
        if not stored.active(self._now()) or claims["exp"] <= self._now().timestamp():
            raise self._unauthorized("the token has expired", token_error=True)
        user = self._config().users.get(stored.user)
        if user is None:
            raise self._unauthorized("the token's user no longer exists", token_error=True)
        own = {str(a): p for a, p in user.permissions.items()}
        return Principal(stored.user, intersect(own, stored.permissions), token_id=stored.id)

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
    ) -> tuple[str, ApiToken]:
        """A new token for the caller's user, limited to `permissions` (default: all of
        the caller's), recorded in the store; returns the JWT and its record."""
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
) -> Authenticator:
    key = await asyncio.to_thread(load_signing_key, state_dir)
    return Authenticator(api_config, store, key, now)
