"""The FTP server role against real clients: curl, lftp and Python's ftplib, over plain
FTP, explicit FTPS (AUTH TLS) and implicit FTPS."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import shutil
import ssl
from pathlib import Path

import pytest

from gatewayd.model import Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.ftp_support import (
    PASSWORD,
    curl,
    ftp_gateway,
    ftp_port,
    ftplib_client,
    lftp,
    make_cert,
)
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task

pytestmark = pytest.mark.timeout(120)


def _need(*commands: str) -> None:
    for command in commands:
        if shutil.which(command) is None:
            pytest.skip(f"{command} is not installed (scripts/test installs it)")


async def _rows(env: GatewayEnv) -> list[Transfer]:
    rows, _ = await env.gw.store.list_transfers(TransferFilter(limit=100))
    return rows


async def _only_row(env: GatewayEnv) -> int:
    rows = await _rows(env)
    assert len(rows) == 1, [(r.id, r.status, r.dest_filename) for r in rows]
    return rows[0].id or 0


async def test_plain_ftp_upload_download_and_listing_with_curl(tmp_path: Path) -> None:
    _need("curl")
    env = ftp_gateway(tmp_path / "gw")
    env.rules["inbox"]["post"] = [trace_task(env.out, "post")]
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "up.bin", 3_000_000)
        up = await curl("-u", f"alice:{PASSWORD}", "-T", str(tmp_path / "up.bin"),
                        f"ftp://127.0.0.1:{port}/inbox/up.bin")  # fmt: skip
        assert up.returncode == 0, up.stderr
        row = await env.wait_end(await _only_row(env))
        assert row.status == Status.DONE, row.error_msg
        assert (inbox / "up.bin").read_bytes() == data
        assert lines(env.out / "trace") == ["post up.bin"], "post tasks run exactly once"
        assert "226 transfer complete" in up.stderr and row.sha256 in up.stderr

        out = make_file(env.folder("outbox") / "report.csv", 70_000, seed=2)
        down = await curl("-u", f"alice:{PASSWORD}", "-o", str(tmp_path / "got.csv"),
                          f"ftp://127.0.0.1:{port}/outbox/report.csv")  # fmt: skip
        assert down.returncode == 0, down.stderr
        assert (tmp_path / "got.csv").read_bytes() == out
        listed = await curl("-u", f"alice:{PASSWORD}", f"ftp://127.0.0.1:{port}/")
        assert listed.stdout.split()[-1] == "outbox" and "inbox" in listed.stdout
        names = await curl("-u", f"alice:{PASSWORD}", "-l", f"ftp://127.0.0.1:{port}/outbox/")
        assert names.stdout.split() == ["report.csv"]
    finally:
        await env.stop()


async def test_ftplib_commands_and_refusals(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    await env.start()
    try:
        port = ftp_port(env)
        content = make_file(env.folder("outbox") / "a.txt", 1234)

        def session() -> dict[str, object]:
            found: dict[str, object] = {}
            ftp = ftplib_client(port)
            try:
                found["feat"] = ftp.sendcmd("FEAT")
                found["pwd"] = ftp.pwd()
                found["root"] = sorted(n for n, f in ftp.mlsd("/") if f["type"] != "cdir")
                ftp.cwd("/outbox")
                found["mlsd"] = {n: f for n, f in ftp.mlsd() if f["type"] == "file"}
                found["size"] = ftp.size("a.txt")
                found["mdtm"] = ftp.sendcmd("MDTM a.txt")
                found["hash"] = ftp.sendcmd("HASH a.txt")
                found["xsha"] = ftp.sendcmd("XSHA256 a.txt")
                found["type_a"] = ftp.sendcmd("TYPE A")
                for command in ("MODE S", "STRU F", "OPTS UTF8 ON", "SYST", "NOOP", "STAT"):
                    found[command] = ftp.sendcmd(command)
                ftp.cwd("..")
                ftp.cwd("../../..")  # clamped at the root
                found["pwd_root"] = ftp.pwd()
                refusals: dict[str, str] = {}
                nothing = io.BytesIO(b"x")
                for label, call in {
                    "traversal": lambda: ftp.retrbinary("RETR ../../etc/passwd", lambda b: None),
                    "etc": lambda: ftp.cwd("/etc"),
                    "stor_up": lambda: ftp.storbinary("STOR /inbox/../../escape.bin", nothing),
                    "stor_dotdot": lambda: ftp.storbinary("STOR ../../../escape.bin", nothing),
                    "stor_abs": lambda: ftp.storbinary(f"STOR {tmp_path}/escape.bin", nothing),
                    "wrong_direction_up": lambda: ftp.storbinary("STOR /outbox/x", nothing),
                    "wrong_direction_down": lambda: ftp.retrbinary("RETR /inbox/x", lambda b: None),
                    "mkd": lambda: ftp.mkd("/new"),
                    "dele": lambda: ftp.delete("/outbox/a.txt"),
                    "rest_beyond": lambda: ftp.retrbinary("RETR /outbox/a.txt", print, rest=99999),
                }.items():  # fmt: skip
                    try:
                        call()
                        refusals[label] = "accepted"
                    except ftplib.error_perm as exc:
                        refusals[label] = str(exc)
                found["refusals"] = refusals
                got = bytearray()
                ftp.retrbinary("RETR /outbox/a.txt", got.extend, rest=1000)
                found["rest_1000"] = bytes(got)
            finally:
                ftp.quit()
            anon = ftplib.FTP(timeout=10)
            anon.connect("127.0.0.1", port)
            try:
                anon.login()  # anonymous
                found["anonymous"] = "accepted"
            except ftplib.error_perm as exc:
                found["anonymous"] = str(exc)
            finally:
                anon.close()
            bob = ftplib_client(port, login="bob")
            try:
                found["bob_root"] = [n for n, f in bob.mlsd("/") if f["type"] != "cdir"]
            finally:
                bob.quit()
            return found

        found = await asyncio.to_thread(session)
    finally:
        await env.stop()
    sha = hashlib.sha256(content).hexdigest()
    assert "SIZE" in str(found["feat"]) and "HASH SHA-256" in str(found["feat"])
    assert found["pwd"] == "/" and found["root"] == ["inbox", "outbox"]
    assert found["mlsd"]["a.txt"]["size"] == "1234"  # type: ignore[index]
    assert found["size"] == 1234 and str(found["mdtm"]).startswith("213 20")
    assert found["hash"] == f"213 SHA-256 0-1233 {sha} /outbox/a.txt"
    assert found["xsha"] == f"250 {sha}"
    assert str(found["type_a"]).startswith("200") and found["pwd_root"] == "/"
    refusals = found["refusals"]
    assert isinstance(refusals, dict)
    assert not list(tmp_path.rglob("escape.bin*")), "a traversal wrote outside the rules"
    for label in (
        "traversal",
        "etc",
        "stor_up",
        "stor_dotdot",
        "stor_abs",
        "wrong_direction_up",
        "wrong_direction_down",
        "mkd",
        "dele",
    ):
        assert refusals[label].startswith("550"), (label, refusals[label])
    assert refusals["rest_beyond"].startswith("554")
    assert found["rest_1000"] == content[1000:]
    assert str(found["anonymous"]).startswith("530")
    assert found["bob_root"] == [], "bob may use no rule: he sees nothing"


async def test_temp_name_completes_on_rename_and_post_tasks_run_once(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    env.rules["inbox"]["post"] = [trace_task(env.out, "post")]
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "f.bin", 500_000)

        def upload() -> tuple[str, str, str]:
            ftp = ftplib_client(port)
            try:
                stored = ftp.storbinary("STOR /inbox/f.bin.part", io.BytesIO(data))
                ftp.sendcmd("RNFR /inbox/f.bin.part")
                renamed = ftp.sendcmd("RNTO /inbox/f.bin")
                return stored, renamed, ftp.sendcmd("HASH /inbox/f.bin")
            finally:
                ftp.quit()

        stored, renamed, hashed = await asyncio.to_thread(upload)
        row = await env.wait_end(await _only_row(env))
    finally:
        await env.stop()
    assert "complete once renamed" in stored
    assert renamed.startswith("250")
    assert row.status == Status.DONE and row.dest_filename == "f.bin", row.error_msg
    assert (inbox / "f.bin").read_bytes() == data
    assert not (inbox / "f.bin.part").exists()
    assert lines(env.out / "trace") == ["post f.bin"]
    assert hashlib.sha256(data).hexdigest() in hashed


async def test_abor_keeps_the_bytes_and_rest_resumes_the_same_transfer(tmp_path: Path) -> None:
    env = ftp_gateway(tmp_path / "gw")
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "big.bin", 4_000_000)

        def aborted_upload() -> str:
            ftp = ftplib_client(port)
            try:
                conn = ftp.transfercmd("STOR /inbox/big.bin")
                conn.sendall(data[:1_500_000])
                try:
                    reply = ftp.abort()  # ABOR with Telnet IP/DM as urgent data
                except ftplib.Error as exc:
                    reply = str(exc)
                conn.close()
                return reply
            finally:
                ftp.close()

        reply = await asyncio.to_thread(aborted_upload)
        transfer_id = await _only_row(env)
        row = await env.wait_end(transfer_id)
        assert row.status == Status.ERROR, "ABOR never completes a file"
        assert "ABOR" in row.error_msg
        assert not (inbox / "big.bin").exists()

        def resume() -> tuple[int, str, str]:
            ftp = ftplib_client(port)
            try:
                held = ftp.size("/inbox/big.bin") or 0
                try:
                    ftp.storbinary("STOR /inbox/big.bin", io.BytesIO(b"x"), rest=held + 10)
                    beyond = "accepted"
                except ftplib.error_perm as exc:
                    beyond = str(exc)
                done = ftp.storbinary("STOR /inbox/big.bin", io.BytesIO(data[held:]), rest=held)
                return held, beyond, done
            finally:
                ftp.quit()

        held, beyond, done = await asyncio.to_thread(resume)
        row = await env.wait_end(transfer_id)
    finally:
        await env.stop()
    assert reply.startswith(("225", "226", "426"))
    assert 0 < held <= 1_500_000, "SIZE reports the durable progress of the unfinished upload"
    assert beyond.startswith("554") and f"byte {held}" in beyond
    assert done.startswith("226")
    assert row.status == Status.DONE and row.id == transfer_id, row.error_msg
    assert (inbox / "big.bin").read_bytes() == data


async def test_killed_client_never_completes_and_curl_resumes_with_appe(tmp_path: Path) -> None:
    _need("curl")
    env = ftp_gateway(tmp_path / "gw")
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "k.bin", 2_000_000)
        proc = await asyncio.create_subprocess_exec(
            "curl", "-q", "-sS", "--noproxy", "*", "--limit-rate", "400k",
            "-u", f"alice:{PASSWORD}", "-T", str(tmp_path / "k.bin"),
            f"ftp://127.0.0.1:{port}/inbox/k.bin",
        )  # fmt: skip
        rows = []
        async with asyncio.timeout(20):
            while not rows or rows[0].progress < 300_000:
                await asyncio.sleep(0.05)
                rows = await _rows(env)
        proc.kill()  # kill -9: both connections drop at once
        await proc.wait()
        row = await env.wait_end(rows[0].id or 0)
        assert row.status == Status.ERROR, "a killed client's upload is not complete"
        assert not (inbox / "k.bin").exists()
        resumed = await curl("-u", f"alice:{PASSWORD}", "-C", "-", "-T", str(tmp_path / "k.bin"),
                             f"ftp://127.0.0.1:{port}/inbox/k.bin")  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        assert "APPE k.bin" in resumed.stderr
        row = await env.wait_end(row.id or 0)
    finally:
        await env.stop()
    assert row.status == Status.DONE, row.error_msg
    assert (inbox / "k.bin").read_bytes() == data


# ------------------------------------------------------------------ FTPS


async def test_explicit_ftps_required_with_curl_and_lftp(tmp_path: Path) -> None:
    _need("curl", "lftp")
    certs = make_cert(tmp_path / "certs", "server")
    env = ftp_gateway(tmp_path / "gw", tls="required", certs=certs)
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "up.bin", 2_500_000)
        up = await curl("--ssl-reqd", "--cacert", str(certs.cert), "-u", f"alice:{PASSWORD}",
                        "-T", str(tmp_path / "up.bin"),
                        f"ftp://127.0.0.1:{port}/inbox/up.bin")  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert "SSL re-using session" in up.stderr  # the data connection resumed it
        plain = await curl("-u", f"alice:{PASSWORD}", f"ftp://127.0.0.1:{port}/")
        assert plain.returncode != 0 and "530" in plain.stderr, "USER before AUTH TLS is refused"

        out = make_file(env.folder("outbox") / "o.bin", 800_000, seed=3)
        script = (
            f"put {tmp_path / 'up.bin'} -o /inbox/lftp.bin; "
            f"get /outbox/o.bin -o {tmp_path / 'o.bin'}; cls -l /outbox"
        )
        result = await lftp(port, script, tls=True, ca=certs.cert)
        assert result.returncode == 0, result.stderr
        assert "o.bin" in result.stdout

        def prot_c() -> str:
            ftp = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=str(certs.cert)))
            ftp.connect("127.0.0.1", port)
            ftp.login("alice", PASSWORD)
            try:
                return ftp.prot_c()
            except ftplib.error_perm as exc:
                return str(exc)
            finally:
                ftp.close()

        refused = await asyncio.to_thread(prot_c)
        rows = await _rows(env)
    finally:
        await env.stop()
    assert refused.startswith("534")
    assert (inbox / "up.bin").read_bytes() == data
    assert (inbox / "lftp.bin").read_bytes() == data
    assert (tmp_path / "o.bin").read_bytes() == out
    assert sorted(r.status for r in rows) == [Status.DONE] * 3


async def test_implicit_ftps_with_curl(tmp_path: Path) -> None:
    _need("curl")
    certs = make_cert(tmp_path / "certs", "server")
    env = ftp_gateway(tmp_path / "gw", tls="implicit", certs=certs)
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)
        data = make_file(tmp_path / "i.bin", 1_000_000)
        url = f"ftps://127.0.0.1:{port}"
        up = await curl("--cacert", str(certs.cert), "-u", f"alice:{PASSWORD}",
                        "-T", str(tmp_path / "i.bin"), f"{url}/inbox/i.bin")  # fmt: skip
        assert up.returncode == 0, up.stderr
        make_file(env.folder("outbox") / "d.bin", 300_000, seed=4)
        down = await curl("--cacert", str(certs.cert), "-u", f"alice:{PASSWORD}",
                          "-o", str(tmp_path / "d.bin"), f"{url}/outbox/d.bin")  # fmt: skip
        assert down.returncode == 0, down.stderr
        row_ids = [r.id for r in await _rows(env)]
        ends = [await env.wait_end(i or 0) for i in row_ids]
    finally:
        await env.stop()
    assert (inbox / "i.bin").read_bytes() == data
    assert (tmp_path / "d.bin").read_bytes() == (
        inbox.parent.parent / "outbox" / "d.bin"
    ).read_bytes()
    assert [e.status for e in ends] == [Status.DONE, Status.DONE]


async def test_session_reuse_is_required_unless_turned_off(tmp_path: Path) -> None:
    certs = make_cert(tmp_path / "certs", "server")
    results = {}
    for reuse in (True, False):
        env = ftp_gateway(tmp_path / f"gw{reuse}", tls="explicit", certs=certs,
                          require_session_reuse=reuse)  # fmt: skip
        await env.start()
        try:
            port = ftp_port(env)

            def upload(port: int = port) -> str:
                # Python's ftplib does not resume the TLS session on data connections.
                ftp = ftplib_client(port, tls=True, ca=certs.cert)
                try:
                    return ftp.storbinary("STOR /inbox/r.bin", io.BytesIO(b"r" * 10_000))
                except ftplib.Error as exc:
                    return str(exc)
                except (ssl.SSLError, OSError):  # the data connection was dropped
                    try:
                        return ftp.getresp()
                    except ftplib.Error as exc:
                        return str(exc)
                finally:
                    ftp.close()

            results[reuse] = await asyncio.to_thread(upload)
            rows = await _rows(env)
        finally:
            await env.stop()
        results[f"{reuse}-rows"] = [(r.status, r.error_code) for r in rows]
    assert results[True].startswith("522"), results[True]
    assert results[False].startswith("226"), results[False]
    assert results["False-rows"] == [(Status.DONE, results["False-rows"][0][1])]


async def test_ftps_data_connection_dropped_without_close_notify(tmp_path: Path) -> None:
    """A TLS data connection that ends without close_notify (the control connection
    alive) is a drop: 426, ERROR, bytes kept."""
    certs = make_cert(tmp_path / "certs", "server")
    env = ftp_gateway(tmp_path / "gw", tls="required", certs=certs, require_session_reuse=False)
    await env.start()
    inbox = env.folder("inbox") / "alice"
    try:
        port = ftp_port(env)

        def dropped() -> str:
            ftp = ftplib_client(port, tls=True, ca=certs.cert)
            try:
                conn = ftp.transfercmd("STOR /inbox/drop.bin")
                conn.sendall(b"d" * 200_000)
                raw = conn.detach() if hasattr(conn, "detach") else None  # no close_notify
                import socket as _socket

                if raw is not None:
                    _socket.socket(fileno=raw).close()
                return ftp.voidresp()
            except ftplib.Error as exc:
                return str(exc)
            finally:
                ftp.close()

        reply = await asyncio.to_thread(dropped)
        row = await env.wait_end(await _only_row(env))
    finally:
        await env.stop()
    assert reply.startswith("426"), reply
    assert row.status == Status.ERROR and "close_notify" in row.error_msg
    assert not (inbox / "drop.bin").exists()
