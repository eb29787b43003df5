"""Password hashing and verification, and the credential cache."""

from __future__ import annotations

import threading

import bcrypt
import pytest
from argon2 import PasswordHasher

from gatewayd import passwords
from gatewayd.passwords import (
    CredentialCache,
    PasswordHashing,
    hash_password,
    needs_rehash,
    verify_password,
)

# Cheap parameters keep the tests fast; verification reads them from the hash.
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_argon2id_round_trip() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "correct horsE")
    assert not needs_rehash(hashed)
    assert hash_password("correct horse") != hashed  # salted


def test_cheap_argon2id_verifies_but_needs_rehash() -> None:
    hashed = CHEAP.hash("pw")
    assert verify_password(hashed, "pw")
    assert not verify_password(hashed, "")
    assert needs_rehash(hashed)


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_variants(prefix: str) -> None:
    hashed = bcrypt.hashpw(b"imported", bcrypt.gensalt(rounds=4)).decode()
    hashed = prefix + hashed[4:]
    assert verify_password(hashed, "imported")
    assert not verify_password(hashed, "imported!")
    assert needs_rehash(hashed)


def test_bcrypt_long_password_is_compared_on_its_first_72_bytes() -> None:
    # What bcrypt always did, and what hashes imported from other systems rely on.
    long = "p" * 72
    hashed = bcrypt.hashpw(long.encode(), bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(hashed, long + "ignored")
    assert not verify_password(hashed, "p" * 71)


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "plain-text",
        "$argon2id$",
        "$argon2id$v=19$m=8,t=1,p=1$bad$bad",
        "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$2b$04$short",
        "$2b$99$" + "a" * 53,
    ],
)
def test_malformed_hashes_never_match_nor_raise(hashed: str) -> None:
    assert verify_password(hashed, "anything") is False
    assert needs_rehash(hashed)


def test_non_string_input_is_not_a_match() -> None:
    assert verify_password(None, "x") is False  # type: ignore[arg-type]
    assert verify_password(CHEAP.hash("x"), None) is False  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_remembers_successes_for_ttl() -> None:
    clock = FakeClock()
    cache = CredentialCache(ttl=30, max_entries=10, clock=clock)
    hashed = CHEAP.hash("pw")
    assert not cache.hit(hashed, "pw")
    assert cache.verify(hashed, "pw")
    assert cache.hit(hashed, "pw")
    assert not cache.hit(hashed, "other")
    assert not cache.hit(CHEAP.hash("pw"), "pw")  # a new hash is a new credential
    clock.now += 29.9
    assert cache.hit(hashed, "pw")
    clock.now += 0.2
    assert not cache.hit(hashed, "pw")
    assert len(cache) == 0  # the expired entry is gone


def test_cache_does_not_remember_failures() -> None:
    cache = CredentialCache()
    hashed = CHEAP.hash("pw")
    assert not cache.verify(hashed, "wrong")
    assert len(cache) == 0


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    cache = CredentialCache(ttl=60, max_entries=3, clock=FakeClock())
    for name in ("a", "b", "c"):
        cache.remember("$hash$", name)
    assert cache.hit("$hash$", "a")  # a hit does not make it younger
    cache.remember("$hash$", "d")
    assert len(cache) == 3
    assert not cache.hit("$hash$", "a")
    assert all(cache.hit("$hash$", name) for name in ("b", "c", "d"))
    cache.clear()
    assert len(cache) == 0


def test_cache_holds_no_secret() -> None:
    cache = CredentialCache()
    hashed = CHEAP.hash("s3cret-pw")
    cache.remember(hashed, "s3cret-pw")
    assert "s3cret" not in repr(cache)
    keys = list(cache._entries)
    assert all(b"s3cret" not in key and len(key) == 32 for key in keys)


async def test_checks_run_on_threads_of_their_own_and_use_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = passwords._check

    def recording(hashed: str, password: str) -> bool:
        calls.append(threading.current_thread().name)
        return real(hashed, password)

    monkeypatch.setattr(passwords, "_check", recording)
    hashing = PasswordHashing(workers=2)  # not started: threads of its own
    cache = CredentialCache()
    hashed = CHEAP.hash("pw")
    assert await hashing.verify(hashed, "pw", cache)
    assert await hashing.verify(hashed, "pw", cache)
    assert not await hashing.verify(hashed, "bad", cache)
    assert not await hashing.verify(hashed, "bad", cache)
    assert await hashing.verify(hashed, "pw")  # no cache: always hashed
    assert len(calls) == 4  # the second good one came from the cache
    # Never on the event loop's thread, nor on the default executor's (file I/O).
    assert all(name.startswith("gatewayd-hashing") for name in calls), calls
    await hashing.close()
