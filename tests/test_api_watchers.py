"""`/api/watchers` over HTTP: bad input refused with every problem (and nothing
written), create, list and get with the state, fire, pause and resume, replace, delete;
the metrics per watcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gatewayd import cli
from tests.api_support import PASSWORD, ApiEnv
from tests.gateway_env import make_file


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("out", "send")
    environment.rule("inbox", "receive")
    yield environment
    await environment.stop()


async def test_watchers_through_the_api(
    env: ApiEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await env.start()
    folder = env.folder("out")
    bad = {
        "name": "bad",
        "rule": "inbox",
        "partner": "nobody",
        "folder": "missing",
        "include": ["[x"],
    }
    answer = await env.api.call("POST", "/api/watchers", json_body=bad)
    assert answer.status == 400, answer.text
    messages = " | ".join(e["message"] for e in answer.errors)
    assert "rule 'inbox' is a receive rule" in messages, messages
    assert "unknown partner 'nobody'" in messages, messages
    assert "never closed" in messages, messages
    yaml_body = "name: y\nrule: out\npartner: share\nsettle: -2\n"
    answer = await env.api.call(
        "POST", "/api/watchers", data=yaml_body, content_type="application/yaml"
    )
    assert answer.status == 400 and "line 4" in answer.text, answer.text
    assert not (env.root / "watchers" / "bad.yaml").exists()
    assert not (env.root / "watchers" / "y.yaml").exists()

    body = {"name": "w", "rule": "out", "partner": "share", "settle": 0, "interval": 3600}
    answer = await env.api.call("POST", "/api/watchers", json_body=body)
    assert answer.status == 201, answer.text
    assert yaml.safe_load((env.root / "watchers" / "w.yaml").read_text()) == body
    watch = env.gw.watchers.get("w")
    assert watch is not None, "started at once"
    # Its first scan (of the empty folder) runs as it starts: the file comes after it,
    # so that the fire below, not that scan, takes it (the next scan is an hour away).
    async with asyncio.timeout(10):
        while watch.state.last_scan is None:
            await asyncio.sleep(0.005)

    make_file(folder / "one.bin", 1234)
    fired = await env.api.call("POST", "/api/watchers/w/fire")
    assert fired.status == 200, fired.text
    assert fired.body["taken"] == 1 and len(fired.body["transfers"]) == 1, fired.body
    transfer = await env.wait_end(fired.body["transfers"][0])
    assert (env.share / "one.bin").read_bytes() == (folder / "one.bin").read_bytes()
    assert transfer.transfer_info["watcher"] == "w"
    again = await env.api.call("POST", "/api/watchers/w/fire")
    assert again.body["taken"] == 0 and again.body["skipped"]["already_sent"] == 1, again.body

    listed = await env.api.get("/api/watchers")
    [shown] = listed["watchers"]
    assert shown["name"] == "w" and shown["status"]["state"] == "running", shown
    assert shown["status"]["taken"] == 1 and shown["status"]["skipped"]["already_sent"] >= 1
    assert shown["status"]["recorded"] == 1
    assert shown["status"]["lastScan"] is not None and shown["status"]["lastError"] == ""

    # The CLI, through the same API (its client blocks: in a thread).
    monkeypatch.setenv("GATEWAYD_API_URL", env.api.base)
    monkeypatch.setenv("GATEWAYD_API_USER", "admin")
    monkeypatch.setenv("GATEWAYD_API_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["watcher", "list"]) == 0
    table = capsys.readouterr().out
    assert "NAME" in table and "w " in table and "running" in table, table
    make_file(folder / "two.bin", 99)
    assert await asyncio.to_thread(cli.main, ["watcher", "fire", "w"]) == 0
    assert "taken 1" in capsys.readouterr().out
    assert await asyncio.to_thread(cli.main, ["watcher", "get", "w"]) == 0
    assert "  taken: 2\n" in capsys.readouterr().out

    paused = await env.api.call("POST", "/api/watchers/w/pause")
    assert paused.status == 200 and paused.body["status"]["state"] == "paused", paused.text
    resumed = await env.api.call("POST", "/api/watchers/w/resume")
    assert resumed.body["status"]["paused"] is False, resumed.text

    metrics = await env.api.call("GET", "/metrics")
    taken = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("gatewayd_watcher_files_total{")
        and 'watcher="w"' in line
        and 'outcome="taken"' in line
    ]
    assert len(taken) == 1 and taken[0].endswith(" 2.0"), metrics.text[-3000:]

    replaced = await env.api.call("PUT", "/api/watchers/w", json_body={**body, "min_size": 5000})
    assert replaced.status == 200 and replaced.body["min_size"] == 5000, replaced.text
    deleted = await env.api.call("DELETE", "/api/watchers/w")
    assert deleted.status == 204
    assert not (env.root / "watchers" / "w.yaml").exists()
    assert env.gw.watchers.get("w") is None
    missing = await env.api.call("POST", "/api/watchers/w/fire")
    assert missing.status == 404
