"""The login throttle: slower answers after failures, then a ban, per address and
account; and the core's authenticate() using it (logged without the secret)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from gatewayd.passwords import hash_password
from gatewayd.pipeline.auth_throttle import AuthThrottle, ThrottlePolicy
from tests.gateway_env import GatewayEnv


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = ThrottlePolicy(
    window=60, free_failures=2, base_delay=0.5, max_delay=4, max_address_failures=5,
    max_account_failures=8, ban=300,
)  # fmt: skip


def test_failures_slow_down_then_ban_the_address() -> None:
    clock = FakeClock()
    t = AuthThrottle(POLICY, clock)
    delays = [t.failure("10.0.0.1", f"user{i}") for i in range(4)]
    assert delays == [0, 0, 0.5, 1.0], "two free, then doubling"
    assert t.banned_for("10.0.0.1", "someone") == 0
    t.failure("10.0.0.1", "user9")  # the fifth from this address
    assert t.banned_for("10.0.0.1", "anyone") == pytest.approx(300)
    assert t.banned_for("10.0.0.2", "user0") == 0, "other addresses are not banned"
    clock.now += 301
    assert t.banned_for("10.0.0.1", "anyone") == 0, "bans expire"
    assert (t.failures_total, t.refused_total) == (5, 1)


def test_failures_per_account_from_many_addresses() -> None:
    clock = FakeClock()
    t = AuthThrottle(POLICY, clock)
    delays = [t.failure(f"10.0.0.{i}", "acme") for i in range(7)]
    assert delays[-1] == POLICY.max_delay, "capped"
    assert t.banned_for("10.9.9.9", "acme") == 0
    t.failure("10.0.0.99", "acme")  # the eighth for this account
    assert t.banned_for("10.9.9.9", "acme") > 0
    assert t.banned_for("10.9.9.9", "other") == 0


def test_old_failures_are_forgotten_and_success_clears_the_account() -> None:
    clock = FakeClock()
    t = AuthThrottle(POLICY, clock)
    for _ in range(4):
        t.failure("10.0.0.1", "acme")
    clock.now += 61
    assert t.failure("10.0.0.1", "acme") == 0, "the window slid past the old ones"
    for _ in range(3):
        t.failure("10.0.0.2", "bob")
    t.success("10.0.0.3", "bob")
    assert t.failure("10.0.0.3", "bob") == 0


def test_memory_is_bounded() -> None:
    t = AuthThrottle(ThrottlePolicy(max_keys=10), FakeClock())
    for i in range(100):
        t.failure(f"10.0.{i}.1", f"user{i}")
    assert len(t._counters) <= 10


async def test_authenticate_logs_counts_and_bans(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.accounts["acme"] = {"password": hash_password("right")}
    await env.start()
    try:
        ctx = env.server()
        ctx.logins.throttle.policy = ThrottlePolicy(
            free_failures=1, base_delay=0.01, max_delay=0.01, max_address_failures=3
        )
        with structlog.testing.capture_logs() as logs:
            assert await ctx.authenticate("acme", password="right", remote="10.1.1.1") == "acme"
            for _ in range(3):
                assert await ctx.authenticate("acme", password="wr0ng", remote="10.1.1.1") is None
            refused = await ctx.authenticate("acme", password="right", remote="10.1.1.1")
            elsewhere = await ctx.authenticate("acme", password="right", remote="10.1.1.2")
            key = await ctx.authenticate("acme", public_key="ssh-ed25519 AAAA", remote="10.1.1.2")
            await asyncio.sleep(0)
    finally:
        await env.stop()
    assert refused is None, "banned: even the right password is refused for a while"
    assert elsewhere == "acme" and key is None
    failed = [e for e in logs if e["event"] == "login failed"]
    assert len(failed) == 3 and failed[0]["login"] == "acme" and failed[0]["remote"] == "10.1.1.1"
    assert [e["event"] for e in logs].count("login refused: too many failures") == 1
    assert "wr0ng" not in repr(logs) and "right" not in repr(logs)
    assert ctx.logins.throttle.failures_total == 3, "a refused key offer is not a failure"


def test_accounts_may_be_slowed_down_without_ever_being_banned() -> None:
    clock = FakeClock()
    policy = ThrottlePolicy(
        window=60, free_failures=2, base_delay=0.5, max_delay=4, max_address_failures=5,
        max_account_failures=None, ban=300,
    )  # fmt: skip
    t = AuthThrottle(policy, clock)
    delays = [t.failure(f"10.0.0.{i}", "admin") for i in range(200)]
    assert delays[:4] == [0, 0, 0.5, 1.0] and delays[-1] == 4, "slowed down per account"
    assert t.banned_for("10.9.9.9", "admin") == 0, "never banned"
    assert t.banned_for("", "admin") == 0
    assert max(len(c.times) for c in t._counters.values()) <= 2 + 64, "bounded memory"
    for _ in range(5):
        t.failure("10.1.1.1", "someone")
    assert t.banned_for("10.1.1.1", "") > 0, "addresses still are"


def test_a_failure_without_a_login_counts_for_the_address_only() -> None:
    t = AuthThrottle(POLICY, FakeClock())
    for _ in range(5):
        t.failure("10.0.0.1", "")
    assert t.banned_for("10.0.0.1", "") > 0
    assert set(t._counters) == {("address", "10.0.0.1")}


def test_huge_logins_are_remembered_by_their_digest() -> None:
    t = AuthThrottle(POLICY, FakeClock())
    huge = "x" * 8000
    for _ in range(8):
        t.failure(f"10.0.0.{_}", huge)
    assert t.banned_for("10.9.9.9", huge) > 0, "the account is counted all the same"
    assert all(len(key) < 100 for _, key in t._counters)
    t.success("10.9.9.9", huge)
    assert ("account", huge) not in t._counters and len(t._counters) == 8
