"""The admin API of a real `gatewayd serve` process, driven with real `curl`: the
shipped demo's API user, a transfer created and followed to completion, and a 401."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import PASSWORD, ApiEnv
from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import environ_without_proxy, make_file

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


async def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """Run curl; returns (HTTP status, headers, body)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "--max-time", "20", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=environ_without_proxy(),
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    head, _, body = out.decode().replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


async def api_port(daemon: DaemonProcess) -> int:
    line = await daemon.wait_for("api listening")
    if line.lstrip().startswith("{"):
        return int(json.loads(line)["port"])
    return int(line.split("port=")[1].split()[0])


async def test_the_shipped_demo_serves_its_admin_user(demo_config: DemoConfig) -> None:
    def ephemeral(data: dict[str, Any]) -> None:
        # The demo's fixed ports (8080, ...) may be taken on this machine.
        data["api"]["port"] = 0
        for server in (data.get("servers") or {}).values():
            server["port"] = 0
        for server in (data.get("servers") or {}).values():
            server["port"] = 0  # and so may its listeners' ports (8081, ...)

    demo_config.edit(ephemeral)
    daemon = await DaemonProcess.start(demo_config.path)
    try:
        port = await api_port(daemon)
        await daemon.wait_for("gatewayd ready")
        status, headers, body = await curl(
            "-u", "admin:admin", f"http://127.0.0.1:{port}/api/about"
        )
        assert status == 200, body
        about = json.loads(body)
        assert about["user"] == "admin" and about["database"]["state"] == "ok"
        # SQLite: one node, this one, alive.
        [node] = about["nodes"]
        assert node["name"] == about["node"] and node["this"] and node["alive"], node
        assert node["pid"] == daemon.proc.pid and node["running"] == 0, node
        assert headers["content-type"].startswith("application/json")
        status, _, body = await curl("-u", "admin:admin", f"http://127.0.0.1:{port}/api/rules")
        assert [r["name"] for r in json.loads(body)["rules"]] == ["inbox", "outbox"]
    finally:
        assert await daemon.stop() == 0, daemon.output
    assert "admin:admin" not in daemon.output


async def test_curl_creates_and_follows_a_transfer(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.extra["logging"] = {"format": "json"}
    env.rule("out", "send")
    loaded = env.load()
    data = make_file(loaded.paths.rule_folder(loaded.config.rules["out"]) / "a.bin", 200_000)
    daemon = await DaemonProcess.start(env.config_file)
    try:
        base = f"http://127.0.0.1:{await api_port(daemon)}"
        login = ("-u", f"admin:{PASSWORD}")
        status, headers, body = await curl(f"{base}/api/transfers")
        assert status == 401 and "Basic" in headers["www-authenticate"]
        assert json.loads(body)["errors"][0]["errorCode"] == "unauthorized"
        request = {"rule": "out", "partner": "share", "file": "a.bin", "nbOfAttempts": 0}
        status, headers, body = await curl(
            *login, "-H", "Content-Type: application/json", "-d", json.dumps(request),
            f"{base}/api/transfers",
        )  # fmt: skip
        assert status == 201, body
        location = headers["location"]
        row: dict[str, Any] = {}
        async with asyncio.timeout(30):
            while row.get("status") not in ("DONE", "ERROR"):
                status, _, body = await curl(*login, base + location)
                row = json.loads(body)
                await asyncio.sleep(0.05)
        assert row["status"] == "DONE", row
        assert (env.share / "a.bin").read_bytes() == data
        # `sort=start+` as people type it: curl sends the `+` as is.
        status, _, body = await curl(*login, "-g", f"{base}/api/transfers?sort=start+&limit=5")
        assert status == 200 and json.loads(body)["total"] == 1
        status, _, body = await curl(
            *login, "-X", "POST", "-H", "Content-Type: application/json", "-d", "{bad",
            f"{base}/api/transfers",
        )  # fmt: skip
        assert status == 400 and json.loads(body)["errors"][0]["errorCode"] == "malformed_json"
    finally:
        assert await daemon.stop() == 0, daemon.output
    assert PASSWORD not in daemon.output
