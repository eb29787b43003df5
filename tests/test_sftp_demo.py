"""The shipped demo serves SFTP for the `demo` account: the README's `sftp` command."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import make_file
from tests.sftp_peers import need, sftp


async def test_demo_sftp_server_takes_and_serves_files(
    demo_config: DemoConfig, tmp_path: Path
) -> None:
    need("sftp", "sshpass")

    def ephemeral(data: dict[str, Any]) -> None:
        assert data["servers"]["sftp"] == {
            "protocol": "sftp", "address": "127.0.0.1", "port": 2222, "offer_chacha20": False,
            "max_uploads_per_account": 64, "max_downloads_per_account": 64,
        }  # fmt: skip
        data["api"]["port"] = 0
        for server in data["servers"].values():
            server["port"] = 0  # 2222 may be taken on this machine
        data["logging"]["format"] = "json"

    demo_config.edit(ephemeral)
    var = demo_config.root / "var"
    offered = make_file(var / "data" / "outbox" / "report.csv", 100_000, seed=2)
    pushed = make_file(tmp_path / "report.csv", 250_000)
    daemon = await DaemonProcess.start(demo_config.path)
    try:
        await daemon.wait_for("gatewayd ready")
        listening = [json.loads(x) for x in daemon.lines if '"server listening"' in x]
        port = next(x["port"] for x in listening if x["server"] == "sftp")
        session = await sftp(port, "demo", [
            f"put {tmp_path}/report.csv inbox/",
            "ls outbox",
            f"get outbox/report.csv {tmp_path}/pulled.csv",
        ], password="demo")  # fmt: skip
        assert "report.csv" in session.ok().output.split("ls outbox")[1]
    finally:
        assert await daemon.stop() == 0, daemon.output
    assert (var / "data" / "inbox" / "demo" / "report.csv").read_bytes() == pushed
    archived = var / "data" / "archive" / "inbox" / "demo" / "1_report.csv"  # transfer 1
    assert archived.read_bytes() == pushed
    assert (tmp_path / "pulled.csv").read_bytes() == offered
    keys = var / "sftp" / "sftp"
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
        assert (keys / f"{name}.pub").read_text().startswith(("ssh-ed25519 ", "ssh-rsa "))
