"""The shipped demo serves HTTP for the `demo` account: the README's curl commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import make_file
from tests.http_support import run_curl


async def test_demo_http_server_takes_and_serves_files(
    demo_config: DemoConfig, tmp_path: Path
) -> None:
    def ephemeral(data: dict[str, Any]) -> None:
        assert data["servers"]["http"] == {
            "protocol": "http", "address": "127.0.0.1", "port": 8081,
            "max_body_size": 0, "max_uploads_per_account": 4, "max_downloads_per_account": 16,
            "header_timeout": 30,
        }  # fmt: skip
        data["api"]["port"] = 0
        for server in data["servers"].values():
            server["port"] = 0  # 8081 may be taken on this machine
        data["logging"]["format"] = "json"

    demo_config.edit(ephemeral)
    var = demo_config.root / "var" / "data"
    offered = make_file(var / "outbox" / "report.csv", 100_000, seed=2)
    daemon = await DaemonProcess.start(demo_config.path)
    try:
        await daemon.wait_for("gatewayd ready")
        listening = [json.loads(x) for x in daemon.lines if '"server listening"' in x]
        port = next(x["port"] for x in listening if x["server"] == "http")
        base = f"http://127.0.0.1:{port}"
        pushed = make_file(tmp_path / "report.csv", 250_000)
        push = await run_curl(
            "-u", "demo:demo", "-T", str(tmp_path / "report.csv"), f"{base}/inbox/"
        )
        assert push.status == 201, push
        assert (var / "inbox" / "demo" / "report.csv").read_bytes() == pushed
        archived = var / "archive" / "inbox" / "demo" / "1_report.csv"  # transfer 1
        assert archived.read_bytes() == pushed, "post task"
        got = tmp_path / "pulled.csv"
        pull = await run_curl("-u", "demo:demo", f"{base}/outbox/report.csv", output=got)
        assert pull.status == 200 and got.read_bytes() == offered
    finally:
        assert await daemon.stop() == 0, daemon.output
    assert "demo:demo" not in daemon.output
