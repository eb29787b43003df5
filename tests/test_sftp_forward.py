"""Store and forward over SFTP: gatewayd A receives a file from OpenSSH's `sftp` and a
TRANSFER task sends it on to gatewayd B's SFTP server, the followID carried across; and
an SFTP send paused and resumed through the admin API."""

from __future__ import annotations

from pathlib import Path

from gatewayd.model import Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.api_support import ApiEnv
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import Sshd, keygen, need, sftp
from tests.test_api_transfers import wait_transfer

MiB = 1 << 20


async def only_transfer(env: GatewayEnv, **match: object) -> Transfer:
    found, _ = await env.gw.store.list_transfers(TransferFilter(limit=100))
    chosen = [t for t in found if all(getattr(t, k) == v for k, v in match.items())]
    assert len(chosen) == 1, found
    return chosen[0]


async def test_gateway_to_gateway_forwarding_keeps_the_follow_id(tmp_path: Path) -> None:
    need("sftp")
    # B: an SFTP server where A has an account.
    b = GatewayEnv(tmp_path / "b")
    a_key = tmp_path / "keys" / "gateway-a"
    b.accounts["gwa"] = {"public_keys": [keygen(a_key)]}
    b.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    b.rule("in", "receive", post=[trace_task(b.out, "B got")])
    gw_b = await b.start()
    try:
        host_key = (b.root / "var" / "sftp" / "sftp" / "ssh_host_ed25519_key.pub").read_text()
        # A: receives from a partner, forwards to B with a TRANSFER post task.
        a = GatewayEnv(tmp_path / "a")
        partner_key = tmp_path / "keys" / "acme"
        a.accounts["acme"] = {"public_keys": [keygen(partner_key)]}
        a.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
        a.partners["b"] = {
            "protocol": "sftp", "address": "127.0.0.1", "port": gw_b.servers["sftp"].bound_port,
            "login": "gwa", "private_key": str(a_key), "host_keys": [host_key.strip()],
            "remote_dir": "/in",
        }  # fmt: skip
        forward = {"type": "TRANSFER", "args": {"file": "#TRUEFULLPATH#", "to": "b", "rule": "fwd"}}
        a.rule("inbox", "receive", post=[forward])
        a.rule("fwd", "send", post=[trace_task(a.out, "A sent")])
        gw_a = await a.start()
        try:
            data = make_file(tmp_path / "local" / "order.xml", 400_000)
            port = gw_a.servers["sftp"].bound_port
            upload = [f"put {tmp_path}/local/order.xml /inbox/order.xml"]
            (await sftp(port, "acme", upload, key=partner_key)).ok()
            received = await only_transfer(a, rule="inbox")
            assert received.status == Status.DONE, received.error_msg
            child = await only_transfer(a, rule="fwd")
            child = await a.wait_end(child.id or 0, timeout=30)
            assert child.status == Status.DONE, child.error_msg
            at_b = await only_transfer(b, rule="in")
            at_b = await b.wait_end(at_b.id or 0, timeout=30)
        finally:
            await a.stop()
    finally:
        await b.stop()
    assert at_b.status == Status.DONE, at_b.error_msg
    assert (b.root / "var" / "data" / "in" / "gwa" / "order.xml").read_bytes() == data
    assert received.follow_id != ""
    assert child.follow_id == received.follow_id
    assert at_b.follow_id == received.follow_id, "B's transfer carries A's followID"
    assert at_b.transfer_info["followID"] == received.follow_id
    assert (at_b.account, at_b.is_server, at_b.is_send) == ("gwa", True, False)
    assert lines(a.out / "trace") == ["A sent order.xml"]
    assert lines(b.out / "trace") == ["B got order.xml"]


async def test_pause_and_resume_a_running_sftp_send_through_the_api(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "gatewayd"
    sshd = await Sshd.start(tmp_path / "sshd", [keygen(key)])
    peer = tmp_path / "peer"
    peer.mkdir()
    env = ApiEnv(tmp_path / "gw")
    env.daemon["progress_interval"] = 0.05
    env.partners["peer"] = {
        "protocol": "sftp", "address": "127.0.0.1", "port": sshd.port, "login": "root",
        "private_key": str(key), "host_keys": [sshd.host_key], "remote_dir": str(peer),
        "max_rate": 4 * MiB, "sync_interval": 0.05,
    }  # fmt: skip
    env.rule("out", "send", post=[trace_task(env.out, "sent")])
    offsets: list[int] = []

    async def note(t: Transfer, offset: int) -> None:
        offsets.append(offset)

    try:
        await env.start()
        data = make_file(env.folder("out") / "big.bin", 6 * MiB + 1)
        body = {"rule": "out", "partner": "peer", "file": "big.bin", "nbOfAttempts": 0}
        created = await env.api.call("POST", "/api/transfers", json_body=body)
        assert created.status == 201, created.text
        tid = created.body["id"]
        await wait_transfer(
            env.api, tid, lambda r: r["status"] == "RUNNING" and r["progress"] > MiB, "under way"
        )
        paused = await env.api.call("PUT", f"/api/transfers/{tid}/pause")
        assert paused.status == 202, paused.text
        assert (paused.body["status"], paused.body["errorCode"]) == ("PAUSED", "TeStopped")
        held = paused.body["progress"]
        assert 0 < held < len(data)
        assert tid not in env.gw.engine.active
        assert not (peer / "big.bin").exists()

        env.hooks.during_data = note
        resumed = await env.api.call("PUT", f"/api/transfers/{tid}/resume")
        assert resumed.status == 202, resumed.text
        row = await wait_transfer(env.api, tid, lambda r: r["status"] in ("DONE", "ERROR"), "ended")
    finally:
        await env.stop()
        sshd.stop()
    assert row["status"] == "DONE", row
    assert offsets and min(offsets) > held, "the send went on from where it was paused"
    assert (peer / "big.bin").read_bytes() == data
    assert lines(env.out / "trace") == ["sent big.bin"]
