"""The FTP client role: against a private vsftpd (FTPS, session reuse required, as
Debian's vsftpd does it), and gateway to gateway over FTPS (HASH checked)."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from gatewayd.model import Status
from tests.ftp_support import PASSWORD, Vsftpd, ftp_gateway, ftp_port, make_cert
from tests.gateway_env import GatewayEnv, make_file

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def vsftpd(tmp_path: Path) -> Any:
    installed = shutil.which("vsftpd") is not None or Path("/usr/sbin/vsftpd").exists()
    if os.geteuid() != 0 or not installed:
        pytest.skip("vsftpd (scripts/test installs it) and root (for its system user) needed")
    certs = make_cert(tmp_path / "vs-certs", "vsftpd")
    peer = Vsftpd(tmp_path / "vsftpd", f"gwf{secrets.token_hex(3)}", certs, rate=600_000)
    password = secrets.token_urlsafe(12)
    await peer.start(password)
    peer.password = password  # type: ignore[attr-defined]
    try:
        yield peer
    finally:
        await peer.stop()


def _gateway(root: Path, peer: Vsftpd, **partner: Any) -> GatewayEnv:
    env = GatewayEnv(root)
    assert peer.certs is not None
    env.partners["vs"] = {
        "protocol": "ftp", "address": "127.0.0.1", "port": peer.port, "tls": "explicit",
        "login": peer.user, "password": peer.password,  # type: ignore[attr-defined]
        "ca_file": str(peer.certs.cert), "read_timeout": 20,
        **partner,
    }  # fmt: skip
    env.rule("out", "send")
    env.rule("in", "receive")
    return env


async def test_send_receive_list_and_resume_with_vsftpd(tmp_path: Path, vsftpd: Vsftpd) -> None:
    env = _gateway(tmp_path / "gw", vsftpd)
    gw = await env.start()
    try:
        sent = make_file(env.folder("out") / "s.bin", 400_000)
        t = await env.create(rule="out", partner="vs", file="s.bin")
        row = await env.wait_end(t.id or 0, timeout=30)
        assert row.status == Status.DONE, row.error_msg

        theirs = make_file(vsftpd.root / "r.bin", 300_000, seed=5)
        r = await env.create(rule="in", partner="vs", file="r.bin")
        got = await env.wait_end(r.id or 0, timeout=30)
        assert got.status == Status.DONE, got.error_msg
        assert (env.folder("in") / "r.bin").read_bytes() == theirs

        client = gw.clients._clients["vs"].client
        listed = {e.name: e for e in await client.list("")}
        assert listed["s.bin"].size == 400_000 and not listed["s.bin"].is_dir
        assert listed["s.bin"].mtime is not None
        assert client.opened == 1, "the transfers share one control connection"  # type: ignore[attr-defined]

        # A send cut by our shutdown resumes where vsftpd's temporary file ends.
        big = make_file(env.folder("out") / "big.bin", 3_000_000, seed=6)
        b = await env.create(rule="out", partner="vs", file="big.bin")
        part = vsftpd.root / "big.bin.part"
        await env.wait_for(b.id or 0, lambda _: part.exists() and part.stat().st_size > 500_000,
                           "half sent", timeout=20)  # fmt: skip
        await env.stop()
        await env.start()
        resumed = await env.wait_end(b.id or 0, timeout=40)
    finally:
        await env.stop()
    assert (vsftpd.root / "s.bin").read_bytes() == sent
    assert not (vsftpd.root / "s.bin.part").exists()
    log = vsftpd.log()
    assert re.search(r'"RNFR s\.bin\.part"', log) and re.search(r'"RNTO s\.bin"', log), log[-2000:]
    assert resumed.status == Status.DONE, resumed.error_msg
    assert (vsftpd.root / "big.bin").read_bytes() == big
    rest = [int(n) for n in re.findall(r'"REST (\d+)"', log)]
    assert rest and 0 < rest[-1] < 3_000_000, "the resumed send started from the bytes vsftpd held"


async def test_gateway_to_gateway_over_ftps(tmp_path: Path) -> None:
    certs = make_cert(tmp_path / "certs", "server")
    server = ftp_gateway(tmp_path / "b", tls="required", certs=certs)
    await server.start()
    try:
        port = ftp_port(server)
        client = GatewayEnv(tmp_path / "a")
        client.partners["b"] = {
            "protocol": "ftp", "address": "127.0.0.1", "port": port, "tls": "explicit",
            "login": "alice", "password": PASSWORD, "ca_file": str(certs.cert),
            "remote_dir": "/inbox", "read_timeout": 20,
        }  # fmt: skip
        client.partners["b-out"] = {**client.partners["b"], "remote_dir": "/outbox"}
        client.rule("push", "send")
        client.rule("pull", "receive")
        await client.start()
        try:
            data = make_file(client.folder("push") / "g.bin", 2_000_000)
            t = await client.create(rule="push", partner="b", file="g.bin")
            sent = await client.wait_end(t.id or 0, timeout=30)
            offered = make_file(server.folder("outbox") / "o.bin", 900_000, seed=7)
            r = await client.create(rule="pull", partner="b-out", file="o.bin")
            got = await client.wait_end(r.id or 0, timeout=30)
            pulled = (client.folder("pull") / "o.bin").read_bytes()
        finally:
            await client.stop()
        rows = [await server.row(i) for i in (1, 2)]
        inbox = server.folder("inbox") / "alice"
    finally:
        await server.stop()
    assert sent.status == Status.DONE, sent.error_msg
    assert got.status == Status.DONE, got.error_msg
    assert (inbox / "g.bin").read_bytes() == data and not (inbox / "g.bin.part").exists()
    assert pulled == offered
    assert [r.status for r in rows] == [Status.DONE, Status.DONE]
    assert rows[0].dest_filename == "g.bin" and rows[0].sha256 == sent.sha256
