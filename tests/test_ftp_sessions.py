"""FTP sessions at their edges: data connections (active mode, another address, the
passive range, NAT address), client certificates, the core's limits as replies, a
reset data connection, and our own shutdown in the middle of an upload."""

from __future__ import annotations

import asyncio
import ftplib
import io
import socket
import ssl
from pathlib import Path
from types import SimpleNamespace

import pytest

from gatewayd.model import Status
from gatewayd.store.base import TransferFilter
from protocols.ftp.server import FtpSession
from tests.ftp_support import ftp_gateway, ftp_port, ftplib_client, make_cert
from tests.gateway_env import GatewayEnv, exec_task

pytestmark = pytest.mark.timeout(120)


async def _rows(env: GatewayEnv) -> list:  # type: ignore[type-arg]
    rows, _ = await env.gw.store.list_transfers(TransferFilter(limit=100))
    return rows


async def test_active_mode_is_off_unless_set(tmp_path: Path) -> None:
    found: dict[str, str] = {}
    for active in (False, True):
        env = ftp_gateway(tmp_path / f"gw{active}", active_mode=active)
        await env.start()
        inbox = env.folder("inbox") / "alice"
        try:
            port = ftp_port(env)

            def upload(port: int = port) -> str:
                ftp = ftplib_client(port)
                ftp.set_pasv(False)  # PORT/EPRT: the server connects to us
                try:
                    return ftp.storbinary("STOR /inbox/a.bin", io.BytesIO(b"a" * 70_000))
                except ftplib.Error as exc:
                    return str(exc)
                finally:
                    ftp.close()

            found[str(active)] = await asyncio.to_thread(upload)
            if active:
                row = await env.wait_end((await _rows(env))[0].id or 0)
                assert row.status == Status.DONE, row.error_msg
                assert (inbox / "a.bin").read_bytes() == b"a" * 70_000
        finally:
            await env.stop()
    assert found["False"].startswith("502"), found
    assert found["True"].startswith("226"), found


async def test_data_connections_only_from_the_clients_address(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw", passive_ports=[47010, 47019], passive_address="127.0.0.1")
    await env.start()
    try:
        port = ftp_port(env)

        def session() -> tuple[str, bytes, str]:
            ftp = ftplib_client(port)
            try:
                pasv = ftp.sendcmd("PASV")
                numbers = pasv[pasv.index("(") + 1 : pasv.index(")")].split(",")
                data_port = int(numbers[4]) * 256 + int(numbers[5])
                # Another host (127.0.0.2 is another address on the loopback) first.
                thief = socket.create_connection(
                    ("127.0.0.1", data_port), source_address=("127.0.0.2", 0)
                )
                thief.settimeout(5)
                stolen = thief.recv(100)  # closed at once: b""
                thief.close()
                ftp.sendcmd("TYPE I")
                conn = socket.create_connection(("127.0.0.1", data_port))
                ftp.putcmd("LIST /")
                preliminary = ftp.getresp()
                listing = b""
                while chunk := conn.recv(1000):
                    listing += chunk
                conn.close()
                ftp.voidresp()
                return pasv, stolen, preliminary + listing.decode()
            finally:
                ftp.quit()

        pasv, stolen, listed = await asyncio.to_thread(session)
    finally:
        await env.stop()
    numbers = pasv[pasv.index("(") + 1 : pasv.index(")")].split(",")
    assert numbers[:4] == ["127", "0", "0", "1"]
    assert 47010 <= int(numbers[4]) * 256 + int(numbers[5]) <= 47019
    assert stolen == b"", "a data connection from another address is closed"
    assert "inbox" in listed and "outbox" in listed


async def test_client_certificate_stands_for_the_password(tmp_path: Path) -> None:
    ca = make_cert(tmp_path / "ca", "ca", common_name="Test CA", ca=True)
    server = make_cert(tmp_path / "certs", "server")
    alice = make_cert(tmp_path / "certs", "alice", common_name="alice", issuer=ca, client=True)
    env = ftp_gateway(tmp_path / "gw", tls="required", certs=server, client_certs="optional",
                      client_ca_file=str(ca.cert), require_session_reuse=False)  # fmt: skip
    await env.start()
    try:
        port = ftp_port(env)

        def login(cert: bool, user: str) -> str:
            context = ssl.create_default_context(cafile=str(server.cert))
            if cert:
                context.load_cert_chain(alice.cert, alice.key)
            ftp = ftplib.FTP_TLS(context=context, timeout=10)
            ftp.connect("127.0.0.1", port)
            ftp.auth()
            try:
                return ftp.sendcmd(f"USER {user}")
            except ftplib.Error as exc:
                return str(exc)
            finally:
                ftp.close()

        with_cert = await asyncio.to_thread(login, True, "alice")
        other_login = await asyncio.to_thread(login, True, "bob")
        without = await asyncio.to_thread(login, False, "alice")
    finally:
        await env.stop()
    assert with_cert.startswith("232"), with_cert
    assert other_login.startswith("331"), "another login needs its password"
    assert without.startswith("331")


async def test_limits_and_the_same_name_twice_answer_450(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    env.accounts["alice"]["max_uploads"] = 1
    await env.start()
    try:
        port = ftp_port(env)

        def session() -> tuple[str, str]:
            first = ftplib_client(port)
            second = ftplib_client(port)
            try:
                conn = first.transfercmd("STOR /inbox/one.bin")
                conn.sendall(b"1" * 1000)
                try:
                    second.storbinary("STOR /inbox/two.bin", io.BytesIO(b"2"))
                    limit = "accepted"
                except ftplib.Error as exc:
                    limit = str(exc)
                try:
                    second.storbinary("STOR /inbox/one.bin", io.BytesIO(b"2"))
                    same = "accepted"
                except ftplib.Error as exc:
                    same = str(exc)
                conn.close()
                first.voidresp()
                return limit, same
            finally:
                first.close()
                second.close()

        limit, same = await asyncio.to_thread(session)
    finally:
        await env.stop()
    assert limit.startswith("450") and "try again" in limit, limit
    assert same.startswith("450"), same


async def test_plain_data_connection_reset_never_completes(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)

        def reset() -> str:
            ftp = ftplib_client(port)
            try:
                conn = ftp.transfercmd("STOR /inbox/rst.bin")
                conn.sendall(b"r" * 300_000)
                # SO_LINGER 0: close sends a RST, the control connection stays.
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                conn.close()
                return ftp.voidresp()
            except ftplib.Error as exc:
                return str(exc)
            finally:
                ftp.close()

        reply = await asyncio.to_thread(reset)
        rows = await _rows(env)
        row = await env.wait_end(rows[0].id or 0)
    finally:
        await env.stop()
    assert reply.startswith("426"), reply
    assert row.status == Status.ERROR
    assert not (inbox / "rst.bin").exists()


async def test_shutdown_mid_upload_interrupts_it(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    await env.start()
    try:
        port = ftp_port(env)
        ftp = await asyncio.to_thread(ftplib_client, port)
        conn = await asyncio.to_thread(ftp.transfercmd, "STOR /inbox/s.bin")
        await asyncio.to_thread(conn.sendall, b"s" * 500_000)
        rows: list = []  # type: ignore[type-arg]
        async with asyncio.timeout(10):
            while not rows or rows[0].progress == 0:
                await asyncio.sleep(0.05)
                rows = await _rows(env)
    finally:
        await env.stop()
    conn.close()
    ftp.close()
    await env.start()
    try:
        row = await env.row(rows[0].id or 0)
        assert row.status == Status.INTERRUPTED, (row.status, row.error_msg)

        def size() -> int | None:
            again = ftplib_client(ftp_port(env))
            try:
                return again.size("/inbox/s.bin")
            finally:
                again.quit()

        held = await asyncio.to_thread(size)
    finally:
        await env.stop()
    assert held == row.progress > 0


async def test_a_stop_lets_a_completing_upload_answer_and_refuses_new_commands(
    tmp_path: Path,
) -> None:
    """SIGTERM's steps over FTP: an upload whose data had all arrived (its post task
    still running) finishes and gets its 226; another session's next command is 421."""
    env = ftp_gateway(tmp_path / "gw")
    started = tmp_path / "post-started"
    env.rules["inbox"]["post"] = [exec_task(f"touch {started}; sleep 1")]
    await env.start()
    try:
        port = ftp_port(env)
        uploader = await asyncio.to_thread(ftplib_client, port)
        idle = await asyncio.to_thread(ftplib_client, port)
        data = io.BytesIO(b"c" * 200_000)
        storing = asyncio.ensure_future(
            asyncio.to_thread(uploader.storbinary, "STOR /inbox/c.bin", data)
        )
        async with asyncio.timeout(20):
            while not started.exists():
                await asyncio.sleep(0.02)
        stopped = await env.gw.stop(10.0)
        reply = await storing
        with pytest.raises((ftplib.error_temp, EOFError, OSError)) as refused:
            await asyncio.to_thread(idle.pwd)
        rows = await _rows(env)
    finally:
        await env.stop()
    assert str(reply).startswith("226 transfer complete"), reply
    assert not isinstance(refused.value, ftplib.error_perm)
    assert stopped.clean, stopped
    assert [(r.status, r.progress) for r in rows] == [(Status.DONE, 200_000)]


async def test_plain_upload_grace_follows_the_control_connections_round_trip(
    tmp_path: Path,
) -> None:
    """Plain FTP's end-of-upload grace (see FtpSession._grace): on a loopback control
    connection, four of its shortest round trips are far under `eof_grace`, so the
    10 ms floor applies; with no kernel figure the whole `eof_grace` does."""
    env = ftp_gateway(tmp_path)
    await env.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ftp_port(env))
        await reader.readline()  # the greeting: a round trip measured
        config = SimpleNamespace(eof_grace=0.1, eof_grace_min=0.01)
        near = SimpleNamespace(config=config, control=SimpleNamespace(stream=writer))
        assert FtpSession._grace(near) == pytest.approx(0.01)  # type: ignore[arg-type]
        config.eof_grace = 0.005
        assert FtpSession._grace(near) == 0.005, "never more than eof_grace"  # type: ignore[arg-type]
        config.eof_grace, config.eof_grace_min = 0.1, 0.1
        assert FtpSession._grace(near) == 0.1, "the floor raised to the whole grace"  # type: ignore[arg-type]
        blind = SimpleNamespace(
            config=SimpleNamespace(eof_grace=0.1, eof_grace_min=0.01),
            control=SimpleNamespace(stream=SimpleNamespace(get_extra_info=lambda _: None)),
        )
        assert FtpSession._grace(blind) == 0.1  # type: ignore[arg-type]
        writer.close()
    finally:
        await env.stop()
