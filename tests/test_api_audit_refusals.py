"""Refused API writes reach the audit log: who (the user, the login tried, or
anonymous), from where, what, the status and why; never a secret of the request; and a
flood of them is counted rather than recorded one by one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.api.refusals import ACTION, ReportBound
from gatewayd.pipeline.auth_throttle import AuthThrottle, ThrottlePolicy
from tests.api_support import PASSWORD, ApiEnv, basic


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.users["reader"] = {"transfers": "r"}
    environment.rule("inbox", "receive")
    yield environment
    await environment.stop()


async def refusals(env: ApiEnv) -> list[dict[str, Any]]:
    entries = await env.gw.store.list_audit(limit=1000)
    return [e for e in reversed(entries) if e["action"] == ACTION]


async def test_refused_writes_are_audited_with_who_where_what_and_why(env: ApiEnv) -> None:
    await env.start()
    api = env.api
    secret_comment = "do-not-record-this-comment"
    calls = [
        # 401: a wrong password (the login tried is named), no credentials at all.
        ("POST", "/api/transfers", {"auth": basic("admin", "hunter2-wrong")}, 401),
        ("DELETE", "/api/rules/inbox", {"auth": ""}, 401),
        # 403: a user known, without the right.
        ("PUT", "/api/transfers/1/pause", {"user": "reader"}, 403),
        # 400: a bad body; its values are not recorded, only the problems.
        ("POST", "/api/tokens", {"json_body": {"comment": secret_comment, "colour": 1}}, 400),
        # 404: no such route; 415: a body of the wrong type.
        ("POST", "/api/nowhere", {}, 404),
        ("POST", "/api/transfers", {"data": "x", "content_type": "text/plain"}, 415),
        # 405 is a refusal too; reads are never audited, refused or not.
        ("PATCH", "/api/about", {}, 405),
        ("GET", "/api/transfers", {"auth": basic("admin", "also-wrong")}, 401),
    ]
    for method, path, kw, status in calls:
        answer = await api.call(method, path, **kw)
        assert answer.status == status, (method, path, answer.text)

    found = await refusals(env)
    summary = [(e["who"], e["target"], e["details"]["method"], e["details"]["status"])
               for e in found]  # fmt: skip
    # A login given but not proven (a wrong password, or no route checked it) says so.
    assert summary == [
        ("admin (unverified)", "/api/transfers", "POST", 401),
        ("(anonymous)", "/api/rules/inbox", "DELETE", 401),
        ("reader", "/api/transfers/1/pause", "PUT", 403),
        ("admin", "/api/tokens", "POST", 400),
        ("admin (unverified)", "/api/nowhere", "POST", 404),
        ("admin", "/api/transfers", "POST", 415),
        ("admin (unverified)", "/api/about", "PATCH", 405),
    ]
    reasons = [e["details"]["reason"] for e in found]
    assert reasons[0] == "bad user name or password"
    assert "may not write transfers" in reasons[2]
    assert "unknown field 'colour'" in reasons[3]
    assert all(e["details"]["address"] == "127.0.0.1" for e in found)
    recorded = json.dumps(found, default=str)
    for secret in ("hunter2-wrong", PASSWORD, secret_comment):
        assert secret not in recorded
    # The audit listing shows them with the accepted changes.
    listing = await api.get("/api/audit")
    assert [e["action"] for e in listing["entries"]].count(ACTION) == len(found)


async def test_tokens_and_hostile_logins_are_named_safely(env: ApiEnv) -> None:
    await env.start()
    api = env.api
    issued = await api.call("POST", "/api/tokens", json_body={"permissions": {"transfers": "r"}})
    token = issued.body["token"]
    answer = await api.call("PUT", "/api/transfers/1/pause", token=token)
    assert answer.status == 403
    answer = await api.call("PUT", "/api/transfers/1/cancel", token="forged.jwt.x")
    assert answer.status == 401
    hostile = "ev\x1b[2Jil\u2028x"
    answer = await api.call("POST", "/api/transfers", auth=basic(hostile, "pw"))
    assert answer.status == 401
    found = await refusals(env)
    assert [e["who"] for e in found] == [
        f"admin (token {issued.body['id']})",
        "(anonymous)",
        "ev\\x1b[2Jil\\u2028x (unverified)",
    ]
    assert token not in json.dumps(found, default=str)


async def test_a_flood_of_refusals_is_counted_not_recorded(env: ApiEnv) -> None:
    await env.start()
    assert env.gw.api is not None and env.gw.api.refused_writes is not None
    clock = FakeClock()
    bound = ReportBound(burst=3, interval=60, total_burst=5, total_interval=1, clock=clock)
    env.gw.api.refused_writes.bound = bound
    for _ in range(50):
        assert (await env.api.call("POST", "/api/transfers", auth="")).status == 401
    assert len(await refusals(env)) == 3, "the burst, then counted only"
    clock.now += 60
    assert (await env.api.call("DELETE", "/api/rules/inbox", auth="")).status == 401
    found = await refusals(env)
    assert len(found) == 4 and found[-1]["details"]["leftOut"] == 47
    assert bound.suppressed_total == 47


async def test_a_banned_address_floods_nothing(env: ApiEnv) -> None:
    await env.start()
    assert env.gw.api is not None and env.gw.api.auth is not None
    env.gw.api.auth.throttle = AuthThrottle(
        ThrottlePolicy(free_failures=0, base_delay=0, max_address_failures=2)
    )
    for _ in range(2):
        assert (await env.api.call("POST", "/api/transfers", password="bad")).status == 401
    statuses = {(await env.api.call("POST", "/api/transfers")).status for _ in range(40)}
    assert statuses == {429}
    found = await refusals(env)
    # The default bound: 10 entries at once per address, then one a minute.
    assert len(found) == 10
    assert [e["details"]["status"] for e in found] == [401, 401] + [429] * 8
    assert "too many failed logins" in found[-1]["details"]["reason"]


def test_report_bound_counts_per_key_and_in_total() -> None:
    clock = FakeClock()
    bound = ReportBound(burst=2, interval=10, total_burst=3, total_interval=5, clock=clock)
    assert [bound.admit("a") for _ in range(3)] == [0, 0, None]
    assert [bound.admit("b") for _ in range(2)] == [0, None], "the total ran out"
    clock.now += 10
    assert bound.admit("a") == 1 and bound.admit("b") == 1
    bound = ReportBound(burst=1, interval=1, total_burst=100, total_interval=1, max_keys=3)
    for i in range(10):
        bound.admit(str(i))
    assert len(bound._keys) == 3
