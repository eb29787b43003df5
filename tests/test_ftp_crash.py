"""kill -9 of a real `gatewayd serve` in the middle of a partner's FTPS upload, then a
restart: SIZE reports the durable progress, curl resumes it (`-C -`: APPE), the same
transfer ends byte-identical with its post tasks run once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, read_row
from tests.ftp_support import PASSWORD, curl, ftp_gateway, make_cert
from tests.gateway_env import lines, make_file, trace_task
from tests.sftp_peers import listening_port
from tests.test_sftp_crash import wait_row

MiB = 1 << 20
pytestmark = pytest.mark.timeout(120)


async def test_kill_9_mid_ftps_upload_then_curl_resumes(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    certs = make_cert(tmp_path / "certs", "server")
    env = ftp_gateway(tmp_path / "gw", tls="required", certs=certs)
    env.extra["logging"] = {"format": "json"}
    env.daemon.update(progress_interval=0.1)
    env.rules["inbox"]["post"] = [trace_task(env.out, "post")]
    loaded = env.load()
    db = loaded.paths.database
    inbox = loaded.paths.rule_folder(loaded.config.rules["inbox"]) / "alice"
    data = make_file(tmp_path / "local" / "big.bin", 3 * MiB + 7)
    tls = ["--ssl-reqd", "--cacert", str(certs.cert), "-u", f"alice:{PASSWORD}"]

    first = await DaemonProcess.start(env.config_file)
    upload = None
    try:
        await first.wait_for("gatewayd ready")
        port = await listening_port(first, "ftp")
        upload = await asyncio.create_subprocess_exec(
            "curl", "-q", "-sS", "--noproxy", "*", "--limit-rate", "600k", *tls,
            "-T", str(tmp_path / "local" / "big.bin"), f"ftp://127.0.0.1:{port}/inbox/big.bin",
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_row(db, 1, lambda r: r["progress"] > 0, "made progress", first, exists=False)
    finally:
        await first.kill()
        if upload is not None:
            assert await asyncio.wait_for(upload.wait(), 30) != 0
    recorded = read_row(db, 1)["progress"]
    assert 0 < recorded < len(data)
    assert not (inbox / "big.bin").exists()

    second = await DaemonProcess.start(env.config_file)
    try:
        await second.wait_for("gatewayd ready")
        port = await listening_port(second, "ftp")
        assert read_row(db, 1)["status"] == "INTERRUPTED"
        size = await curl(*tls, "-I", f"ftp://127.0.0.1:{port}/inbox/big.bin")
        held = read_row(db, 1)["progress"]
        assert f"Content-Length: {held}" in size.stdout, size.stdout + size.stderr
        resumed = await curl(*tls, "-C", "-", "-T", str(tmp_path / "local" / "big.bin"),
                             f"ftp://127.0.0.1:{port}/inbox/big.bin")  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "APPE big.bin" in resumed.stderr
        done = await wait_row(db, 1, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second)
    finally:
        assert await second.stop() == 0, second.output
    assert done["status"] == "DONE", done["error_msg"]
    assert (inbox / "big.bin").read_bytes() == data
    with_rows = [line for line in second.output.splitlines() if '"transfer_id": 2' in line]
    assert with_rows == [], "the same transfer was resumed, no new one"
    assert lines(env.out / "trace") == ["post big.bin"]
