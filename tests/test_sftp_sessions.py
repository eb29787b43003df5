"""Our SFTP server (in-process gateway) against OpenSSH's `sftp` and rclone: dropped
connections, `reput`, temporary names, `put -p`, fsync, statvfs, ciphers."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import SftpSession, keygen, need, sftp, ssh


@dataclass
class Served:
    env: GatewayEnv
    port: int
    key: Path
    local: Path

    @property
    def inbox(self) -> Path:
        return self.env.folder("inbox") / "acme"

    async def transfers(self) -> list[Transfer]:
        found, _ = await self.env.gw.store.list_transfers(TransferFilter(sort="id"))
        return found


async def serve(tmp_path: Path, **server: object) -> Served:
    need("sftp")
    env = GatewayEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    env.accounts["acme"] = {"public_keys": [keygen(key)]}
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0, **server}}
    env.daemon["progress_interval"] = 0.05
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    env.rule("outbox", "send", shared_folder=True)
    gw = await env.start()
    return Served(env, gw.servers["sftp"].bound_port, key, tmp_path / "local")


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve(tmp_path)
    try:
        yield s
    finally:
        await s.env.stop()


async def wait_status(s: Served, transfer_id: int, status: Status) -> Transfer:
    return await s.env.wait_for(transfer_id, lambda t: t.status == status, str(status), 30)


async def first_transfer(s: Served, check: Callable[[Transfer], bool], what: str) -> Transfer:
    """The first transfer, once it exists and satisfies `check` (bounded wait)."""
    try:
        async with asyncio.timeout(30):
            while True:
                found = await s.env.gw.store.get_transfer(1)
                if found is not None and check(found):
                    return found
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"transfer 1 never {what}: {await s.transfers()}") from None


async def test_dropped_upload_is_an_error_then_reput_resumes_it(served: Served) -> None:
    s = served
    data = make_file(s.local / "big.bin", 3_000_000)
    # 4 Mbit/s: the upload is still running when the client is killed.
    session = await SftpSession.start(
        s.port, "acme", s.key, [f"put {s.local}/big.bin /inbox/big.bin"], options=("-l", "4000")
    )
    try:
        running = await first_transfer(
            s, lambda t: t.status == Status.RUNNING and t.progress > 0, "made progress"
        )
    finally:
        session.kill()
    await session.finish()
    broken = await wait_status(s, 1, Status.ERROR)
    assert broken.error_code == ErrorCode.TeConnectionReset, broken.error_msg
    assert 0 < running.progress <= broken.progress < len(data)
    assert not (s.inbox / "big.bin").exists(), "an incomplete upload never has its final name"
    assert lines(s.env.out / "trace") == []

    # `reput` asks the size (the durable progress), then appends from there.
    listing = await sftp(s.port, "acme", ["ls -l /inbox"], key=s.key)
    assert f"{broken.progress} " in listing.ok().output
    written: list[int] = []

    async def note(t: Transfer, offset: int) -> None:
        written.append(offset)

    s.env.hooks.during_data = note
    (await sftp(s.port, "acme", [f"reput {s.local}/big.bin /inbox/big.bin"], key=s.key)).ok()
    assert written and min(written) > broken.progress, "data went on from the durable bytes"
    row = await wait_status(s, 1, Status.DONE)
    assert (s.inbox / "big.bin").read_bytes() == data
    assert row.progress == row.filesize == len(data)
    assert [t.id for t in await s.transfers()] == [1], "the same transfer resumed"
    assert lines(s.env.out / "trace") == ["post big.bin"]


async def test_a_plain_put_starts_an_unfinished_upload_again(served: Served) -> None:
    s = served
    data = make_file(s.local / "big.bin", 2_000_000)
    session = await SftpSession.start(
        s.port, "acme", s.key, [f"put {s.local}/big.bin /inbox/big.bin"], options=("-l", "4000")
    )
    try:
        await first_transfer(s, lambda t: t.progress > 0, "made progress")
    finally:
        session.kill()
    await session.finish()
    await wait_status(s, 1, Status.ERROR)
    (await sftp(s.port, "acme", [f"put {s.local}/big.bin /inbox/big.bin"], key=s.key)).ok()
    row = await wait_status(s, 1, Status.DONE)
    assert row.progress == len(data) and (s.inbox / "big.bin").read_bytes() == data


async def test_dropped_download_is_an_error(served: Served) -> None:
    s = served
    make_file(s.env.folder("outbox") / "out.bin", 3_000_000)
    s.local.mkdir()
    session = await SftpSession.start(
        s.port, "acme", s.key, [f"get /outbox/out.bin {s.local}/"], options=("-l", "4000")
    )
    try:
        await first_transfer(s, lambda t: t.status == Status.RUNNING, "started")
        async with asyncio.timeout(30):  # the partner has some of the data
            while not (got := s.local / "out.bin").exists() or got.stat().st_size < 100_000:
                await asyncio.sleep(0.01)
    finally:
        session.kill()
    await session.finish()
    row = await wait_status(s, 1, Status.ERROR)
    assert row.error_code == ErrorCode.TeConnectionReset, row.error_msg


async def test_temporary_name_completes_on_rename(served: Served) -> None:
    # What rclone (`.partial`), WinSCP (`.filepart`) and many scripts do.
    s = served
    data = make_file(s.local / "r.bin", 500_000)
    (
        await sftp(
            s.port,
            "acme",
            [f"put {s.local}/r.bin /inbox/r.bin.partial", "ls -l /inbox"],
            key=s.key,
        )
    ).ok()
    waiting = (await s.transfers())[0]
    assert waiting.status == Status.RUNNING and waiting.progress == len(data)
    assert lines(s.env.out / "trace") == [], "no post task on a temporary name"
    (await sftp(s.port, "acme", ["rename /inbox/r.bin.partial /inbox/r.bin"], key=s.key)).ok()
    row = await wait_status(s, waiting.id or 0, Status.DONE)
    assert row.dest_filename == "r.bin" and (s.inbox / "r.bin").read_bytes() == data
    assert sorted(p.name for p in s.inbox.iterdir()) == ["r.bin"]
    assert lines(s.env.out / "trace") == ["post r.bin"]
    assert len(await s.transfers()) == 1


async def test_put_p_keeps_times_and_fsync_and_df_work(served: Served) -> None:
    s = served
    make_file(s.local / "t.bin", 1000)
    os.utime(s.local / "t.bin", (1_000_000_000, 1_234_567_890))
    done = await sftp(
        s.port, "acme", [f"put -p -f {s.local}/t.bin /inbox/t.bin", "df -h /inbox"], key=s.key
    )
    assert "Size" in done.ok().output
    assert (s.inbox / "t.bin").stat().st_mtime == 1_234_567_890
    # A path setstat after the upload (rclone sets times this way) is kept too.
    (await sftp(s.port, "acme", ["chmod 600 /inbox/t.bin"], key=s.key)).ok()
    row = (await s.transfers())[0]
    assert row.status == Status.DONE


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
async def test_rclone_upload_with_checksum(served: Served) -> None:
    s = served
    data = make_file(s.local / "rc.bin", 1_500_000)
    env = {
        **os.environ,
        "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_GW_TYPE": "sftp",
        "RCLONE_CONFIG_GW_HOST": "127.0.0.1",
        "RCLONE_CONFIG_GW_PORT": str(s.port),
        "RCLONE_CONFIG_GW_USER": "acme",
        "RCLONE_CONFIG_GW_KEY_FILE": str(s.key),
    }
    proc = await asyncio.create_subprocess_exec(
        "rclone", "copyto", "-vv", "--retries", "1", f"{s.local}/rc.bin", "gw:inbox/rc.bin",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    output = out.decode(errors="replace")
    assert proc.returncode == 0, output
    assert "md5sum" in output or "sha1sum" in output, output
    assert (s.inbox / "rc.bin").read_bytes() == data
    found = await s.transfers()
    assert [(t.dest_filename, t.status) for t in found] == [("rc.bin", Status.DONE)]
    assert lines(s.env.out / "trace") == ["post rc.bin"]


def cipher(verbose_output: str) -> str:
    """The cipher `ssh -v` says it negotiated."""
    for line in verbose_output.splitlines():
        if "kex: server->client cipher:" in line:
            return line.split("cipher:")[1].split()[0]
    raise AssertionError(f"no cipher in: {verbose_output}")


async def test_chacha20_is_offered_only_when_set(tmp_path: Path) -> None:
    need("ssh")
    verbose = ("-o", "LogLevel=VERBOSE", "-v")
    off = await serve(tmp_path / "off")
    try:
        # OpenSSH clients list chacha20 first, then AES-CTR, then AES-GCM.
        default = await ssh(off.port, "acme", "md5sum", key=off.key, options=verbose)
        assert cipher(default.ok().output) == "aes128-ctr"
        gcm = ("-c", "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com", *verbose)
        chosen = await ssh(off.port, "acme", "md5sum", key=off.key, options=gcm)
        assert cipher(chosen.ok().output) == "aes128-gcm@openssh.com"
        only = ("-c", "chacha20-poly1305@openssh.com")
        refused = await ssh(off.port, "acme", "md5sum", key=off.key, options=only)
        assert refused.returncode == 255
    finally:
        await off.env.stop()
    on = await serve(tmp_path / "on", offer_chacha20=True)
    try:
        default = await ssh(on.port, "acme", "md5sum", key=on.key, options=verbose)
        assert cipher(default.ok().output) == "chacha20-poly1305@openssh.com"
    finally:
        await on.env.stop()


async def test_our_shutdown_interrupts_a_running_upload(tmp_path: Path) -> None:
    s = await serve(tmp_path)
    make_file(s.local / "big.bin", 3_000_000)
    session = await SftpSession.start(
        s.port, "acme", s.key, [f"put {s.local}/big.bin /inbox/big.bin"], options=("-l", "4000")
    )
    try:
        await first_transfer(s, lambda t: t.progress > 0, "made progress")
        store = s.env.gw.store
        await s.env.gw.stop(5)
        row = await store.get_transfer(1)
        await store.close()
        s.env.gateway = None
    finally:
        session.kill()
        await session.finish()
    assert row is not None
    assert (row.status, row.error_code) == (Status.INTERRUPTED, ErrorCode.TeShuttingDown)
    assert 0 < row.progress < 3_000_000
