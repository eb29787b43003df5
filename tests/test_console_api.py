"""The console's endpoints without a browser (an in-process gateway, real HTTP): the
session's cookie and CSRF token, its expiry, the live event stream and its end at
shutdown, the page's headers, and the transfer list's console filters."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.console.sessions import COOKIE
from tests.api_support import PASSWORD, ApiEnv, basic
from tests.gateway_env import make_file

MiB = 1 << 20


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    e = ApiEnv(tmp_path)
    e.users["reader"] = {"transfers": "r"}
    yield e
    await e.stop()


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies, for 127.0.0.1 too (as a browser does)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def _login(
    env: ApiEnv, session: aiohttp.ClientSession, user: str = "admin", password: str = PASSWORD
) -> Any:
    url = env.api.base + "/api/session"
    return await session.post(url, json={"user": user, "password": password})


async def test_login_cookie_csrf_and_logout(env: ApiEnv, browser: aiohttp.ClientSession) -> None:
    env.rule("in", "receive")
    await env.start()
    session = browser
    bad = await _login(env, session, password="wrong")
    assert bad.status == 401 and COOKIE not in bad.cookies
    assert "errors" in await bad.json()
    answer = await _login(env, session)
    assert answer.status == 201, await answer.text()
    body = await answer.json()
    morsel = answer.cookies[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and not morsel["secure"]
    assert int(morsel["max-age"]) > 3600 and morsel["path"] == "/"
    assert body["user"] == "admin" and body["csrfToken"] and body["timezone"]
    assert PASSWORD not in json.dumps(body)
    base = env.api.base
    # The client's jar now sends the cookie: reads need nothing else.
    async with session.get(base + "/api/transfers") as r:
        assert r.status == 200
    async with session.get(base + "/api/session") as r:
        assert (await r.json())["csrfToken"] == body["csrfToken"]
    made = await env.create(rule="in", partner="share", file="x.bin", start="2099-01-01T00:00:00Z")
    async with session.put(f"{base}/api/transfers/{made.id}/pause") as r:
        assert r.status == 403 and (await r.json())["errors"][0]["errorCode"] == "csrf"
    assert (await env.row(made.id)).status == "PLANNED"
    headers = {"X-CSRF-Token": body["csrfToken"]}
    async with session.put(f"{base}/api/transfers/{made.id}/pause", headers=headers) as r:
        assert r.status == 202
    async with session.delete(base + "/api/session", headers=headers) as r:
        assert r.status == 204
    async with session.get(base + "/api/transfers") as r:
        assert r.status == 401
    async with session.get(base + "/api/session") as r:
        assert r.status == 200 and (await r.json())["user"] is None
    audit = [(e["who"], e["action"]) for e in (await env.api.get("/api/audit"))["entries"]]
    assert ("admin", "session.login") in audit and ("admin", "session.logout") in audit
    assert ("admin", "transfer.pause") in audit


async def test_a_removed_user_loses_its_session(
    env: ApiEnv, browser: aiohttp.ClientSession
) -> None:
    await env.start()
    assert (await _login(env, browser, "reader")).status == 201
    async with browser.get(env.api.base + "/api/transfers") as r:
        assert r.status == 200
    env.users.pop("reader")
    env.gw.apply_config(env.load())
    async with browser.get(env.api.base + "/api/transfers") as r:
        assert r.status == 401


async def test_the_page_and_its_files_carry_a_strict_policy(env: ApiEnv) -> None:
    await env.start()
    session = env.api.session
    for path, kind in (
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        async with session.get(env.api.base + path) as r:
            assert r.status == 200 and r.content_type == kind, path
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp and r.headers["X-Frame-Options"] == "DENY"
    async with session.get(env.api.base + "/console/../gatewayd.yaml") as r:
        assert r.status == 404
    async with session.get(env.api.base + "/console/nope.js") as r:
        assert r.status == 404 and (await r.json())["errors"]
    page = (Path(__file__).parent.parent / "gatewayd/console/static/index.html").read_text()
    assert (
        "<script>" not in page
        and "style=" not in page
        and "http" not in page.split("<body>")[1].replace("http://www.w3.org", "")
    )


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "transfers":
            yield json.loads(line[5:])


async def test_the_event_stream_follows_a_running_transfer_and_ends_at_shutdown(
    env: ApiEnv,
) -> None:
    env.partners["share"]["max_rate"] = 2 * MiB
    env.rule("in", "receive")
    await env.start()
    make_file(env.share / "slow.bin", 6 * MiB)
    made = await env.create(rule="in", partner="share", file="slow.bin")
    url = env.api.base + "/api/transfers/events"
    auth = {"Authorization": basic("admin")}
    seen: list[dict[str, Any]] = []
    async with env.api.session.get(url, headers=auth) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        async with asyncio.timeout(20):
            async for snap in _events(r):
                rows = [t for t in snap["running"] if t["id"] == made.id]
                if rows:
                    seen.append(rows[0])
                if len(seen) >= 2 and seen[-1]["rate"] > 0:
                    break
        assert seen[-1]["progress"] > seen[0]["progress"] >= 0
        assert seen[-1]["filesize"] == 6 * MiB and seen[-1]["eta"] is not None
        assert snap["counts"]["RUNNING"] == 1 and snap["throughput"]
        # The daemon stops: the stream ends at once, not after a grace period.
        began = time.monotonic()
        stopping = asyncio.ensure_future(env.gw.stop(5))
        async with asyncio.timeout(5):
            async for _ in _events(r):
                pass
        await stopping
        assert time.monotonic() - began < 4
    await env.gw.store.close()
    env.gateway = None


async def test_the_lists_console_filters(env: ApiEnv) -> None:
    env.rule("in", "receive")
    env.rule("out", "send")
    await env.start()
    later = "2099-01-01T00:00:00Z"
    a = await env.create(rule="in", partner="share", file="Report_1.csv", start=later)
    b = await env.create(rule="out", partner="share", file="data%1.bin", start=later)

    async def ids(query: str) -> list[int]:
        return [t["id"] for t in (await env.api.get(f"/api/transfers?{query}"))["transfers"]]

    assert await ids("direction=receive") == [a.id]
    assert await ids("direction=send") == [b.id]
    assert await ids("protocol=local&sort=id+") == [a.id, b.id]
    assert await ids("protocol=sftp") == []
    assert await ids("file=report_*") == [a.id]  # case-insensitive
    assert await ids("file=data%25?.bin") == [b.id]  # % is a character, not a wildcard
    assert await ids("file=data%25") == []
    assert await ids("file=*1*&sort=id+") == [a.id, b.id]
    assert await ids("stop=2000-01-01T00:00:00Z") == []
    answer = await env.api.call("GET", "/api/transfers?direction=up&stop=soon")
    assert answer.status == 400 and sorted(e["field"] for e in answer.errors) == [
        "direction",
        "stop",
    ]


async def test_over_tls_the_cookie_is_secure(env: ApiEnv) -> None:
    from tests.test_api_tls import self_signed

    cert, key = self_signed(env.root)
    env.extra["api"] = {"tls_cert": str(cert), "tls_key": str(key)}
    await env.start()
    trusting = ssl.create_default_context(cafile=str(cert))
    base = env.api.base.replace("http://", "https://")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/", ssl=trusting) as r:
            assert r.status == 200 and "Content-Security-Policy" in r.headers
        body = {"user": "admin", "password": PASSWORD}
        async with session.post(base + "/api/session", json=body, ssl=trusting) as r:
            assert r.status == 201
            morsel = r.cookies[COOKIE]
            assert morsel["secure"] and morsel["httponly"] and morsel["samesite"] == "Strict"


async def test_the_event_stream_of_a_session_ends_with_the_session(
    env: ApiEnv, browser: aiohttp.ClientSession
) -> None:
    await env.start()
    login = await _login(env, browser)
    token = (await login.json())["csrfToken"]
    async with browser.get(env.api.base + "/api/transfers/events") as stream:
        assert stream.status == 200
        events = _events(stream)
        async with asyncio.timeout(10):
            await events.__anext__()  # it flows
            async with browser.delete(
                env.api.base + "/api/session", headers={"X-CSRF-Token": token}
            ) as r:
                assert r.status == 204
            async for _ in events:  # ends at the next sample
                pass
