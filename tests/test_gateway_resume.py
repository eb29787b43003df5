"""gatewayd sends to another gatewayd over SFTP: the sender, a real `gatewayd serve`,
killed with -9 in the middle of DATA, resumes after its restart at an offset the
receiving gateway holds, and both end DONE with the file byte-identical under its own
name (no `_1`). And a send is DONE only when the partner acknowledged the whole file:
a gateway that put our file under another name is no delivery."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.crash_support import kill_9, start_daemon
from tests.daemon_proc import read_row, wait_row
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import keygen, need

MiB = 1 << 20


class Partner:
    """Gateway B, in this event loop: an SFTP server where gateway A has the account
    `gwa`, receiving into rule `in`."""

    def __init__(self, env: GatewayEnv, key: Path) -> None:
        self.env, self.key = env, key
        self.port = env.gw.servers["sftp"].bound_port
        host_key = env.root / "var" / "sftp" / "sftp" / "ssh_host_ed25519_key.pub"
        self.host_key = host_key.read_text().strip()
        self.folder = env.folder("in") / "gwa"

    def partner_config(self, **options: Any) -> dict[str, Any]:
        """How gateway A names B among its partners."""
        return {
            "protocol": "sftp", "address": "127.0.0.1", "port": self.port, "login": "gwa",
            "private_key": str(self.key), "host_keys": [self.host_key], "remote_dir": "/in",
            **options,
        }  # fmt: skip

    async def rows(self) -> list[Transfer]:
        found, _ = await self.env.gw.store.list_transfers(TransferFilter(sort="id"))
        return found

    async def wait(self, check: Any, what: str, timeout: float = 30) -> Transfer:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    rows = await self.rows()
                    if rows and check(rows[-1]):
                        return rows[-1]
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"B's transfer never {what}: {await self.rows()}") from None


@pytest.fixture
async def partner(tmp_path: Path) -> AsyncIterator[Partner]:
    need("sftp")
    env = GatewayEnv(tmp_path / "b")
    key = tmp_path / "keys" / "gwa"
    env.accounts["gwa"] = {"public_keys": [keygen(key)]}
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    env.daemon["progress_interval"] = 0.1
    env.rule("in", "receive", post=[trace_task(env.out, "B got")])
    await env.start()
    try:
        yield Partner(env, key)
    finally:
        await env.stop()


@pytest.mark.parametrize("final_name", [False, True], ids=["part-name", "final-name"])
async def test_sender_killed_mid_data_resumes_where_the_partner_holds(
    tmp_path: Path, partner: Partner, final_name: bool
) -> None:
    a = GatewayEnv(tmp_path / "a")
    a.daemon.update(progress_interval=0.2)
    a.extra["logging"] = {"format": "json"}
    a.partners["b"] = partner.partner_config(
        max_rate=4 * MiB, sync_interval=0.2, upload_to_final_name=final_name
    )
    a.rule("out", "send", post=[trace_task(a.out, "A sent")])
    loaded = a.load()
    data = make_file(loaded.paths.rule_folder(loaded.config.rules["out"]) / "big.bin", 6 * MiB)
    db = loaded.paths.database
    sent = await a.plan({"rule": "out", "partner": "b", "file": "big.bin"})
    assert sent.id is not None

    first = await start_daemon(a.config_file)
    try:
        await first.wait_for("gatewayd ready")
        await wait_row(db, sent.id, lambda r: r["progress"] > MiB, "made progress", first)
    finally:
        await kill_9(first)
    recorded = read_row(db, sent.id)["progress"]
    cut = await partner.wait(lambda t: t.status == Status.ERROR, "ended by the cut")
    assert cut.error_code == ErrorCode.TeConnectionReset, cut.error_msg
    assert 0 < recorded <= cut.progress < len(data), "B holds at least what A recorded"

    second = await start_daemon(a.config_file)
    try:
        started = json.loads(await second.wait_for('"data starts"'))
        assert 0 < started["offset"] <= cut.progress
        done = await wait_row(
            db, sent.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
        )
    finally:
        assert await second.stop() == 0, second.output
    assert done["status"] == "DONE", done["error_msg"]
    at_b = await partner.wait(lambda t: t.status != Status.RUNNING, "ended")
    assert (at_b.id, at_b.status) == (cut.id, Status.DONE), "B continued the same transfer"
    assert [p.name for p in partner.folder.iterdir()] == ["big.bin"], "no big_1.bin"
    assert (partner.folder / "big.bin").read_bytes() == data
    assert at_b.sha256 == done["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(await partner.rows()) == 1
    assert lines(partner.env.out / "trace") == ["B got big.bin"]
    assert lines(a.out / "trace") == ["A sent big.bin"]


async def test_a_file_the_partner_placed_elsewhere_is_no_delivery(
    tmp_path: Path, partner: Partner
) -> None:
    """B already has a `report.bin` of the same size: it lands ours as `report_1.bin`
    (its collision policy), and `report.bin` is not what we sent. B, a gatewayd, tells
    its SHA-256 of `report.bin` (`sha256sum` exec): the send ends in ERROR, not DONE."""
    theirs = make_file(partner.folder / "report.bin", 300_000, seed=2)
    a = GatewayEnv(tmp_path / "a")
    a.partners["b"] = partner.partner_config()
    a.rule("out", "send", post=[trace_task(a.out, "A sent")])
    await a.start()
    try:
        ours = make_file(a.folder("out") / "report.bin", len(theirs), seed=3)
        sent = await a.create(rule="out", partner="b", file="report.bin")
        row = await a.wait_end(sent.id or 0, timeout=30)
    finally:
        await a.stop()
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeIntegrity), row
    assert "SHA-256" in row.error_msg
    assert lines(a.out / "trace") == [], "no post task of a send not delivered"
    assert (partner.folder / "report.bin").read_bytes() == theirs
    assert (partner.folder / "report_1.bin").read_bytes() == ours
