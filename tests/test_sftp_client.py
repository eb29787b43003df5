"""gatewayd as an SFTP client of a real OpenSSH `sshd` (started by the test, with its own
configuration): sends, receives, pinned host keys, logins, temporary names."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gatewayd.model import ErrorCode, Status
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import Sshd, keygen


@dataclass
class Peer:
    sshd: Sshd
    key: Path  # our private key, authorized on the peer
    folder: Path  # the peer's folder for our transfers

    def partner(self, **extra: Any) -> dict[str, Any]:
        return {
            "protocol": "sftp",
            "address": "127.0.0.1",
            "port": self.sshd.port,
            "login": os.environ.get("USER") or "root",
            "private_key": str(self.key),
            "host_keys": [self.sshd.host_key],
            "remote_dir": str(self.folder),
            **extra,
        }


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[Peer]:
    key = tmp_path / "keys" / "gatewayd"
    sshd = await Sshd.start(tmp_path / "sshd", [keygen(key)])
    folder = tmp_path / "peer"
    folder.mkdir()
    try:
        yield Peer(sshd, key, folder)
    finally:
        sshd.stop()


def gateway(tmp_path: Path, peer: Peer, **partner: Any) -> GatewayEnv:
    env = GatewayEnv(tmp_path / "gw")
    env.partners["peer"] = peer.partner(**partner)
    env.rule("out", "send", post=[trace_task(env.out, "sent")])
    env.rule("in", "receive", post=[trace_task(env.out, "received")])
    return env


async def test_send_and_receive_with_openssh(tmp_path: Path, peer: Peer) -> None:
    env = gateway(tmp_path, peer)
    await env.start()
    try:
        data = make_file(env.folder("out") / "report.csv", 3_000_000 + 3)
        sent = await env.create(rule="out", partner="peer", file="report.csv")
        incoming = make_file(peer.folder / "order.xml", 1_000_000 + 1, seed=5)
        got = await env.create(rule="in", partner="peer", file="order.xml", isSend=False)
        sent_row = await env.wait_end(sent.id or 0, timeout=30)
        got_row = await env.wait_end(got.id or 0, timeout=30)
        inbox = env.folder("in")
    finally:
        await env.stop()
    assert sent_row.status == Status.DONE, sent_row.error_msg
    assert got_row.status == Status.DONE, got_row.error_msg
    assert (peer.folder / "report.csv").read_bytes() == data
    assert sorted(p.name for p in peer.folder.iterdir()) == ["order.xml", "report.csv"]
    assert (inbox / "order.xml").read_bytes() == incoming
    assert sent_row.progress == len(data) and got_row.progress == len(incoming)
    assert sorted(lines(env.out / "trace")) == ["received order.xml", "sent report.csv"]


async def test_a_wrong_host_key_is_refused(tmp_path: Path, peer: Peer) -> None:
    other = keygen(tmp_path / "keys" / "impostor")
    env = gateway(tmp_path, peer, host_keys=[other])
    await env.start()
    try:
        make_file(env.folder("out") / "x.bin", 100)
        t = await env.create(rule="out", partner="peer", file="x.bin")
        row = await env.wait_end(t.id or 0, timeout=30)
    finally:
        await env.stop()
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeBadAuthentication)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(peer.sshd.root / "ssh_host_ed25519_key.pub")],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert "host key mismatch for partner peer" in row.error_msg
    assert fingerprint in row.error_msg, "the message names the key the peer presented"
    assert list(peer.folder.iterdir()) == []


async def test_a_wrong_login_is_refused(tmp_path: Path, peer: Peer) -> None:
    stranger = tmp_path / "keys" / "stranger"
    keygen(stranger)
    env = gateway(tmp_path, peer, private_key=str(stranger))
    await env.start()
    try:
        make_file(env.folder("out") / "x.bin", 100)
        t = await env.create(rule="out", partner="peer", file="x.bin")
        row = await env.wait_end(t.id or 0, timeout=30)
    finally:
        await env.stop()
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeBadAuthentication)
    assert "refused the login" in row.error_msg


async def test_final_name_directly_and_one_connection(tmp_path: Path, peer: Peer) -> None:
    env = gateway(tmp_path, peer, upload_to_final_name=True)
    gw = await env.start()
    try:
        files = [make_file(env.folder("out") / f"f{i}.bin", 50_000, seed=i) for i in range(3)]
        created = [await env.create(rule="out", partner="peer", file=f"f{i}.bin") for i in range(3)]
        ended = [await env.wait_end(t.id or 0, timeout=30) for t in created]
        client = gw.clients._clients["peer"].client
        conn = client._conn  # type: ignore[attr-defined]
    finally:
        await env.stop()
    assert [t.status for t in ended] == [Status.DONE] * 3, [t.error_msg for t in ended]
    for i, data in enumerate(files):
        assert (peer.folder / f"f{i}.bin").read_bytes() == data
    assert conn is not None
    accepted = peer.sshd.log().count("Accepted publickey")
    assert accepted == 1, "the transfers to a partner share one SSH connection"


async def test_password_login(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a password login to sshd needs a system user (root creates one)")
    user = f"gwt{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}", text=True, check=True)
        sshd = await Sshd.start(tmp_path / "sshd", [], passwords=True)
        # Outside tmp_path, whose parents only root may cross.
        folder = Path(tempfile.mkdtemp(prefix="gatewayd-sftp-"))
        folder.chmod(0o777)
        try:
            env = GatewayEnv(tmp_path / "gw")
            env.partners["peer"] = {
                "protocol": "sftp", "address": "127.0.0.1", "port": sshd.port,
                "login": user, "password": password, "host_keys": [sshd.host_key],
                "remote_dir": str(folder),
            }  # fmt: skip
            env.rule("out", "send")
            await env.start()
            try:
                data = make_file(env.folder("out") / "p.bin", 70_000)
                t = await env.create(rule="out", partner="peer", file="p.bin")
                row = await env.wait_end(t.id or 0, timeout=30)
            finally:
                await env.stop()
        finally:
            sshd.stop()
            data_on_peer = (folder / "p.bin").read_bytes() if (folder / "p.bin").exists() else b""
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["userdel", user], check=True, capture_output=True)
    assert row.status == Status.DONE, row.error_msg
    assert data_on_peer == data
    assert password not in row.error_msg
