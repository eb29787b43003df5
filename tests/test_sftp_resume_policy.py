"""The resume policy of our SFTP server, with asyncssh as the partner writing at the
offsets it chooses: an upload cut with 6 MiB held continues from any offset up to
6 MiB (the held bytes cut there); an offset above is refused with the held count, and
the refused handle completes nothing on close (no empty file recorded DONE, no held
byte dropped, the name not left blocked)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import keygen

MiB = 1 << 20
HELD = 6 * MiB


class Served:
    def __init__(self, env: GatewayEnv, key: Path) -> None:
        self.env, self.key = env, key
        self.port = env.gw.servers["sftp"].bound_port
        self.inbox = env.folder("inbox") / "acme"

    def connect(self) -> asyncssh.SSHClientConnection:
        return asyncssh.connect(
            "127.0.0.1", self.port, username="acme", client_keys=[str(self.key)],
            known_hosts=None, agent_path=None,
        )  # fmt: skip

    async def rows(self) -> list[Transfer]:
        found, _ = await self.env.gw.store.list_transfers(TransferFilter(sort="id"))
        return found

    async def cut_upload(self, path: str, data: bytes) -> Transfer:
        """Write the first HELD bytes of `data` to `path`, fsynced, then drop the
        connection: the transfer ends in ERROR holding exactly HELD bytes."""
        conn = await self.connect()
        sftp = await conn.start_sftp_client()
        remote = await sftp.open(path, "wb")
        await remote.write(data[:HELD], 0)
        await remote.fsync()
        conn.abort()
        rows = await self.rows()
        row = await self.env.wait_for(
            rows[-1].id or 0, lambda t: t.status == Status.ERROR, "cut", 30
        )
        assert row.error_code == ErrorCode.TeConnectionReset, row.error_msg
        assert row.progress == HELD
        return row

    async def write_from(self, path: str, data: bytes, offset: int) -> None:
        """Open `path` for writing (no truncation, as a resuming client does) and write
        `data` from `offset` to its end, then close."""
        async with self.connect() as conn, conn.start_sftp_client() as sftp:
            remote = await sftp.open(path, asyncssh.FXF_WRITE | asyncssh.FXF_CREAT, encoding=None)
            try:
                for at in range(offset, len(data), MiB):
                    await remote.write(data[at : at + MiB], at)
            finally:
                await remote.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    env = GatewayEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    env.accounts["acme"] = {"public_keys": [keygen(key)]}
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    await env.start()
    try:
        yield Served(env, key)
    finally:
        await env.stop()


async def test_a_resume_below_the_held_bytes_continues_the_transfer(
    served: Served, tmp_path: Path
) -> None:
    s = served
    data = make_file(tmp_path / "order.bin", 8 * MiB + 5)
    cut = await s.cut_upload("/inbox/order.bin", data)

    # Above what is held: refused with the held count, and the close completes nothing.
    async with s.connect() as conn, conn.start_sftp_client() as sftp:
        remote = await sftp.open(
            "/inbox/order.bin", asyncssh.FXF_WRITE | asyncssh.FXF_CREAT, encoding=None
        )
        with pytest.raises(asyncssh.SFTPError, match=f"{HELD} bytes are held"):
            await remote.write(data[7 * MiB : 8 * MiB], 7 * MiB)
        with pytest.raises(asyncssh.SFTPError, match=f"{HELD} bytes are held"):
            await remote.close()
        assert (await sftp.stat("/inbox/order.bin")).size == HELD, "still held, all of it"
    [row] = await s.rows()
    assert (row.id, row.status, row.progress) == (cut.id, Status.ERROR, HELD)
    assert not s.inbox.exists() or list(s.inbox.iterdir()) == [], "no file, not even empty"

    # At 1 MiB, below what is held: the same transfer, its temp file cut there.
    await s.write_from("/inbox/order.bin", data, MiB)
    [row] = await s.rows()
    assert (row.id, row.status) == (cut.id, Status.DONE), row.error_msg
    assert row.filesize == row.progress == len(data)
    assert row.sha256 == hashlib.sha256(data).hexdigest(), "the kept prefix hashed again"
    assert sorted(p.name for p in s.inbox.iterdir()) == ["order.bin"], "no order_1.bin"
    assert (s.inbox / "order.bin").read_bytes() == data
    assert lines(s.env.out / "trace") == ["post order.bin"]


async def test_a_refused_resume_keeps_a_temporary_name_held_and_free(
    served: Served, tmp_path: Path
) -> None:
    s = served
    data = make_file(tmp_path / "order.bin", 8 * MiB + 5)
    cut = await s.cut_upload("/inbox/order.bin.part", data)
    with pytest.raises(asyncssh.SFTPError, match=f"{HELD} bytes are held"):
        await s.write_from("/inbox/order.bin.part", data, 7 * MiB)
    [row] = await s.rows()
    assert (row.status, row.progress) == (Status.ERROR, HELD), "no held byte dropped"

    # At once (the name is not blocked), the right resume, then the rename completes it.
    await s.write_from("/inbox/order.bin.part", data, HELD)
    async with s.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.rename("/inbox/order.bin.part", "/inbox/order.bin")
    row = await s.env.wait_end(cut.id or 0)
    assert row.status == Status.DONE, row.error_msg
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in s.inbox.iterdir()] == ["order.bin"]
    assert (s.inbox / "order.bin").read_bytes() == data
    assert len(await s.rows()) == 1
    assert lines(s.env.out / "trace") == ["post order.bin"]
