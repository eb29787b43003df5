"""Logins that must cost the same whether the account exists or not, transfers per
account counted across servers, and the HTTP server's header-read timeout.

A real gateway in this event loop, with an SFTP and an HTTP server; the partners are
OpenSSH's `sftp` (through sshpass), curl, asyncssh's SFTP client (to hold several files
open at once in one session) and raw sockets (for a slow request head)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from gatewayd import passwords
from gatewayd.pipeline.auth_throttle import ThrottlePolicy
from tests.api_support import password_hash as cheap_hash
from tests.gateway_env import GatewayEnv, make_file
from tests.http_support import run_curl
from tests.sftp_peers import keygen, need, sftp

PASSWORD = "s3cret-for-tests"  # the password of tests.api_support.password_hash()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GatewayEnv]:
    need("sftp", "sshpass", "curl")
    environment = GatewayEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    environment.accounts["acme"] = {"password": cheap_hash(), "public_keys": [keygen(key)]}
    environment.accounts["off"] = {"password": cheap_hash(), "enabled": False}
    environment.accounts["keys"] = {"public_keys": [keygen(tmp_path / "keys" / "other")]}
    environment.accounts["solo"] = {"password": cheap_hash(), "max_uploads": 1}
    limits = {"max_uploads_per_account": 2, "max_downloads_per_account": 1}
    environment.extra["servers"] = {
        "sftp": {"protocol": "sftp", "port": 0, **limits},
        "web": {"protocol": "http", "port": 0, "header_timeout": 0.5, **limits},
    }
    environment.rule("inbox", "receive")
    environment.rule("outbox", "send", shared_folder=True)
    await environment.start()
    # Many failures from 127.0.0.1 in a row: no slow-down here (its own tests cover it).
    environment.gw.auth_throttle.policy = ThrottlePolicy(free_failures=1000)
    yield environment
    await environment.stop()


def ports(env: GatewayEnv) -> tuple[int, int]:
    return env.gw.servers["sftp"].bound_port, env.gw.servers["web"].bound_port


# ------------------------------------------------------------------ timing


async def test_every_password_login_costs_one_verification(env: GatewayEnv) -> None:
    sftp_port, web_port = ports(env)
    url = f"http://127.0.0.1:{web_port}/inbox/"
    for login in ("acme", "nobody", "off", "keys"):  # wrong password, unknown, disabled, none
        before = passwords.verification_count()
        answer = await run_curl("-u", f"{login}:wrong-password", url)
        assert answer.status == 401, (login, answer)
        assert passwords.verification_count() == before + 1, f"{login}: one hash, as for any"

        before = passwords.verification_count()
        result = await sftp(sftp_port, login, ["ls"], password="wrong-password")
        assert result.returncode != 0, result.output
        assert passwords.verification_count() == before + 1, f"{login} over SFTP"


# ------------------------------------------------------------------ limits


async def test_uploads_per_account_are_counted_across_servers(
    env: GatewayEnv, tmp_path: Path
) -> None:
    sftp_port, web_port = ports(env)
    source = tmp_path / "s.bin"
    make_file(source, 1000)
    url = f"http://127.0.0.1:{web_port}/inbox/web.bin"
    async with asyncssh.connect(
        "127.0.0.1", sftp_port, username="acme", client_keys=[str(tmp_path / "keys" / "acme")],
        known_hosts=None,
    ) as conn, conn.start_sftp_client() as client:  # fmt: skip
        held = [await client.open(f"inbox/{n}.bin", "wb") for n in ("one", "two")]
        for f in held:
            await f.write(b"x" * 100)
        with pytest.raises(asyncssh.SFTPFailure, match="already runs 2 uploads"):
            await client.open("inbox/three.bin", "wb")
        refused = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(source), url)
        assert refused.status == 429 and refused.headers["retry-after"] == "5", refused
        await held[0].close()  # a clean close completes it and frees a place
        accepted = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(source), url)
        assert accepted.status == 201, accepted
        await held[1].close()
    assert sorted(p.name for p in (env.folder("inbox") / "acme").iterdir()) == [
        "one.bin", "two.bin", "web.bin",
    ]  # fmt: skip

    # An account's own limit overrides the servers'.
    async with asyncssh.connect(
        "127.0.0.1", sftp_port, username="solo", password=PASSWORD, known_hosts=None,
        preferred_auth="password",
    ) as conn, conn.start_sftp_client() as client:  # fmt: skip
        first = await client.open("inbox/a.bin", "wb")
        with pytest.raises(asyncssh.SFTPFailure, match="already runs 1 uploads"):
            await client.open("inbox/b.bin", "wb")
        await first.close()


async def test_downloads_per_account_have_their_own_limit(env: GatewayEnv, tmp_path: Path) -> None:
    sftp_port, web_port = ports(env)
    make_file(env.folder("outbox") / "big.bin", 4 << 20)
    async with asyncssh.connect(
        "127.0.0.1", sftp_port, username="acme", client_keys=[str(tmp_path / "keys" / "acme")],
        known_hosts=None,
    ) as conn, conn.start_sftp_client() as client:  # fmt: skip
        reading = await client.open("outbox/big.bin", "rb")
        assert len(await reading.read(1000)) == 1000  # the download is open and counted
        got = await run_curl(
            "-u", f"acme:{PASSWORD}", f"http://127.0.0.1:{web_port}/outbox/big.bin"
        )
        assert got.status == 429, got
        # Uploads are counted apart.
        source = tmp_path / "s.bin"
        make_file(source, 10)
        up = await run_curl(
            "-u", f"acme:{PASSWORD}", "-T", str(source), f"http://127.0.0.1:{web_port}/inbox/s"
        )
        assert up.status == 201, up
        await reading.close()


# ------------------------------------------------------------------ slow request heads


async def test_a_slow_request_head_is_cut_off(env: GatewayEnv) -> None:
    _, web_port = ports(env)
    reader, writer = await asyncio.open_connection("127.0.0.1", web_port)
    writer.write(b"PUT /inbox/x HTTP/1.1\r\nHost: a\r\n")  # and never the end of the head
    await writer.drain()
    async with asyncio.timeout(10):
        rest = await reader.read()
    assert rest == b"", "closed without an answer"
    writer.close()
