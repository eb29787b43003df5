"""kill -9 of a real `gatewayd serve` in the middle of SFTP data, then a restart:
a send to an OpenSSH server resumes from a non-zero offset, and a partner's upload is
resumed by OpenSSH's `reput`; both end byte-identical with their post tasks run once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.daemon_proc import DaemonProcess, read_row
from tests.daemon_proc import wait_row as wait_existing_row
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import SftpSession, Sshd, keygen, listening_port, need, sftp

MiB = 1 << 20


async def wait_row(
    db: Path,
    transfer_id: int,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    daemon: DaemonProcess,
    exists: bool = True,
) -> dict[str, Any]:
    """`wait_row` of test_crash_resume; with `exists=False`, the row may not exist yet
    (a partner's upload creates it)."""
    if not exists:
        try:
            async with asyncio.timeout(30):
                while not rows_exist(db, transfer_id):
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"no transfer {transfer_id}:\n{daemon.output}") from None
    return await wait_existing_row(db, transfer_id, check, what, daemon)


def rows_exist(db: Path, transfer_id: int) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM transfers WHERE id = ?", (transfer_id,)).fetchone()
    return found is not None


async def test_kill_9_mid_sftp_send_then_restart_resumes(tmp_path: Path) -> None:
    need("sftp")
    key = tmp_path / "keys" / "gatewayd"
    sshd = await Sshd.start(tmp_path / "sshd", [keygen(key)])
    peer = tmp_path / "peer"
    peer.mkdir()
    try:
        env = GatewayEnv(tmp_path / "gw")
        env.daemon.update(progress_interval=0.2)
        env.extra["logging"] = {"format": "json"}
        env.partners["peer"] = {
            "protocol": "sftp", "address": "127.0.0.1", "port": sshd.port, "login": "root",
            "private_key": str(key), "host_keys": [sshd.host_key], "remote_dir": str(peer),
            "max_rate": 6 * MiB, "sync_interval": 0.2,
        }  # fmt: skip
        env.rule("out", "send", post=[trace_task(env.out, "post")])
        loaded = env.load()
        folder = loaded.paths.rule_folder(loaded.config.rules["out"])
        data = make_file(folder / "big.bin", 12 * MiB + 5)
        db = loaded.paths.database
        transfer = await env.plan({"rule": "out", "partner": "peer", "file": "big.bin"})
        assert transfer.id is not None

        first = await DaemonProcess.start(env.config_file)
        try:
            await first.wait_for("gatewayd ready")
            await wait_row(db, transfer.id, lambda r: r["progress"] > 0, "made progress", first)
        finally:
            await first.kill()
        at_kill = read_row(db, transfer.id)
        assert at_kill["status"] == "RUNNING" and at_kill["step"] == "DATA"
        recorded = at_kill["progress"]
        assert 0 < recorded < len(data)
        held = (peer / "big.bin.part").stat().st_size
        assert held >= recorded, "the peer holds at least what the row says it does"
        assert not (peer / "big.bin").exists()

        second = await DaemonProcess.start(env.config_file)
        try:
            started = json.loads(await second.wait_for('"data starts"'))
            assert started["transfer_id"] == transfer.id
            assert started["offset"] == min(recorded, held) > 0
            done = await wait_row(
                db, transfer.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
            )
        finally:
            assert await second.stop() == 0, second.output
    finally:
        sshd.stop()
    assert done["status"] == "DONE", done["error_msg"]
    assert (peer / "big.bin").read_bytes() == data
    assert not (peer / "big.bin.part").exists()
    assert lines(env.out / "trace") == ["post big.bin"], "post tasks ran exactly once"


async def test_kill_9_mid_partner_upload_then_reput(tmp_path: Path) -> None:
    need("sftp")
    env = GatewayEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    env.accounts["acme"] = {"public_keys": [keygen(key)]}
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    env.extra["logging"] = {"format": "json"}
    env.daemon.update(progress_interval=0.1)
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    loaded = env.load()
    db = loaded.paths.database
    inbox = loaded.paths.rule_folder(loaded.config.rules["inbox"]) / "acme"
    data = make_file(tmp_path / "local" / "big.bin", 4 * MiB + 11)

    first = await DaemonProcess.start(env.config_file)
    session = None
    try:
        await first.wait_for("gatewayd ready")
        port = await listening_port(first)
        # 8 Mbit/s: about four seconds of data, cut in the middle.
        session = await SftpSession.start(
            port, "acme", key, [f"put {tmp_path}/local/big.bin /inbox/big.bin"],
            options=("-l", "8000"),
        )  # fmt: skip
        await wait_row(db, 1, lambda r: r["progress"] > 0, "made progress", first, exists=False)
    finally:
        await first.kill()
        if session is not None:
            cut = await session.finish()
            assert cut.returncode != 0, cut.output
    recorded = read_row(db, 1)["progress"]
    assert 0 < recorded < len(data)
    assert not (inbox / "big.bin").exists()

    second = await DaemonProcess.start(env.config_file)
    try:
        await second.wait_for("gatewayd ready")
        port = await listening_port(second)
        interrupted = read_row(db, 1)
        assert interrupted["status"] == "INTERRUPTED"
        listing = await sftp(port, "acme", ["ls -l /inbox"], key=key)
        assert f" {interrupted['progress']} " in listing.ok().output, listing.output
        resumed = await sftp(
            port, "acme", [f"reput {tmp_path}/local/big.bin /inbox/big.bin"], key=key
        )
        resumed.ok()
        done = await wait_row(db, 1, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second)
    finally:
        assert await second.stop() == 0, second.output
    assert done["status"] == "DONE", done["error_msg"]
    assert (inbox / "big.bin").read_bytes() == data
    assert done["progress"] == len(data)
    with_rows = [line for line in second.output.splitlines() if '"transfer_id": 2' in line]
    assert with_rows == [], "the same transfer was resumed, no new one"
    assert lines(env.out / "trace") == ["post big.bin"]
