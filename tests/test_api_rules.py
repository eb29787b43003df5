"""`/api/rules` over HTTP: list, get, create (JSON and YAML), replace, delete, each
written to the rules folder and loaded live; invalid rules are refused with every
problem and change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gatewayd.config import load_config
from gatewayd.model import Direction
from tests.api_support import ApiEnv
from tests.gateway_env import make_file


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.accounts["acme"] = {}
    environment.rule("inbox", "receive", comment="first")
    yield environment
    await environment.stop()


def rules_dir(env: ApiEnv) -> Path:
    return env.root / "rules"


def files(env: ApiEnv) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(rules_dir(env).iterdir())}


async def test_list_and_get(env: ApiEnv) -> None:
    env.rule("outbox", "send", post=[{"type": "COPY", "args": {"path": "archive"}}])
    await env.start()
    listed = await env.api.get("/api/rules")
    assert [r["name"] for r in listed["rules"]] == ["inbox", "outbox"]
    rule = await env.api.get("/api/rules/outbox")
    assert rule == {
        "name": "outbox",
        "direction": "send",
        "path": "/outbox",
        "comment": "",
        "folder": None,
        "shared_folder": False,
        "on_collision": "rename",
        "allow_rename": False,
        "allow_delete": False,
        "allow": "all",
        "pre": [],
        "post": [{"type": "COPY", "args": {"path": "archive"}}],
        "error": [],
    }
    answer = await env.api.call("GET", "/api/rules/nope")
    assert (answer.status, answer.codes()) == (404, ["not_found"])


async def test_create_from_json_is_written_and_live(env: ApiEnv) -> None:
    env.rule("unused", "send")
    await env.start()
    body = {
        "name": "reports",
        "direction": "send",
        "path": "/reports",
        "allow": {"partners": ["share"], "accounts": ["acme"]},
        "post": [{"type": "SETINFO", "args": {"key": "k", "value": "v"}}],
    }
    answer = await env.api.call("POST", "/api/rules", json_body=body)
    assert answer.status == 201, answer.text
    assert answer.headers["Location"] == "/api/rules/reports"
    assert answer.body["allow"] == {"accounts": ["acme"], "partners": ["share"]}
    written = rules_dir(env) / "reports.yaml"
    assert yaml.safe_load(written.read_text()) == body
    assert oct(written.stat().st_mode & 0o777) == "0o640"
    assert not [p for p in rules_dir(env).iterdir() if p.name.startswith(".")], "no temp left"
    # Live: the running gateway uses it at once, and a fresh load agrees.
    assert "reports" in env.gw.loaded.config.rules
    assert "reports" in load_config(env.config_file).config.rules
    assert env.folder("reports").is_dir(), "its folders were made"
    make_file(env.folder("reports") / "r.txt", 10)
    created = await env.api.call(
        "POST", "/api/transfers", json_body={"rule": "reports", "partner": "share", "file": "r.txt"}
    )
    assert created.status == 201, created.text
    assert [r["name"] for r in (await env.api.get("/api/rules"))["rules"]] == [
        "inbox",
        "reports",
        "unused",
    ]
    answer = await env.api.call("POST", "/api/rules", json_body=body)
    assert (answer.status, answer.codes()) == (409, ["already_exists"])
    entry = (await env.gw.store.list_audit())[-1]
    assert (entry["who"], entry["action"], entry["target"]) == (
        "admin",
        "rule.create",
        "rule/reports",
    )


async def test_apply_yaml_keeps_the_file_as_written(env: ApiEnv) -> None:
    await env.start()
    text = (
        "# Files for ACME, written by hand.\n"
        "name: acme\n"
        "direction: receive\n"
        "path: /acme   # what they see\n"
        "allow:\n"
        "  accounts: [acme]\n"
    )
    answer = await env.api.call(
        "PUT", "/api/rules/acme", data=text, content_type="application/yaml"
    )
    assert answer.status == 201, answer.text
    assert (rules_dir(env) / "acme.yaml").read_text() == text
    # The account sees the new folder on our servers straight away.
    handle = await env.server().open_transfer("acme", "/acme/x.txt", Direction.RECEIVE)
    await handle.write(0, b"hi")
    await handle.close()
    assert (env.folder("acme") / "acme" / "x.txt").read_bytes() == b"hi"


async def test_invalid_rule_is_refused_with_every_problem_and_changes_nothing(
    env: ApiEnv,
) -> None:
    await env.start()
    before = files(env)
    loaded = env.gw.loaded
    body = {
        "name": "bad",
        "direction": "sideways",
        "path": "/inbox",
        "allow": {"accounts": ["ghost"]},
        "post": [{"type": "NOSUCHTASK"}],
        "colour": "red",
    }
    answer = await env.api.call("POST", "/api/rules", json_body=body)
    assert answer.status == 400, answer.text
    messages = " | ".join(e["message"] for e in answer.errors)
    assert set(answer.codes()) == {"invalid_rule"}
    for expected in ("direction", "duplicate path '/inbox'", "unknown account 'ghost'",
                     "NOSUCHTASK", "colour"):  # fmt: skip
        assert expected in messages, messages
    assert len(answer.errors) >= 5
    text = (
        "name: bad\ndirection: send\npath: /bad\npre:\n  - type: COPY\n    args: {path: '#NOPE#'}\n"
    )
    answer = await env.api.call("PUT", "/api/rules/bad", data=text, content_type="text/yaml")
    assert answer.status == 400
    assert answer.errors[0]["message"].startswith("line 6: "), answer.errors
    answer = await env.api.call(
        "PUT", "/api/rules/bad", data="name: [unclosed\n", content_type="application/yaml"
    )
    assert answer.status == 400 and answer.codes() == ["invalid_rule"]
    answer = await env.api.call("POST", "/api/rules", data="name: x", content_type="text/plain")
    assert (answer.status, answer.codes()) == (415, ["unsupported_media_type"])
    assert files(env) == before
    assert env.gw.loaded is loaded, "the running configuration was not touched"
    audited = [e["action"] for e in await env.gw.store.list_audit()]
    assert audited == ["request.refused"] * 4, "only the refusals are audited"


async def test_replace_and_delete(env: ApiEnv) -> None:
    await env.start()
    old_source = env.gw.loaded.config.rules["inbox"].source
    answer = await env.api.call(
        "PUT",
        "/api/rules/inbox",
        json_body={"direction": "receive", "path": "/in", "comment": "second", "allow": "all"},
    )
    assert answer.status == 200, answer.text
    assert answer.body["name"] == "inbox" and "Location" not in answer.headers
    rule = env.gw.loaded.config.rules["inbox"]
    assert (rule.comment, rule.path, rule.source) == ("second", "/in", old_source)
    answer = await env.api.call(
        "PUT", "/api/rules/inbox", json_body={"name": "other", "direction": "send", "path": "/o"}
    )
    assert (answer.status, answer.codes()) == (400, ["name_mismatch"])
    answer = await env.api.call("DELETE", "/api/rules/inbox")
    assert answer.status == 204 and answer.text == ""
    assert "inbox" not in env.gw.loaded.config.rules
    assert not (rules_dir(env) / "inbox.yaml").exists()
    answer = await env.api.call("DELETE", "/api/rules/inbox")
    assert answer.status == 404
    actions = [e["action"] for e in reversed(await env.gw.store.list_audit())]
    assert [a for a in actions if a != "request.refused"] == ["rule.replace", "rule.delete"]


async def test_a_reload_that_fails_rolls_the_change_back(env: ApiEnv) -> None:
    await env.start()
    # Someone broke gatewayd.yaml on disk since the start: the API must not half-apply.
    env.config_file.write_text(env.config_file.read_text() + "\nnonsense: [\n")
    before = files(env)
    answer = await env.api.call(
        "POST", "/api/rules", json_body={"name": "new", "direction": "send", "path": "/new"}
    )
    assert answer.status == 409, answer.text
    assert answer.codes()[0] == "invalid_config"
    assert files(env) == before
    assert "new" not in env.gw.loaded.config.rules


async def test_concurrent_writes_all_land(env: ApiEnv) -> None:
    await env.start()

    async def put(i: int) -> int:
        answer = await env.api.call(
            "PUT", f"/api/rules/r{i}", json_body={"direction": "send", "path": f"/r{i}"}
        )
        return answer.status

    assert await asyncio.gather(*(put(i) for i in range(6))) == [201] * 6
    assert set(env.gw.loaded.config.rules) == {"inbox", *(f"r{i}" for i in range(6))}
