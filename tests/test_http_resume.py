"""gatewayd as an HTTP client against real peers, killed with -9 in the middle of DATA:
a download from nginx resumes with Range, a send to another gatewayd over https resumes
from the offset that gateway durably holds; both end byte-identical. And a WebDAV PUT
to nginx, which cannot resume an upload."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from protocols.http.client import HttpClient
from protocols.http.config import HttpPartnerConfig
from tests.daemon_proc import DaemonProcess, read_row, wait_row
from tests.gateway_env import GatewayEnv, make_file
from tests.http_support import PASSWORD, Nginx, http_gateway, make_cert

MiB = 1 << 20


def client_env(root: Path) -> GatewayEnv:
    env = GatewayEnv(root)
    env.daemon.update(progress_interval=0.2)
    env.extra["logging"] = {"format": "json"}
    return env


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[Nginx]:
    server = Nginx(tmp_path / "nginx")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_download_from_nginx_cut_by_kill_9_resumes_with_range(
    tmp_path: Path, nginx: Nginx
) -> None:
    data = make_file(nginx.root / "feed" / "big.bin", 16 * MiB + 77)
    env = client_env(tmp_path / "gw")
    env.partners["web"] = {
        "protocol": "http", "address": "127.0.0.1", "port": nginx.port, "max_rate": 6 * MiB,
    }  # fmt: skip
    env.rule("pull", "receive")
    transfer = await env.plan({"rule": "pull", "partner": "web", "file": "feed/big.bin"})
    db = env.load().paths.database
    assert transfer.id is not None

    first = await DaemonProcess.start(env.config_file)
    try:
        ready = json.loads(await first.wait_for("gatewayd ready"))
        assert ready["event_loop"] == "uvloop", "daemon.event_loop: auto picks uvloop"
        await wait_row(db, transfer.id, lambda r: r["progress"] > 0, "made progress", first)
    finally:
        await first.kill()
    recorded = read_row(db, transfer.id)["progress"]
    assert 0 < recorded < len(data)

    second = await DaemonProcess.start(env.config_file)
    try:
        started = json.loads(await second.wait_for('"data starts"'))
        assert started["offset"] == recorded
        done = await wait_row(
            db, transfer.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
        )
    finally:
        assert await second.stop() == 0, second.output
    assert done["status"] == "DONE", done["error_msg"]
    assert (env.root / "var" / "data" / "pull" / "big.bin").read_bytes() == data
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    gets = [line for line in nginx.requests() if line.startswith("GET /feed/big.bin")]
    assert gets[0].endswith("range=-")
    assert gets[-1] == f"GET /feed/big.bin 206 range=bytes={recorded}-"


async def test_send_to_nginx_with_webdav_put(tmp_path: Path, nginx: Nginx) -> None:
    env = GatewayEnv(tmp_path / "gw")
    env.partners["web"] = {"protocol": "http", "address": "127.0.0.1", "port": nginx.port}
    env.rule("push", "send")
    await env.start()
    try:
        data = make_file(env.folder("push") / "out.bin", 5 * MiB + 9)
        sent = await env.create(rule="push", partner="web", file="out.bin", output="in/out.bin")
        row = await env.wait_end(sent.id or 0)
        assert row.status == Status.DONE, row.error_msg
        assert (nginx.root / "in" / "out.bin").read_bytes() == data

        # nginx keeps no unfinished upload: a resumed send must start again from zero.
        partner = env.gw.config.partners["web"]
        assert isinstance(partner, HttpPartnerConfig)
        client = HttpClient("web", partner)
        await client.connect()
        try:
            assert await client.sent_offset("in/out.bin", 1000) == 0
            stat = await client.stat("in/out.bin")
            assert stat is not None and stat.size == len(data)
            assert await client.stat("in/none.bin") is None
        finally:
            await client.close()

    finally:
        await env.stop()


async def test_send_to_gateway_over_https_cut_by_kill_9_resumes_where_it_holds(
    tmp_path: Path,
) -> None:
    certs = make_cert(tmp_path / "pki", "server")
    peer = http_gateway(tmp_path / "peer", protocol="https", certs=certs)
    await peer.start()
    try:
        port = peer.gw.servers["web"].bound_port
        env = client_env(tmp_path / "gw")
        env.daemon["event_loop"] = "asyncio"
        env.partners["peer"] = {
            "protocol": "https", "address": "127.0.0.1", "port": port, "login": "alice",
            "password": PASSWORD, "ca_file": str(certs.cert), "max_rate": 6 * MiB,
        }  # fmt: skip
        env.rule("push", "send")
        loaded = env.load()
        rule_folder = loaded.paths.rule_folder(loaded.config.rules["push"])
        data = make_file(rule_folder / "big.bin", 16 * MiB + 99)
        request = {"rule": "push", "partner": "peer", "file": "big.bin", "output": "inbox/b.bin"}
        transfer = await env.plan(request)
        db = loaded.paths.database
        assert transfer.id is not None

        async def peer_row() -> Transfer | None:
            found, _ = await peer.gw.store.list_transfers(TransferFilter(limit=100))
            return found[0] if found else None

        first = await DaemonProcess.start(env.config_file)
        try:
            ready = json.loads(await first.wait_for("gatewayd ready"))
            assert ready["event_loop"] == "asyncio"
            await wait_row(db, transfer.id, lambda r: r["progress"] > 0, "made progress", first)
            async with asyncio.timeout(30):
                while (row := await peer_row()) is None or row.progress < MiB:
                    await asyncio.sleep(0.02)
        finally:
            await first.kill()
        async with asyncio.timeout(30):
            while (row := await peer_row()) is None or row.status != Status.ERROR:
                await asyncio.sleep(0.02)
        assert row.error_code == ErrorCode.TeConnectionReset
        held = row.progress
        assert 0 < held < len(data)
        assert not (peer.folder("inbox") / "alice" / "b.bin").exists()

        second = await DaemonProcess.start(env.config_file)
        try:
            started = json.loads(await second.wait_for('"data starts"'))
            assert started["offset"] == held, "resumed at what the peer durably holds"
            done = await wait_row(
                db, transfer.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
            )
        finally:
            assert await second.stop() == 0, second.output
        assert done["status"] == "DONE", done["error_msg"]
        assert (peer.folder("inbox") / "alice" / "b.bin").read_bytes() == data
        final = await peer_row()
        assert final is not None and final.id == row.id, "the peer continued the same transfer"
        assert final.status == Status.DONE
        assert final.sha256 == done["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        await peer.stop()
