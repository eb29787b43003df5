"""Password hashes: argon2id for new ones, bcrypt accepted for imported accounts.

Hashing is deliberately slow (tens to hundreds of milliseconds of CPU): never call
`verify_password` on the event loop; use `averify_password`, which runs it in a thread
and remembers recent successes in a `CredentialCache`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import bcrypt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher(type=Type.ID)
_ARGON2ID = "$argon2id$"
_BCRYPT = ("$2a$", "$2b$", "$2y$")
# bcrypt only ever looked at the first 72 bytes; hashes made elsewhere rely on that.
_BCRYPT_MAX = 72


def hash_password(password: str) -> str:
    """A new argon2id hash of `password` (with a random salt)."""
    return _HASHER.hash(password)


_verified = 0
_verified_lock = threading.Lock()


def verification_count() -> int:
    """How many passwords this process has checked against a hash (each costs the
    same, whether the login exists or not): for tests and metrics."""
    return _verified


def verify_password(hashed: str, password: str) -> bool:
    """True when `password` matches the argon2id or bcrypt hash `hashed`.

    Never raises: a malformed or unsupported hash is simply not a match.
    """
    global _verified
    with _verified_lock:
        _verified += 1
    if not isinstance(hashed, str) or not isinstance(password, str):
        return False
    if hashed.startswith(_ARGON2ID):
        try:
            return _HASHER.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return False
    if hashed.startswith(_BCRYPT):
        try:
            return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX], hashed.encode())
        except ValueError:
            return False
    return False


def needs_rehash(hashed: str) -> bool:
    """True when `hashed` should be replaced by a fresh `hash_password` (bcrypt, weaker
    argon2 parameters than ours, or not a hash we understand)."""
    if not hashed.startswith(_ARGON2ID):
        return True
    try:
        return _HASHER.check_needs_rehash(hashed)
    except (InvalidHashError, ValueError):
        return True


class CredentialCache:
    """Recently verified (hash, password) pairs, so that a client sending the same
    credential on every request does not cost a full hash each time.

    Only successes are remembered, for `ttl` seconds, at most `max_entries` of them (the
    oldest go first). Entries are keyed by an HMAC-SHA-256 of hash and password under a
    random per-cache key: the cache holds no password, and its keys are useless outside
    this process. A changed hash (new password) can never hit an old entry.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CredentialCache(entries={len(self._entries)}, ttl={self.ttl})"

    def _digest(self, hashed: str, password: str) -> bytes:
        message = hashed.encode() + b"\x00" + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, hashed: str, password: str) -> bool:
        """True when this pair was verified less than `ttl` seconds ago."""
        digest = self._digest(hashed, password)
        now = self._clock()
        with self._lock:
            expires = self._entries.get(digest)
            if expires is None:
                return False
            if expires <= now:
                del self._entries[digest]
                return False
            return True

    def remember(self, hashed: str, password: str) -> None:
        """Record a successful verification."""
        digest = self._digest(hashed, password)
        with self._lock:
            self._entries[digest] = self._clock() + self.ttl
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def verify(self, hashed: str, password: str) -> bool:
        """`verify_password`, skipping the hash for a recent success (blocking)."""
        if self.hit(hashed, password):
            return True
        ok = verify_password(hashed, password)
        if ok:
            self.remember(hashed, password)
        return ok


async def averify_password(
    hashed: str, password: str, cache: CredentialCache | None = None
) -> bool:
    """`verify_password` off the event loop, answered from `cache` when possible."""
    if cache is not None and cache.hit(hashed, password):
        return True
    ok = await asyncio.to_thread(verify_password, hashed, password)
    if ok and cache is not None:
        cache.remember(hashed, password)
    return ok


class DecoyHash:
    """A hash of a random password, made once, for logins that have no hash of their
    own (unknown or disabled accounts, accounts without a password): checking against
    it costs what a real check costs, so timing does not tell which logins exist."""

    def __init__(self) -> None:
        self._hash: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._hash is None:
                self._hash = await asyncio.to_thread(hash_password, os.urandom(16).hex())
        return self._hash
