"""`/metrics`: scraped from a real gateway before, during and after real transfers (a
client transfer to a `local` partner, an upload by curl to the HTTP server), checked
by `promtool check metrics`, and its authentication setting."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.model import Step, Transfer
from tests.api_support import ApiEnv
from tests.gateway_env import environ_without_proxy, exec_task, make_file
from tests.http_support import PASSWORD as WEB_PASSWORD
from tests.http_support import password_hash as web_hash
from tests.http_support import run_curl

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str, node: str = socket.gethostname()) -> Samples:
    """Every sample of a scrape by (name, labels), each checked to carry the label
    `node` (this node's name: the host name unless `daemon.node` says), left out."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("node", None) == node, sample
            found[(sample.name, frozenset(labels.items()))] = sample.value
    assert found, "no sample at all"
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.accounts["alice"] = {"password": web_hash()}
    environment.rule("out", "send", post=[{"type": "COPY", "args": {"path": str(tmp_path / "c")}}])
    environment.rule("bad", "send", post=[exec_task("exit 3")])
    environment.rule("inbox", "receive", allow={"accounts": ["alice"]})
    environment.extra["servers"] = {"web": {"protocol": "http", "address": "127.0.0.1", "port": 0}}
    (tmp_path / "c").mkdir()
    yield environment
    await environment.stop()


async def scrape(env: ApiEnv, **kw: object) -> str:
    answer = await env.api.call("GET", "/metrics", **kw)  # type: ignore[arg-type]
    assert answer.status == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain")
    return answer.text


async def test_counters_move_as_transfers_run(env: ApiEnv, tmp_path: Path) -> None:
    in_data = asyncio.Event()
    release = asyncio.Event()

    async def before_step(t: Transfer, step: Step) -> None:
        if t.rule == "out" and step == Step.DATA:
            in_data.set()
            await release.wait()

    env.hooks.before_step = before_step
    await env.start()
    size = 300_000
    make_file(env.folder("out") / "a.bin", size)
    make_file(env.folder("bad") / "b.bin", 1000)

    before = parse(await scrape(env))
    started = dict(protocol="local", direction="send", rule="out")
    assert value(before, "gatewayd_transfers_started_total", **started) == 0
    assert value(before, "gatewayd_scheduler_queue_depth") == 0
    assert value(before, "gatewayd_sessions", server="web", protocol="http") == 0

    created = await env.api.call(
        "POST", "/api/transfers", json_body={"rule": "out", "partner": "share", "file": "a.bin",
                                             "nbOfAttempts": 0},
    )  # fmt: skip
    assert created.status == 201, created.text
    async with asyncio.timeout(15):
        await in_data.wait()
    during = parse(await scrape(env))
    assert value(during, "gatewayd_transfers_started_total", **started) == 1
    assert value(during, "gatewayd_transfers_running", protocol="local", direction="send") == 1
    assert value(during, "gatewayd_transfers_finished_total", status="DONE", **started) == 0
    release.set()
    assert (await env.wait_end(created.body["id"])).status.value == "DONE"

    failing = await env.create(rule="bad", partner="share", file="b.bin")
    assert (await env.wait_end(failing.id or 0)).status.value == "ERROR"

    # An upload to the HTTP server, and a refused password there.
    base = f"http://127.0.0.1:{env.gw.servers['web'].bound_port}"
    upload = make_file(tmp_path / "up.bin", 123_456)
    up = await run_curl("-u", f"alice:{WEB_PASSWORD}", "-T", str(tmp_path / "up.bin"),
                        f"{base}/inbox/")  # fmt: skip
    assert up.status in (200, 201, 204), up
    assert len(upload) == 123_456
    refused = await run_curl("-u", "alice:wrong", f"{base}/inbox/")
    assert refused.status == 401, refused

    text = await scrape(env)
    after = parse(text)
    assert value(after, "gatewayd_transfers_running", protocol="local", direction="send") == 0
    assert value(after, "gatewayd_transfers_finished_total", status="DONE", **started) == 1
    assert (
        value(after, "gatewayd_transfers_finished_total", protocol="local", direction="send",
              rule="bad", status="ERROR") == 1
    )  # fmt: skip
    assert value(after, "gatewayd_transfer_bytes_total", protocol="local", direction="send") == (
        size + 1000
    )
    assert (
        value(after, "gatewayd_transfer_bytes_total", protocol="http", direction="receive")
        == 123_456
    )
    assert (
        value(after, "gatewayd_transfers_finished_total", protocol="http", direction="receive",
              rule="inbox", status="DONE") == 1
    )  # fmt: skip
    assert (
        value(after, "gatewayd_transfer_duration_seconds_count", protocol="local",
              direction="send", status="DONE") == 1
    )  # fmt: skip
    assert value(after, "gatewayd_task_runs_total", type="COPY") == 1
    assert value(after, "gatewayd_task_failures_total", type="COPY") == 0
    assert value(after, "gatewayd_task_runs_total", type="EXEC") == 1
    assert value(after, "gatewayd_task_failures_total", type="EXEC") == 1
    assert value(after, "gatewayd_login_failures_total", server="web", protocol="http") == 1
    assert value(after, "gatewayd_db_write_seconds_count") > value(
        before, "gatewayd_db_write_seconds_count"
    )
    await check_with_promtool(text)


async def check_with_promtool(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=environ_without_proxy(),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 30)
    assert proc.returncode == 0 and not out.strip(), out.decode()


async def test_metrics_ask_for_credentials_unless_configured_not_to(env: ApiEnv) -> None:
    await env.start()
    refused = await env.api.call("GET", "/metrics", auth="")
    assert refused.status == 401 and refused.codes() == ["unauthorized"]
    assert "gatewayd_" not in refused.text
    await env.stop()

    env.extra["api"] = {"metrics_auth": False}
    await env.start()
    text = await scrape(env, auth="")
    assert "gatewayd_transfers_running" in text
    # The rest of the API still asks.
    assert (await env.api.call("GET", "/api/transfers", auth="")).status == 401
