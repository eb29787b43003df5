"""A hostile rule sent to the admin API cannot stall the gateway: the alias bomb is
refused with its line by a real daemon that keeps answering and stops on SIGTERM, and a
rule's checks run off the event loop, bounded in time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import gatewayd.api.rules as api_rules
from gatewayd.config import LoadedConfig
from gatewayd.config.schema import RuleConfig
from tests.api_support import ApiEnv, basic
from tests.daemon_proc import DaemonProcess
from tests.test_api_daemon import api_port
from tests.test_yaml_limits import BOMB_PROBLEM, BOMB_RULE

GOOD_RULE = "name: x\ndirection: receive\npath: /x\nallow: all\n"


async def test_alias_bomb_through_the_api_of_a_real_daemon(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.rule("inbox", "receive")
    env.write()
    daemon = await DaemonProcess.start(env.config_file)
    try:
        base = f"http://127.0.0.1:{await api_port(daemon)}"
        headers = {"Authorization": basic("admin")}
        timeout = aiohttp.ClientTimeout(total=20)  # before the fix: no answer, ever
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            put = session.put(
                f"{base}/api/rules/x",
                data=BOMB_RULE,
                headers={"Content-Type": "application/yaml"},
            )
            async with put as answer:
                body = await answer.json()
            assert answer.status == 400, body
            assert body["errors"] == [
                {"message": f"line {BOMB_PROBLEM}", "errorCode": "invalid_rule"}
            ]
            # The daemon still answers, and nothing was written.
            async with session.get(f"{base}/api/rules") as answer:
                assert answer.status == 200
                assert [r["name"] for r in (await answer.json())["rules"]] == ["inbox"]
        assert not (env.root / "rules" / "x.yaml").exists()
    finally:
        assert await daemon.stop(timeout=20) == 0, daemon.output


class HeldCheck:
    """Holds the rule checks of the API in their thread until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.on_loop: list[bool] = []
        real = api_rules.load_rule_text

        def held(loaded: LoadedConfig, text: str, source_name: str) -> RuleConfig:
            try:
                asyncio.get_running_loop()
                self.on_loop.append(True)
            except RuntimeError:
                self.on_loop.append(False)
            self.entered.set()
            # Bounded: on the event loop (the bug), this wait is the whole test's.
            self.release.wait(timeout=10)
            return real(loaded, text, source_name)

        monkeypatch.setattr(api_rules, "load_rule_text", held)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "the check never started"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    yield environment
    await environment.stop()


async def test_rule_checks_run_off_the_event_loop(
    env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCheck(monkeypatch)
    await env.start()
    put = asyncio.create_task(
        env.api.call("PUT", "/api/rules/x", data=GOOD_RULE, content_type="application/yaml")
    )
    try:
        await held.wait_entered()
        # While the check is held, the loop serves other requests.
        async with asyncio.timeout(5):
            about: Any = await env.api.get("/api/about")
        assert about["user"] == "admin"
        assert not put.done()
    finally:
        held.release.set()
    answer = await asyncio.wait_for(put, 10)
    assert answer.status == 201, answer.text
    assert held.on_loop == [False]
    assert "x" in env.gw.loaded.config.rules


async def test_a_check_that_overruns_is_answered_and_changes_nothing(
    env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCheck(monkeypatch)
    monkeypatch.setattr(api_rules, "CHECK_TIMEOUT", 0.3)
    await env.start()
    try:
        answer = await env.api.call(
            "PUT", "/api/rules/x", data=GOOD_RULE, content_type="application/yaml"
        )
    finally:
        held.release.set()
    assert answer.status == 503, answer.text
    assert answer.errors == [
        {
            "message": "the rule could not be checked within 0.3 s (too large or too "
            "complex?); nothing was changed",
            "errorCode": "check_timeout",
        }
    ]
    assert not (env.root / "rules" / "x.yaml").exists()
    assert "x" not in env.gw.loaded.config.rules
    # The overrun thread ends on its own and frees its slot: the next change goes through.
    monkeypatch.setattr(api_rules, "CHECK_TIMEOUT", 10.0)
    answer = await env.api.call(
        "PUT", "/api/rules/x", data=GOOD_RULE, content_type="application/yaml"
    )
    assert answer.status == 201, answer.text


async def test_deeply_nested_json_is_a_bad_request(env: ApiEnv) -> None:
    await env.start()
    deep = '{"name": "x", "direction": "send", "path": "/x", "comment": ' + "[" * 100_000
    answer = await env.api.call("PUT", "/api/rules/x", data=deep, content_type="application/json")
    assert (answer.status, answer.codes()) == (400, ["malformed_json"])
    nested = '{"name": "x", "direction": "send", "path": "/x", "comment": '
    nested += "[" * 70 + "]" * 70 + "}"
    answer = await env.api.call("PUT", "/api/rules/x", data=nested, content_type="application/json")
    assert answer.status == 400, answer.text
    assert answer.errors == [
        {
            "message": "lists and objects nested more than 64 levels deep",
            "errorCode": "invalid_rule",
        }
    ]


async def test_a_rule_larger_than_a_rule_may_be_is_refused_unread(env: ApiEnv) -> None:
    await env.start()
    values = ",".join(["x"] * 140_000)  # 280 KB of tiny values: seconds of parsing
    body = f"name: x\ndirection: send\npath: /x\ncomment: [{values}]\n"
    answer = await env.api.call("PUT", "/api/rules/x", data=body, content_type="application/yaml")
    assert answer.status == 413, answer.text
    assert answer.errors == [
        {"message": "a rule is at most 256 KiB of JSON or YAML", "errorCode": "body_too_large"}
    ]
    assert "x" not in env.gw.loaded.config.rules
