"""Listings, deletes and renames of the protocol clients, and a poller, against real
peers: a private OpenSSH sshd, a private vsftpd (FTPS) and a private nginx (WebDAV with
JSON autoindex). The gateway runs in process with a manual clock (no sleeps)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.clock import ManualClock
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode, Status
from gatewayd.store.base import TransferFilter
from protocols.http.listing import parse_listing
from tests.ftp_support import Vsftpd, make_cert
from tests.gateway_env import GatewayEnv
from tests.http_support import Nginx
from tests.sftp_peers import Sshd, keygen

pytestmark = pytest.mark.timeout(90)

WAIT = 20.0
T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)


async def exercise(env: GatewayEnv, peer_root: Path, partner: str, remote_dir: str = "") -> None:
    """The client's list, rename and delete, then a poller with `after: delete`: a file
    fetched once, one still growing fetched once settled, removed only once DONE."""
    folder = peer_root / "box"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"x" * 1234)
    (folder / "b.txt").write_text("b")
    (folder / "sub").mkdir()
    box = f"{remote_dir}/box" if remote_dir else "box"
    env.rule("in", "receive")
    (env.root / "pollers").mkdir(exist_ok=True)
    poller = {
        "name": "p",
        "partner": partner,
        "rule": "in",
        "remote_dir": f"{box}/feed",
        "globs": ["*.csv"],
        "interval": 60,
        "after": "delete",
    }
    (env.root / "pollers" / "p.yaml").write_text(yaml.safe_dump(poller))
    feed = folder / "feed"
    feed.mkdir()
    for made in (folder, folder / "sub", feed):
        made.chmod(0o777)  # vsftpd's user renames and deletes in them
    (feed / "one.csv").write_text("one\n")
    (feed / "grow.csv").write_text("g1\n")
    (feed / "skip.txt").write_text("not matched\n")
    env.clock = ManualClock(T0)
    gw = await env.start()

    lease = await gw.clients.acquire_partner(partner)
    try:
        client = lease.client
        listed = {e.name: e for e in await client.list(box)}
        assert set(listed) == {"a.csv", "b.txt", "sub", "feed"}, listed
        assert listed["a.csv"].size == 1234 and not listed["a.csv"].is_dir
        assert listed["sub"].is_dir and listed["feed"].is_dir
        assert listed["a.csv"].mtime is not None
        assert abs(listed["a.csv"].mtime.timestamp() - (folder / "a.csv").stat().st_mtime) < 61
        await client.rename(f"{box}/a.csv", f"{box}/sub/a2.csv")
        assert (folder / "sub" / "a2.csv").stat().st_size == 1234
        assert not (folder / "a.csv").exists()
        await client.delete(f"{box}/sub/a2.csv")
        assert not (folder / "sub" / "a2.csv").exists()
        with pytest.raises(TransferError) as missing:
            await client.delete(f"{box}/sub/a2.csv")
        assert missing.value.code in (ErrorCode.TeFileNotFound, ErrorCode.TeForbidden)
    finally:
        lease.release()

    pollers = gw.pollers

    async def looks(count: int) -> None:
        async with asyncio.timeout(WAIT):
            while pollers.passes < count:
                await asyncio.sleep(0.002)

    async def taken() -> dict[str, Any]:
        rows, _ = await gw.store.list_transfers(TransferFilter(limit=100))
        return {t.dest_filename: t for t in rows if t.transfer_info.get("poller") == "p"}

    await looks(1)
    assert await taken() == {}
    (feed / "grow.csv").write_text("g1\ng2\n")  # the partner still writes it
    clock = env.clock
    assert isinstance(clock, ManualClock)
    clock.advance(60)
    await looks(2)
    assert sorted(await taken()) == ["one.csv"]
    clock.advance(60)
    await looks(3)
    found = await taken()
    assert sorted(found) == ["grow.csv", "one.csv"]
    for t in found.values():
        row = await env.wait_end(t.id, timeout=WAIT)
        assert row.status == Status.DONE, row.error_msg
    assert (env.folder("in") / "grow.csv").read_text() == "g1\ng2\n"
    assert not (feed / "one.csv").exists() and not (feed / "grow.csv").exists()
    assert (feed / "skip.txt").exists()
    clock.advance(60)
    await looks(4)
    assert len(await taken()) == 2
    assert pollers.stats("p").taken == 2 and pollers.stats("p").last_error == ""


# ---------------------------------------------------------------------- SFTP


async def test_sftp_peer(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "gatewayd"
    sshd = await Sshd.start(tmp_path / "sshd", [keygen(key)])
    peer_root = tmp_path / "peer"
    peer_root.mkdir()
    env = GatewayEnv(tmp_path / "gw")
    env.partners["peer"] = {
        "protocol": "sftp",
        "address": "127.0.0.1",
        "port": sshd.port,
        "login": os.environ.get("USER") or "root",
        "private_key": str(key),
        "host_keys": [sshd.host_key],
        "remote_dir": str(peer_root),
    }
    try:
        await exercise(env, peer_root, "peer")
    finally:
        await env.stop()
        sshd.stop()


# ---------------------------------------------------------------------- FTP


@pytest.fixture
async def vsftpd(tmp_path: Path) -> AsyncIterator[Vsftpd]:
    installed = shutil.which("vsftpd") is not None or Path("/usr/sbin/vsftpd").exists()
    if os.geteuid() != 0 or not installed:
        pytest.skip("vsftpd (scripts/test installs it) and root (for its system user) needed")
    certs = make_cert(tmp_path / "vs-certs", "vsftpd")
    peer = Vsftpd(tmp_path / "vsftpd", f"gwp{secrets.token_hex(3)}", certs)
    password = secrets.token_urlsafe(12)
    await peer.start(password)
    peer.password = password  # type: ignore[attr-defined]
    try:
        yield peer
    finally:
        await peer.stop()


async def test_ftp_peer(tmp_path: Path, vsftpd: Vsftpd) -> None:
    env = GatewayEnv(tmp_path / "gw")
    assert vsftpd.certs is not None
    env.partners["vs"] = {
        "protocol": "ftp",
        "address": "127.0.0.1",
        "port": vsftpd.port,
        "tls": "explicit",
        "login": vsftpd.user,
        "password": vsftpd.password,  # type: ignore[attr-defined]
        "ca_file": str(vsftpd.certs.cert),
        "read_timeout": 20,
    }
    try:
        await exercise(env, vsftpd.root, "vs")
    finally:
        await env.stop()


# ---------------------------------------------------------------------- HTTP


async def test_http_peer_nginx_json_autoindex(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx needed")
    nginx = Nginx(tmp_path / "nginx", listings=True)
    await nginx.start()
    env = GatewayEnv(tmp_path / "gw")
    env.partners["web"] = {"protocol": "http", "address": "127.0.0.1", "port": nginx.port}
    try:
        await exercise(env, nginx.root, "web")
    finally:
        await env.stop()
        await nginx.stop()


def test_gatewayd_json_listing_is_understood() -> None:
    # What a gatewayd HTTP server answers for a folder (protocols/http/server.py).
    body = (
        b'{"path": "/in", "entries": [{"name": "a.csv", "isDir": false, "size": 3, '
        b'"mtime": "2024-06-03T14:00:00+02:00", "unfinished": false}, '
        b'{"name": "sub", "isDir": true, "size": 0, "mtime": null, "unfinished": false}]}'
    )
    a, sub = parse_listing(body)
    assert (a.name, a.size, a.is_dir) == ("a.csv", 3, False)
    assert a.mtime == datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
    assert sub.is_dir and sub.mtime is None
    nginx = b'[{"name":"x.bin","type":"file","mtime":"Mon, 03 Jun 2024 12:00:00 GMT","size":9}]'
    [x] = parse_listing(nginx)
    assert (x.name, x.size, x.mtime) == ("x.bin", 9, datetime(2024, 6, 3, 12, tzinfo=UTC))
