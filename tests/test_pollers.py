"""Remote pollers in an in-process gateway driven by a manual clock: a `local` partner
(a folder) first; the same against real SFTP, FTP and HTTP peers in
tests/test_pollers_peers.py. New files are fetched once, growing ones once settled,
REMOTEDELETE removes only what was fetched whole; mistakes point at file and line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.automation.pollers import PollerService
from gatewayd.clock import ManualClock
from gatewayd.config import ConfigError, load_config
from gatewayd.model import Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, exec_task

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
WAIT = 10.0


def write_poller(env: GatewayEnv, body: dict[str, Any]) -> Path:
    folder = env.root / "pollers"
    folder.mkdir(exist_ok=True)
    path = folder / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GatewayEnv]:
    env = GatewayEnv(tmp_path)
    env.clock = ManualClock(T0)
    yield env
    await env.stop()


async def step(env: GatewayEnv, pollers: PollerService, looks: int, seconds: float = 60) -> None:
    """Move the clock by `seconds` and wait (bounded) until `looks` more polls ended."""
    target = pollers.passes + looks
    assert isinstance(env.clock, ManualClock)
    env.clock.advance(seconds)
    async with asyncio.timeout(WAIT):
        while pollers.passes < target:
            await asyncio.sleep(0.001)


async def first_looks(pollers: PollerService, count: int) -> None:
    async with asyncio.timeout(WAIT):
        while pollers.passes < count:
            await asyncio.sleep(0.001)


async def polled(env: GatewayEnv, poller: str) -> list[Transfer]:
    rows, _ = await env.gw.store.list_transfers(TransferFilter(limit=1000))
    return [t for t in rows if t.transfer_info.get("poller") == poller]


async def test_new_files_once_growing_files_once_settled_delete_after_done(
    env: GatewayEnv,
) -> None:
    env.rule("inbox", "receive")
    env.rule("inbox-bad", "receive", post=[exec_task("exit 3")])
    keep, gone, bad = (env.share / n for n in ("keep", "gone", "bad"))
    for folder in (keep, gone, bad):
        folder.mkdir()
    (keep / "a.csv").write_text("a\n")
    (keep / "notes.txt").write_text("not matched\n")
    (keep / "c.csv").write_text("c1\n")
    (gone / "d.csv").write_text("d\n")
    (bad / "e.csv").write_text("e\n")
    common = {"partner": "share", "globs": ["*.csv"], "interval": 60}
    write_poller(env, {"name": "keep", "rule": "inbox", "remote_dir": "keep", **common})
    write_poller(
        env, {"name": "gone", "rule": "inbox", "remote_dir": "gone", "after": "delete", **common}
    )
    write_poller(
        env, {"name": "bad", "rule": "inbox-bad", "remote_dir": "bad", "after": "delete", **common}
    )
    await env.start()
    pollers = env.gw.pollers
    await first_looks(pollers, 3)
    # One look: nothing has settled yet.
    assert await polled(env, "keep") == []
    (keep / "c.csv").write_text("c1\nc2\n")  # still being written
    await step(env, pollers, 3)
    assert sorted(t.dest_filename for t in await polled(env, "keep")) == ["a.csv"]
    await step(env, pollers, 3)  # c.csv looked the same twice now
    taken = {t.dest_filename: t for t in await polled(env, "keep")}
    assert sorted(taken) == ["a.csv", "c.csv"]
    for t in taken.values():
        assert t.id is not None
        assert (await env.wait_end(t.id)).status == Status.DONE
    inbox = env.folder("inbox")
    assert (inbox / "c.csv").read_text() == "c1\nc2\n"
    # Kept on the partner, but never fetched again.
    for _ in range(3):
        await step(env, pollers, 3)
    assert len(await polled(env, "keep")) == 2
    assert (keep / "a.csv").exists() and (keep / "c.csv").exists()
    assert pollers.stats("keep").seen == 2 and pollers.stats("keep").taken == 2

    # `after: delete`: removed from the partner once DONE...
    [d] = await polled(env, "gone")
    assert d.id is not None and (await env.wait_end(d.id)).status == Status.DONE
    assert not (gone / "d.csv").exists()
    assert [s["type"] for s in (x.to_json() for x in d.post_tasks)] == ["REMOTEDELETE"]
    # ...and only then: a transfer whose post task failed leaves the partner's file.
    [e] = await polled(env, "bad")
    assert e.id is not None and (await env.wait_end(e.id)).status == Status.ERROR
    assert (bad / "e.csv").read_text() == "e\n"


async def test_a_restart_takes_nothing_twice(env: GatewayEnv) -> None:
    env.rule("inbox", "receive")
    (env.share / "out").mkdir()
    (env.share / "out" / "a.csv").write_text("a\n")
    write_poller(
        env,
        {"name": "p", "partner": "share", "rule": "inbox", "remote_dir": "out", "interval": 30},
    )
    await env.start()
    await first_looks(env.gw.pollers, 1)
    await step(env, env.gw.pollers, 1, 30)
    assert len(await polled(env, "p")) == 1
    await env.stop()
    await env.start()
    await first_looks(env.gw.pollers, 1)
    for _ in range(3):
        await step(env, env.gw.pollers, 1, 30)
    assert len(await polled(env, "p")) == 1
    # A file that changes is another file: fetched again once settled.
    (env.share / "out" / "a.csv").write_text("a\nb\n")
    for _ in range(2):
        await step(env, env.gw.pollers, 1, 30)
    assert sorted(t.transfer_info["remoteSize"] for t in await polled(env, "p")) == [2, 4]


def test_mistakes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.rule("inbox", "receive")
    env.rule("outbox", "send")
    env.write()
    paths = {
        "wrong-way": write_poller(
            env, {"name": "wrong-way", "partner": "share", "rule": "outbox", "interval": 5}
        ),
        "refs": write_poller(
            env, {"name": "refs", "partner": "ghost", "rule": "nope", "cron": "*"}
        ),
        "glob": write_poller(
            env,
            {"name": "glob", "partner": "share", "rule": "inbox", "interval": 5, "globs": ["a/b"]},
        ),
        "both": write_poller(
            env,
            {
                "name": "both",
                "partner": "share",
                "rule": "inbox",
                "interval": 5,
                "cron": "* * * * *",
            },
        ),
    }
    with pytest.raises(ConfigError) as caught:
        load_config(env.config_file)
    text = [str(p) for p in caught.value.problems]

    def at(name: str, key: str) -> str:
        lines = paths[name].read_text().splitlines()
        number = next(i for i, s in enumerate(lines, 1) if s.lstrip().startswith(key))
        return f"{paths[name]}:{number}: "

    assert any(t.startswith(at("wrong-way", "rule:")) and "a send rule" in t for t in text), text
    assert any(t.startswith(at("refs", "rule:")) and "unknown rule 'nope'" in t for t in text)
    assert any(t.startswith(at("refs", "partner:")) and "unknown partner" in t for t in text)
    assert any(t.startswith(at("refs", "cron:")) and "cron expression" in t for t in text), text
    assert any("glob.yaml" in t and "invalid glob 'a/b'" in t for t in text), text
    assert any("both.yaml" in t and "exactly one of 'interval'" in t for t in text), text
