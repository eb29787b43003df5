"""Pause and resume of pollers, schedules and watchers through the API and the CLI
(who paused it, kept in the database), and `apply -f` / `delete` of schedules, pollers
and watchers from the CLI: a bad file refused with its line and nothing written."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from gatewayd import cli
from tests.api_support import PASSWORD, ApiEnv


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("reports", "send")
    environment.rule("inbox", "receive")
    (environment.share / "out").mkdir()
    yield environment
    await environment.stop()


async def run(*args: str) -> int:
    """The CLI (its client blocks: in a thread)."""
    return await asyncio.to_thread(cli.main, list(args))


async def test_pause_apply_and_delete_from_the_cli(
    env: ApiEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await env.start()
    monkeypatch.setenv("GATEWAYD_API_URL", env.api.base)
    monkeypatch.setenv("GATEWAYD_API_USER", "admin")
    monkeypatch.setenv("GATEWAYD_API_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(env.root / "xdg"))
    files = env.root / "mine"
    files.mkdir()

    # A poller from its file (no `name:`: the file's name), then paused and resumed.
    poller = {"partner": "share", "rule": "inbox", "remote_dir": "out", "interval": 3600}
    (files / "p.yaml").write_text("# the partner's outbox\n" + yaml.safe_dump(poller))
    assert await run("poller", "apply", "-f", str(files / "p.yaml")) == 0
    assert "poller p created" in capsys.readouterr().out
    assert (env.root / "pollers" / "p.yaml").exists()
    assert await run("poller", "pause", "p") == 0
    assert "poller p paused by admin" in capsys.readouterr().out
    shown = await env.api.get("/api/pollers/p")
    assert shown["state"] == "paused" and shown["pausedBy"] == "admin" and shown["pausedAt"]
    paused = (await env.gw.store.pause_states("poller"))["p"]
    assert paused.paused and paused.paused_by == "admin"
    assert await run("poller", "list") == 0
    assert "paused by admin" in capsys.readouterr().out
    assert await run("poller", "resume", "p") == 0
    assert "poller p active" in capsys.readouterr().out
    assert not (await env.gw.store.pause_states("poller"))["p"].paused
    assert await run("poller", "pause", "nope") == 5

    # A schedule: a YAML mistake is refused here with its line, a bad value by the API
    # with every problem; nothing is written either way.
    (files / "broken.yaml").write_text("cron: '0 2 * * *'\ntransfer: [unclosed\n")
    assert await run("schedule", "apply", "-f", str(files / "broken.yaml")) == 2
    assert "line 2" in capsys.readouterr().err
    bad = {"cron": "0 25 * * *", "transfer": {"rule": "reports", "partner": "share", "file": "x"}}
    (files / "bad.yaml").write_text(yaml.safe_dump({"name": "nightly", **bad}))
    assert await run("schedule", "apply", "-f", str(files / "bad.yaml")) == 1
    assert "invalid cron expression" in capsys.readouterr().err
    assert not (env.root / "schedules" / "nightly.yaml").exists()
    good = {**bad, "cron": "30 1 * * *"}
    (files / "good.yaml").write_text(yaml.safe_dump({"name": "nightly", **good}))
    assert await run("schedule", "apply", "-f", str(files / "good.yaml")) == 0
    assert "schedule nightly created" in capsys.readouterr().out
    assert await run("schedule", "apply", "-f", str(files / "good.yaml")) == 0
    assert "schedule nightly replaced" in capsys.readouterr().out
    assert await run("schedule", "pause", "nightly") == 0
    assert "schedule nightly paused by admin" in capsys.readouterr().out
    assert (await env.api.get("/api/schedules/nightly"))["pausedBy"] == "admin"
    assert await run("schedule", "delete", "nightly") == 0
    assert not (env.root / "schedules" / "nightly.yaml").exists()
    assert await run("poller", "delete", "p") == 0
    assert (await env.api.call("GET", "/api/pollers/p")).status == 404

    # A watcher: its YAML sent as it is (comments kept), paused for every node.
    text = "# sends the reports\nname: w\nrule: reports\npartner: share\ninterval: 3600\n"
    (files / "w.yaml").write_text(text)
    assert await run("watcher", "apply", "-f", str(files / "w.yaml")) == 0
    assert "watcher w created" in capsys.readouterr().out
    assert (env.root / "watchers" / "w.yaml").read_text().endswith(text)
    assert await run("watcher", "pause", "w") == 0
    assert "paused (paused by admin)" in capsys.readouterr().out
    status = (await env.api.get("/api/watchers/w"))["status"]
    assert status["paused"] and status["pausedBy"] == "admin" and status["pausedAt"]
    assert (await env.gw.store.pause_states("watcher"))["w"].paused
    assert await run("watcher", "delete", "w") == 0
    assert not (env.root / "watchers" / "w.yaml").exists()

    # All in the OpenAPI document.
    document = await env.api.get("/api/openapi.json")
    for path in ("/api/pollers/{name}/pause", "/api/pollers/{name}/resume"):
        assert "post" in document["paths"][path], path
    assert "pausedBy" in document["components"]["schemas"]["Poller"]["properties"]
