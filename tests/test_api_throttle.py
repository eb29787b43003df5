"""The admin API's login throttle, over real HTTP: failed Basic logins (and bad bearer
tokens) slow the answers down per user and per address, then ban the address (429 with
Retry-After, before any password check); users are never banned; the slow-down blocks
nothing else; API users are counted apart from partners' accounts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

import gatewayd.passwords
from gatewayd.api.auth import MAX_CONCURRENT_HASHES, THROTTLE
from gatewayd.pipeline.auth_throttle import AuthThrottle, ThrottlePolicy
from tests.api_support import PASSWORD, ApiEnv, basic, password_hash

# 127.0.0.0/8 is all loopback on Linux: a second address to be another client.
HOME, OTHER = "127.0.0.1", "127.0.0.2"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    seconds: float


async def call(
    env: ApiEnv, auth: str | None, *, source: str = HOME, method: str = "GET",
    path: str = "/api/about",
) -> Reply:  # fmt: skip
    """One request from `source` (a connection of its own, so that the address holds)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    headers = {"Authorization": auth} if auth else {}
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        async with session.request(method, env.api.base + path, headers=headers) as r:
            text = await r.text()
            seconds = time.monotonic() - started
            return Reply(r.status, r.headers, json.loads(text) if text else None, seconds)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("inbox", "receive")
    yield environment
    await environment.stop()


def throttle(env: ApiEnv, policy: ThrottlePolicy, clock: FakeClock | None = None) -> AuthThrottle:
    """Give the running API a throttle with quicker numbers (and a clock of the test's)."""
    assert env.gw.api is not None and env.gw.api.auth is not None
    found = env.gw.api.auth.throttle = AuthThrottle(policy, clock or time.monotonic)
    return found


QUICK = ThrottlePolicy(
    window=60, free_failures=2, base_delay=0.4, max_delay=0.8, max_address_failures=5,
    max_account_failures=None, ban=300,
)  # fmt: skip
# Well below the shortest delay, well above a loopback request with a test hash.
PROMPT = 0.3


def test_the_api_policy_bans_addresses_only() -> None:
    # The numbers the README gives.
    assert (THROTTLE.free_failures, THROTTLE.base_delay, THROTTLE.max_delay) == (2, 0.5, 8.0)
    assert (THROTTLE.max_address_failures, THROTTLE.ban, THROTTLE.window) == (10, 900, 900)
    assert THROTTLE.max_account_failures is None


async def test_wrong_passwords_slow_down_then_ban_the_address(env: ApiEnv) -> None:
    await env.start()
    clock = FakeClock()
    throttle(env, QUICK, clock)
    with structlog.testing.capture_logs() as logs:
        replies = [await call(env, basic("admin", f"guess-{i}")) for i in range(5)]
        assert [r.status for r in replies] == [401] * 5
        # Two free failures, then 0.4 s, 0.8 s, 0.8 s (capped).
        assert all(r.seconds < PROMPT for r in replies[:2]), [r.seconds for r in replies]
        waits = zip(replies[2:], (0.4, 0.8, 0.8), strict=True)
        assert all(r.seconds >= d - 0.01 for r, d in waits), [r.seconds for r in replies]

        # The fifth failure banned the address: even the right password gets 429, and
        # is not even checked.
        before = gatewayd.passwords.verification_count()
        banned = await call(env, basic("admin"))
        assert banned.status == 429, banned.body
        assert banned.headers["Retry-After"] == "300"
        assert [e["errorCode"] for e in banned.body["errors"]] == ["too_many_requests"]
        assert "127.0.0.1" in banned.body["errors"][0]["message"]
        checked = gatewayd.passwords.verification_count()
        assert checked == before, "a banned address's password is never checked"
        token_try = await call(env, "Bearer whatever")
        assert token_try.status == 429, "whatever the scheme"

        # The same user from another address is not banned (users never are).
        assert (await call(env, basic("admin"), source=OTHER)).status == 200
        clock.now += 301
        assert (await call(env, basic("admin"))).status == 200, "the ban expired"

    failed = [e for e in logs if e["event"] == "api login failed"]
    assert [(e["login"], e["remote"]) for e in failed] == [("admin", HOME)] * 5
    refused = [e for e in logs if e["event"].startswith("api login refused")]
    # One line a minute per address (the bearer attempt was counted, not logged).
    assert len(refused) == 1 and refused[0]["remote"] == HOME and refused[0]["login"] == "admin"
    assert "guess" not in repr(logs) and PASSWORD not in repr(logs)


async def test_a_flood_from_a_banned_address_is_logged_sparingly(env: ApiEnv) -> None:
    await env.start()
    throttle(env, ThrottlePolicy(free_failures=0, base_delay=0, max_address_failures=1))
    with structlog.testing.capture_logs() as logs:
        assert (await call(env, basic("admin", "nope"))).status == 401
        statuses = {(await call(env, basic("admin"))).status for _ in range(30)}
    assert statuses == {429}
    refused = [e for e in logs if e["event"].startswith("api login refused")]
    assert len(refused) == 1, "one line a minute per address, not one per request"


async def test_users_are_slowed_down_from_any_address_but_never_banned(env: ApiEnv) -> None:
    await env.start()
    policy = ThrottlePolicy(
        free_failures=2, base_delay=0.5, max_delay=0.5, max_address_failures=100,
        max_account_failures=None,
    )  # fmt: skip
    t = throttle(env, policy)
    sources = [f"127.0.0.{i}" for i in range(10, 16)]
    replies = [await call(env, basic("admin", "nope"), source=s) for s in sources]
    assert [r.status for r in replies] == [401] * 6
    # Each address is new: the user's count makes the later answers wait.
    assert all(r.seconds >= 0.49 for r in replies[2:]), [r.seconds for r in replies]
    assert t.banned_for("", "admin") == 0
    good = await call(env, basic("admin"), source="127.0.0.20")
    assert good.status == 200 and good.seconds < PROMPT, "the right password is never delayed"
    # A good login clears the user's count (not the addresses').
    again = await call(env, basic("admin", "typo"), source="127.0.0.21")
    assert again.status == 401 and again.seconds < PROMPT


async def test_the_slow_down_holds_no_hashing_slot_and_blocks_nobody(env: ApiEnv) -> None:
    env.users["ops"] = {"transfers": "r"}
    await env.start()
    t = throttle(env, ThrottlePolicy(free_failures=0, base_delay=2, max_delay=2))
    # More sleeping failures than there are hashing slots.
    sleepers = [
        asyncio.ensure_future(call(env, basic("admin", f"bad-{i}"), source=f"127.0.1.{i}"))
        for i in range(MAX_CONCURRENT_HASHES + 2)
    ]
    try:
        async with asyncio.timeout(10):
            while t.failures_total < len(sleepers):
                await asyncio.sleep(0.01)
        # Every failure is now waiting out its delay: a new login (its own hash, not
        # in the cache) is answered at once.
        started = time.monotonic()
        good = await call(env, basic("ops"), source="127.0.2.1", path="/api/transfers")
        assert good.status == 200
        assert time.monotonic() - started < 1.0
        assert not any(s.done() for s in sleepers), "the failures are still waiting"
    finally:
        slow = await asyncio.gather(*sleepers)
    assert all(r.status == 401 and r.seconds >= 2 for r in slow)


async def test_bad_bearer_tokens_count_against_the_address(env: ApiEnv) -> None:
    await env.start()
    throttle(env, ThrottlePolicy(free_failures=0, base_delay=0, max_address_failures=3))
    issued = await env.api.call("POST", "/api/tokens", json_body={"expiresIn": 60})
    token = issued.body["token"]
    # A token we signed that expired (a forgotten script) is refused, but it is no
    # guess: it does not count.
    env.clock.advance(61)
    for _ in range(5):
        assert (await call(env, f"Bearer {token}")).status == 401
    # Forged ones do.
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert [(await call(env, f"Bearer {forged}")).status for _ in range(3)] == [401] * 3
    assert (await call(env, basic("admin"))).status == 429
    assert (await call(env, basic("admin"), source=OTHER)).status == 200


async def test_api_users_are_counted_apart_from_partner_accounts(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.accounts["admin"] = {"password": password_hash()}  # a partner named like the user
    env.rule("inbox", "receive", allow={"accounts": ["admin"]})
    env.extra["servers"] = {"web": {"protocol": "http", "address": HOME, "port": 0}}
    try:
        await env.start()
        throttle(env, ThrottlePolicy(free_failures=0, base_delay=0, max_address_failures=3))
        for _ in range(3):
            assert (await call(env, basic("admin", "nope"))).status == 401
        assert (await call(env, basic("admin"))).status == 429
        # The partner `admin` logs in to our HTTP server from the same address.
        web = f"http://{HOME}:{env.gw.servers['web'].bound_port}/inbox/"
        async with (
            aiohttp.ClientSession() as session,
            session.get(web, headers={"Authorization": basic("admin")}) as r,
        ):
            assert r.status != 401, await r.text()
        assert env.gw.auth_throttle.failures_total == 0
        assert env.gw.api is not None and env.gw.api.auth is not None
        assert env.gw.api.auth.throttle is not env.gw.auth_throttle
    finally:
        await env.stop()
