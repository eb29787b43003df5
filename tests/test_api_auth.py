"""Authentication and permissions of the admin API: HTTP Basic against the configured
users (with the credential cache), bearer tokens (issue, use, limit, revoke, expire),
401 with WWW-Authenticate, and 403 for every route whose area a user may not touch."""

from __future__ import annotations

import base64
import json
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

import gatewayd.passwords
from gatewayd.api.auth import AREAS, KEY_FILE
from gatewayd.api.routes import ROUTES, Route
from tests.api_support import PASSWORD, Answer, ApiEnv, basic


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("inbox", "receive")
    yield environment
    await environment.stop()


# --------------------------------------------------------------------------- 401


async def test_missing_or_wrong_credentials_get_401_with_a_challenge(env: ApiEnv) -> None:
    await env.start()
    garbage = "Basic " + base64.b64encode(b"no-colon").decode()
    for auth in (
        "",
        basic("admin", "wrong"),
        basic("ghost", PASSWORD),
        "Basic !!!not base64",
        garbage,
        "Digest abc",
        "Bearer not.a.jwt",
    ):
        answer = await env.api.call("GET", "/api/transfers", auth=auth)
        assert (answer.status, answer.codes()) == (401, ["unauthorized"]), auth
        challenge = answer.headers["WWW-Authenticate"]
        assert challenge.startswith('Basic realm="gatewayd"') and "Bearer" in challenge
        assert PASSWORD not in answer.text
    answer = await env.api.call("GET", "/api/openapi.json", auth="")
    assert answer.status == 401


async def test_verified_passwords_are_cached(env: ApiEnv) -> None:
    await env.start()
    before = gatewayd.passwords.verification_count()
    for _ in range(5):
        assert (await env.api.call("GET", "/api/transfers")).status == 200
    good = gatewayd.passwords.verification_count() - before
    assert good <= 1, "one hash at most; the cache answers the others"
    for _ in range(3):
        assert (await env.api.call("GET", "/api/transfers", password="nope")).status == 401
    bad = gatewayd.passwords.verification_count() - before - good
    assert bad == 3, "failures are never cached"


# --------------------------------------------------------------------------- 403 per area


def _path(r: Route) -> str:
    path = re.sub(r"\{id:[^}]*\}", "1", r.path)
    return path.replace("{name}", "inbox").replace("{id}", "nosuchtoken")


async def _send(env: ApiEnv, r: Route, token: str) -> Any:
    body = {} if r.body else None
    if r.answer_type == "text/event-stream":  # never ends: the answer's head says enough
        url = env.api.base + _path(r)
        headers = {"Authorization": f"Bearer {token}"}
        async with env.api.session.get(url, headers=headers) as response:
            if response.status == 200:
                return Answer(200, None, response.headers, "")
            text = await response.text()
            return Answer(response.status, json.loads(text), response.headers, text)
    return await env.api.call(r.method, _path(r), json_body=body, token=token)


async def test_every_route_checks_its_area(env: ApiEnv) -> None:
    # Users' permissions and tokens' limits go through the same check; tokens are cheap
    # to make (a user costs argon2 hashes in every configuration load).
    env.users["nobody"] = {}
    await env.start()
    tokens: dict[str, str] = {}
    for area in AREAS:
        for letter in "rwd":
            all_but = {a: "rwd".replace(letter, "") if a == area else "rwd" for a in AREAS}
            tokens[f"no-{area}-{letter}"] = (await _token(env, permissions=all_but))["token"]
            only = {area: letter}
            tokens[f"only-{area}-{letter}"] = (await _token(env, permissions=only))["token"]
    nobody = (await _token(env, "nobody"))["token"]
    manager = (await _token(env, "nobody", manageTokens=True))["token"]
    guarded = [r for r in ROUTES if r.area is not None]
    assert {r.area for r in guarded} == set(AREAS), "every area guards something"
    for r in guarded:
        assert r.letter is not None
        denied = await _send(env, r, tokens[f"no-{r.area}-{r.letter}"])
        assert (denied.status, denied.codes()) == (403, ["forbidden"]), (r.method, r.path)
        assert r.area in denied.errors[0]["message"]
        allowed = await _send(env, r, tokens[f"only-{r.area}-{r.letter}"])
        assert allowed.status not in (401, 403), (r.method, r.path, allowed.text)
    for r in ROUTES:
        if r.area is None and (r.method, r.path) != ("POST", "/api/tokens"):
            managing = r.path.startswith("/api/tokens")
            answer = await _send(env, r, nobody)
            if managing:  # listing and revoking tokens is a right of its own
                assert (answer.status, answer.codes()) == (403, ["forbidden"]), r.path
                answer = await _send(env, r, manager)
            assert answer.status not in (401, 403), (r.method, r.path, answer.text)


async def test_a_users_permissions_apply_to_basic_logins(env: ApiEnv) -> None:
    env.users["reader"] = {"transfers": "r"}
    await env.start()
    assert (await env.api.call("GET", "/api/transfers", user="reader")).status == 200
    refused = (
        ("GET", "/api/rules"),
        ("PUT", "/api/transfers/1/pause"),
        ("GET", "/api/audit"),
        ("DELETE", "/api/transfers?status=all"),
    )
    for method, path in refused:
        answer = await env.api.call(method, path, user="reader")
        assert (answer.status, answer.codes()) == (403, ["forbidden"]), path
    about = await env.api.get("/api/about", user="reader")
    assert (about["user"], about["permissions"]) == ("reader", {"transfers": "r"})


# --------------------------------------------------------------------------- tokens


async def _token(env: ApiEnv, user: str = "admin", **body: Any) -> dict[str, Any]:
    answer = await env.api.call("POST", "/api/tokens", json_body=body, user=user)
    assert answer.status == 201, answer.text
    return answer.body


async def test_token_life(env: ApiEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env.users["reader"] = {"transfers": "r", "rules": "rw"}
    await env.start()
    issued = await _token(env, "reader", expiresIn=3600, comment="nightly report")
    token = issued["token"]
    assert issued["user"] == "reader"
    assert issued["permissions"] == {"transfers": "r", "rules": "rw"}
    assert issued["expires"] == "2024-01-01T01:00:00+00:00"
    assert (await env.api.call("GET", "/api/transfers", token=token)).status == 200
    denied = await env.api.call("PUT", "/api/transfers/1/pause", token=token)
    assert denied.status == 403

    limited = (await _token(env, "reader", permissions={"transfers": "r"}))["token"]
    assert (await env.api.call("GET", "/api/rules", token=limited)).status == 403
    answer = await env.api.call(
        "POST", "/api/tokens", json_body={"permissions": {"transfers": "rw"}}, user="reader"
    )
    assert (answer.status, answer.codes()) == (400, ["not_allowed"])
    answer = await env.api.call("POST", "/api/tokens", json_body={}, token=token)
    assert answer.status == 403, "a token cannot mint tokens"

    listed = await env.api.get("/api/tokens", user="reader")
    assert {t["id"] for t in listed["tokens"]} == {issued["id"], _claims(limited)["jti"]}
    assert token not in json.dumps(listed) and "token" not in listed["tokens"][0]

    answer = await env.api.call("DELETE", f"/api/tokens/{issued['id']}", user="reader")
    assert answer.status == 204
    answer = await env.api.call("GET", "/api/transfers", token=token)
    assert answer.status == 401 and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert "revoked" in answer.errors[0]["message"]
    assert (await env.api.call("DELETE", f"/api/tokens/{issued['id']}")).status == 404

    env.clock.advance(86400 + 1)  # the default lifetime is one day
    answer = await env.api.call("GET", "/api/transfers", token=limited)
    assert answer.status == 401 and "expired" in answer.errors[0]["message"]

    entries = list(reversed(await env.gw.store.list_audit()))
    actions = [(e["who"], e["action"], e["details"].get("status")) for e in entries]
    by_token = f"reader (token {issued['id']})"
    # Refused writes are audited too (the pause, the over-reaching request, the token
    # minting a token, the second revocation).
    assert actions == [
        ("reader", "token.create", None), (by_token, "request.refused", 403),
        ("reader", "token.create", None), ("reader", "request.refused", 400),
        (by_token, "request.refused", 403), ("reader", "token.revoke", None),
        ("admin", "request.refused", 404),
    ]  # fmt: skip
    logs = capsys.readouterr()
    key = (env.root / "var" / KEY_FILE).read_text().strip()
    assert token not in logs.out + logs.err and key not in logs.out + logs.err


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


async def test_forged_or_orphaned_tokens_are_refused(env: ApiEnv) -> None:
    env.users["ops"] = {"transfers": "rwd"}
    await env.start()
    token = (await _token(env, "ops", expiresIn=600))["token"]
    claims = _claims(token)
    forged = [
        jwt.encode(claims, "another key" * 4, algorithm="HS256"),
        jwt.encode({**claims, "sub": "admin"}, "another key" * 4, algorithm="HS256"),
        jwt.encode(claims, None, algorithm="none"),
        token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
    ]
    for bad in forged:
        answer = await env.api.call("GET", "/api/transfers", token=bad)
        assert answer.status == 401, bad
    # Removing the user (a configuration change) disarms their tokens.
    env.users.pop("ops")
    env.gw.apply_config(env.load())
    answer = await env.api.call("GET", "/api/transfers", token=token)
    assert answer.status == 401 and "no longer exists" in answer.errors[0]["message"]


async def test_token_requests_are_checked(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call(
        "POST",
        "/api/tokens",
        json_body={
            "expiresIn": 0,
            "permissions": {"galaxy": "r", "rules": "x"},
            "comment": 5,
            "scope": "all",
        },
    )
    assert answer.status == 400
    assert sorted(e["field"] for e in answer.errors) == [
        "comment",
        "expiresIn",
        "permissions",
        "permissions",
        "scope",
    ]
    answer = await env.api.call("POST", "/api/tokens", json_body={"expiresIn": 10**9})
    assert answer.status == 400


async def test_the_signing_key_is_private_and_survives_a_restart(env: ApiEnv) -> None:
    await env.start()
    token = (await _token(env, expiresIn=600))["token"]
    key_file = env.root / "var" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    await env.stop()
    key_file.chmod(0o644)
    await env.start()
    assert key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "loosened modes are fixed"
    assert (await env.api.call("GET", "/api/transfers", token=token)).status == 200


async def test_others_tokens_need_the_users_area(env: ApiEnv) -> None:
    env.users["a"] = {"transfers": "r"}
    env.users["b"] = {"transfers": "r"}
    await env.start()
    mine = await _token(env, "a")
    theirs = await _token(env, "b")
    assert (await env.api.call("DELETE", f"/api/tokens/{theirs['id']}", user="a")).status == 403
    answer = await env.api.call("GET", "/api/tokens?user=b", user="a")
    assert answer.status == 403
    own = await env.api.get("/api/tokens", user="a")
    assert [t["id"] for t in own["tokens"]] == [mine["id"]]
    every = await env.api.get("/api/tokens")
    assert {t["id"] for t in every["tokens"]} == {mine["id"], theirs["id"]}
    assert (await env.api.call("DELETE", f"/api/tokens/{theirs['id']}")).status == 204


async def test_only_tokens_issued_to_manage_tokens_list_or_revoke_them(env: ApiEnv) -> None:
    env.users["ops"] = {"transfers": "r"}
    await env.start()
    # What the README recommends for the metrics scraper: a token with no permission.
    scraper = await _token(env, "ops", permissions={})
    script = await _token(env, "ops", comment="nightly")
    assert (scraper["manageTokens"], script["manageTokens"]) == (False, False)
    assert (await env.api.call("GET", "/metrics", token=scraper["token"])).status == 200
    for method, path in (("GET", "/api/tokens"), ("DELETE", f"/api/tokens/{script['id']}")):
        answer = await env.api.call(method, path, token=scraper["token"])
        assert (answer.status, answer.codes()) == (403, ["forbidden"]), path
        assert "manageTokens" in answer.errors[0]["message"]
    assert (await env.api.call("GET", "/api/transfers", token=script["token"])).status == 200

    # Given explicitly, the right to manage tokens: list and revoke the user's own.
    manager = await _token(env, "ops", permissions={}, manageTokens=True)
    assert manager["manageTokens"] is True
    listed = await env.api.get("/api/tokens", token=manager["token"])
    by_id = {t["id"]: t["manageTokens"] for t in listed["tokens"]}
    assert by_id == {scraper["id"]: False, script["id"]: False, manager["id"]: True}
    answer = await env.api.call("DELETE", f"/api/tokens/{script['id']}", token=manager["token"])
    assert answer.status == 204
    assert (await env.api.call("GET", "/api/transfers", token=script["token"])).status == 401
    # Never another user's without the users area, never a new token.
    theirs = await _token(env, "admin")
    answer = await env.api.call("DELETE", f"/api/tokens/{theirs['id']}", token=manager["token"])
    assert answer.status == 403
    answer = await env.api.call("GET", "/api/tokens?user=admin", token=manager["token"])
    assert answer.status == 403
    answer = await env.api.call("POST", "/api/tokens", json_body={}, token=manager["token"])
    assert answer.status == 403
    # An admin's managing token with the users area reaches everyone's.
    admin = await _token(env, "admin", manageTokens=True)
    every = await env.api.get("/api/tokens", token=admin["token"])
    assert manager["id"] in {t["id"] for t in every["tokens"]}
    answer = await env.api.call("DELETE", f"/api/tokens/{manager['id']}", token=admin["token"])
    assert answer.status == 204

    created = [e for e in await env.gw.store.list_audit() if e["action"] == "token.create"]
    assert {e["details"]["manageTokens"] for e in created} == {True, False}
    answer = await env.api.call("POST", "/api/tokens", json_body={"manageTokens": "yes"})
    assert (answer.status, [e["field"] for e in answer.errors]) == (400, ["manageTokens"])
    document = await env.api.get("/api/openapi.json")
    schemas = document["components"]["schemas"]
    assert schemas["TokenRequest"]["properties"]["manageTokens"]["default"] is False
    assert schemas["Token"]["properties"]["manageTokens"] == {"type": "boolean"}
