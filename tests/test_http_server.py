"""The HTTP server role with curl as the partner: uploads, resumes, downloads, refusals.

A real gateway runs in the test's event loop with an `http` server on an ephemeral
port of 127.0.0.1; curl is the real client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, environ_without_proxy, make_file
from tests.http_support import PASSWORD, http_gateway, run_curl

MiB = 1 << 20
ALICE = f"alice:{PASSWORD}"


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[tuple[GatewayEnv, str]]:
    env = http_gateway(tmp_path, max_body_size=64 * MiB, max_uploads_per_account=2)
    await env.start()
    try:
        yield env, f"http://127.0.0.1:{env.gw.servers['web'].bound_port}"
    finally:
        await env.stop()


async def rows(env: GatewayEnv) -> list[Transfer]:
    found, _ = await env.gw.store.list_transfers(TransferFilter(limit=1000))
    return found


def files_under(folder: Path) -> list[str]:
    """Every file below `folder` (temp files included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


async def wait_row(
    env: GatewayEnv, check: Callable[[Transfer], bool], what: str, timeout: float = 20
) -> Transfer:
    """The first transfer row for which `check(row)` holds (bounded wait)."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                for row in await rows(env):
                    if check(row):
                        return row
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"no transfer {what} within {timeout}s: {await rows(env)}") from None


# ------------------------------------------------------------------ upload and download


async def test_curl_upload_then_download_whole_ranged_and_resumed(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    data = make_file(tmp_path / "report.bin", 3 * MiB + 17)
    up = await run_curl("-u", ALICE, "-T", str(tmp_path / "report.bin"), f"{base}/inbox/")
    assert up.status == 201, up
    landed = env.folder("inbox") / "alice" / "report.bin"
    assert landed.read_bytes() == data
    answer = up.json()
    row = await env.row(answer["transferId"])
    assert row.status == Status.DONE and not row.is_send and row.account == "alice"
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.transfer_info["remoteAddress"] == "127.0.0.1"

    shared = env.folder("outbox") / "data.bin"
    sent = make_file(shared, 2 * MiB + 5, seed=7)
    whole = await run_curl("-u", ALICE, f"{base}/outbox/data.bin", output=tmp_path / "whole")
    assert whole.status == 200 and (tmp_path / "whole").read_bytes() == sent
    assert whole.headers["accept-ranges"] == "bytes"
    # The partner has every byte before the transfer records its end: wait for it.
    done = await env.wait_end(int(whole.headers["waarp-transfer-id"]))
    assert done.status == Status.DONE and done.is_send
    assert done.sha256 == hashlib.sha256(sent).hexdigest()

    part = await run_curl("-u", ALICE, "-r", "1000-1999", f"{base}/outbox/data.bin")
    assert part.status == 206 and part.body == sent[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(sent)}"
    tail = await run_curl("-u", ALICE, "-r", "-10", f"{base}/outbox/data.bin")
    assert tail.status == 206 and tail.body == sent[-10:]

    # `curl -C -` continues a partial download from its size, asking with Range.
    partial = tmp_path / "resumed"
    partial.write_bytes(sent[: MiB + 3])
    resumed = await run_curl("-u", ALICE, "-C", "-", f"{base}/outbox/data.bin", output=partial)
    assert resumed.status == 206, resumed
    assert resumed.headers["content-range"] == f"bytes {MiB + 3}-{len(sent) - 1}/{len(sent)}"
    assert partial.read_bytes() == sent
    row = await env.wait_end(int(resumed.headers["waarp-transfer-id"]))
    assert row.status == Status.DONE and row.progress == len(sent)

    head = await run_curl("-I", "-u", ALICE, f"{base}/outbox/data.bin")
    assert head.status == 200 and head.headers["content-length"] == str(len(sent))
    assert "upload-offset" not in head.headers
    beyond = await run_curl("-u", ALICE, "-r", f"{len(sent)}-", f"{base}/outbox/data.bin")
    assert beyond.status == 416 and beyond.headers["content-range"] == f"bytes */{len(sent)}"

    listing = await run_curl("-u", ALICE, f"{base}/inbox/")
    assert listing.status == 200
    assert [e["name"] for e in listing.json()["entries"]] == ["report.bin"]


async def test_interrupted_upload_resumes_from_head_offset_with_content_range(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "big.bin"
    data = make_file(source, 6 * MiB + 123)
    url = f"{base}/inbox/big.bin"
    curl = await asyncio.create_subprocess_exec(
        "curl", "-q", "-sS", "--noproxy", "*", "--limit-rate", "2M", "-u", ALICE,
        "-T", str(source), "-o", "/dev/null", url,
        env=environ_without_proxy(), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    row = await wait_row(env, lambda t: t.progress >= MiB, "with durable progress")
    curl.send_signal(signal.SIGKILL)
    await curl.wait()
    row = await env.wait_for(row.id or 0, lambda t: t.status == Status.ERROR, "aborted")
    assert row.error_code == ErrorCode.TeConnectionReset, row.error_msg
    held = row.progress
    assert MiB <= held < len(data)
    final = env.folder("inbox") / "alice" / "big.bin"
    assert not final.exists(), "an interrupted upload never lands under its final name"

    head = await run_curl("-I", "-u", ALICE, url)
    assert head.status == 200
    assert head.headers["upload-offset"] == str(held)
    assert head.headers["content-length"] == str(held)
    assert head.headers["upload-complete"] == "?0"

    wrong = await run_curl("-u", ALICE, "-C", str(held + 1), "-T", str(source), url)
    assert wrong.status == 409 and wrong.headers["upload-offset"] == str(held)
    again = await run_curl("-I", "-u", ALICE, url)
    assert again.headers["upload-offset"] == str(held), "a refused offset keeps the bytes held"
    # Below what is held is fine: the held bytes are cut there and the rest is sent.
    resumed = await run_curl("-u", ALICE, "-C", str(held - 4096), "-T", str(source), url)
    assert resumed.status == 201, resumed
    assert resumed.json()["transferId"] == row.id, "the same transfer continued"
    assert final.read_bytes() == data
    done = await env.row(row.id or 0)
    assert done.status == Status.DONE and done.sha256 == hashlib.sha256(data).hexdigest()
    assert len(await rows(env)) == 1


async def test_body_shorter_than_its_length_is_an_abort(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    port = int(base.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = base64.b64encode(ALICE.encode()).decode()
    writer.write(
        f"PUT /inbox/short.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Length: {2 * MiB}\r\n\r\n".encode()
        + b"x" * MiB
    )
    await writer.drain()
    # Durable progress grows as bytes are fsynced; the abort makes all of them durable.
    row = await wait_row(env, lambda t: t.progress > 0, "with durable bytes")
    writer.close()
    await writer.wait_closed()
    row = await env.wait_for(row.id or 0, lambda t: t.status == Status.ERROR, "aborted")
    assert row.error_code == ErrorCode.TeConnectionReset
    assert row.progress == MiB and row.filesize == 2 * MiB
    assert not (env.folder("inbox") / "alice" / "short.bin").exists()
    head = await run_curl("-I", "-u", ALICE, f"{base}/inbox/short.bin")
    assert head.headers["upload-offset"] == str(MiB)

    # A chunked body cut before its last chunk is an abort too.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"PUT /inbox/chunked.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + f"{MiB:x}\r\n".encode()
        + b"z" * MiB
        + b"\r\n"
    )
    await writer.drain()
    row = await wait_row(
        env, lambda t: t.dest_filename == "chunked.bin" and t.progress > 0, "with durable bytes"
    )
    writer.close()
    await writer.wait_closed()
    row = await env.wait_for(row.id or 0, lambda t: t.status == Status.ERROR, "aborted")
    assert row.error_code == ErrorCode.TeConnectionReset
    assert row.progress == MiB and row.filesize == -1
    assert not (env.folder("inbox") / "alice" / "chunked.bin").exists()


async def test_refused_requests_leave_nothing_behind(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "f.bin"
    make_file(source, 1000)
    env.folder("outbox").mkdir(parents=True, exist_ok=True)
    before = files_under(env.root / "var")
    cases = [
        (["-u", "alice:wrong", "-T", str(source), f"{base}/inbox/f.bin"], 401),
        (["-u", "nobody:x", "-T", str(source), f"{base}/inbox/f.bin"], 401),
        (["-T", str(source), f"{base}/inbox/f.bin"], 401),
        (["-u", f"bob:{PASSWORD}", "-T", str(source), f"{base}/inbox/f.bin"], 403),
        (["-u", ALICE, "-T", str(source), f"{base}/nowhere/f.bin"], 403),
        (["-u", ALICE, "-H", "Waarp-Rule-Name: nosuch", "-T", str(source), f"{base}/f.bin"], 404),
        (["-u", ALICE, "-T", str(source), f"{base}/outbox/f.bin"], 403),
        (["-u", ALICE, "--path-as-is", "-T", str(source), f"{base}/inbox/../f.bin"], 403),
        (["-u", ALICE, "-T", str(source), f"{base}/inbox/..%2Ff.bin"], 403),
        (["-u", ALICE, "-T", str(source), f"{base}/inbox/%2e%2e/outbox/f.bin"], 403),
        (["-u", ALICE, "-T", str(source), f"{base}/inbox/a%5Cb.bin"], 403),
        (["-u", ALICE, "-T", str(source), f"{base}/inbox/bad%01name"], 403),
        (["-u", ALICE, f"{base}/inbox/../../etc/passwd", "--path-as-is"], 403),
        (["-u", ALICE, f"{base}/outbox/missing.bin"], 404),
    ]
    for args, status in cases:
        answer = await run_curl(*args)
        assert answer.status == status, (args, answer)
        assert answer.json()["errors"][0]["errorCode"].startswith("Te"), answer.body
    wrong = await run_curl("-u", "alice:wrong", "-T", str(source), f"{base}/inbox/f.bin")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert await rows(env) == []
    assert files_under(env.root / "var") == before


async def test_chunked_upload_and_temporary_name_completed_by_move(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "c.bin"
    data = make_file(source, 2 * MiB + 1)
    chunked = await run_curl(
        "-u", ALICE, "-H", "Transfer-Encoding: chunked", "-T", str(source), f"{base}/inbox/c.bin"
    )
    assert chunked.status == 201, chunked
    assert (env.folder("inbox") / "alice" / "c.bin").read_bytes() == data

    part = await run_curl("-u", ALICE, "-T", str(source), f"{base}/inbox/t.bin.part")
    assert part.status == 202 and part.json()["awaitingRename"] is True
    row = await env.row(part.json()["transferId"])
    assert row.status == Status.RUNNING and row.progress == len(data)
    assert not (env.folder("inbox") / "alice" / "t.bin").exists()
    moved = await run_curl(
        "-u", ALICE, "-X", "MOVE", "-H", f"Destination: {base}/inbox/t.bin",
        f"{base}/inbox/t.bin.part",
    )  # fmt: skip
    assert moved.status == 201, moved
    assert (env.folder("inbox") / "alice" / "t.bin").read_bytes() == data
    done = await env.row(row.id or 0)
    assert done.status == Status.DONE and done.dest_filename == "t.bin"
    out = await run_curl(
        "-u", ALICE, "-X", "MOVE", "-H", f"Destination: {base}/outbox/t.bin", f"{base}/inbox/t.bin"
    )
    assert out.status == 403, "renames stay inside a rule folder"
    delete = await run_curl("-u", ALICE, "-X", "DELETE", f"{base}/inbox/t.bin")
    assert delete.status == 403 and "cannot be deleted" in delete.json()["errors"][0]["message"]
    assert (env.folder("inbox") / "alice" / "t.bin").read_bytes() == data
    patch = await run_curl("-u", ALICE, "-X", "PATCH", f"{base}/inbox/t.bin")
    assert patch.status == 405 and "PUT" in patch.headers["allow"]


# ------------------------------------------------------------------ headers


async def test_digest_is_checked_before_the_file_is_placed(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "d.bin"
    data = make_file(source, 300_000)
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    bad = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    url = f"{base}/inbox/d.bin"
    refused = await run_curl(
        "-u", ALICE, "-H", f"Repr-Digest: sha-256=:{bad}:", "-T", str(source), url
    )
    assert refused.status == 422 and refused.json()["errors"][0]["errorCode"] == "TeIntegrity"
    row = await env.row(int(refused.headers["waarp-transfer-id"]))
    assert row.status == Status.ERROR and row.error_code == ErrorCode.TeIntegrity
    assert not (env.folder("inbox") / "alice" / "d.bin").exists()

    accepted = await run_curl(
        "-u", ALICE, "-H", f"Repr-Digest: sha-512=:AAAA:, sha-256=:{good}:", "-T", str(source), url
    )
    assert accepted.status == 201, accepted
    assert (env.folder("inbox") / "alice" / "d.bin").read_bytes() == data
    legacy = await run_curl("-u", ALICE, "-H", f"Digest: SHA-256={good}", "-T", str(source), url)
    assert legacy.status == 201
    malformed = await run_curl("-u", ALICE, "-H", "Digest: SHA-256=@@", "-T", str(source), url)
    assert malformed.status == 400


async def test_rule_by_header_and_transfer_info(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "x.csv"
    data = make_file(source, 5000)
    for header in ("Waarp-Rule-Name", "Waarp-Rule-String"):
        answer = await run_curl(
            "-u", ALICE, "-H", f"{header}: inbox",
            "-H", 'Waarp-Transfer-Info: code=42, label="a, b"', "-H", "Waarp-Transfer-Info: x=y",
            "-T", str(source), f"{base}/{header}.csv",
        )  # fmt: skip
        assert answer.status == 201, answer
        row = await env.row(answer.json()["transferId"])
        assert row.rule == "inbox" and row.dest_filename == f"{header}.csv"
        assert row.transfer_info["code"] == 42
        assert row.transfer_info["label"] == "a, b" and row.transfer_info["x"] == "y"
        assert (env.folder("inbox") / "alice" / f"{header}.csv").read_bytes() == data
    query = await run_curl("-u", ALICE, "-T", str(source), f"{base}/q.csv?rule=inbox")
    assert query.status == 201
    posted = await run_curl(
        "-u", ALICE, "-H", "Waarp-Rule-Name: inbox", "--data-binary", f"@{source}",
        f"{base}/posted.csv",
    )  # fmt: skip
    assert posted.status == 201, "POST uploads as Waarp Gateway's HTTP client does"
    assert (env.folder("inbox") / "alice" / "posted.csv").read_bytes() == data
    nested = await run_curl(
        "-u", ALICE, "-H", "Waarp-Rule-Name: inbox", "-T", str(source), f"{base}/a/b.csv"
    )
    assert nested.status == 400


async def test_limits_of_the_server(web: tuple[GatewayEnv, str], tmp_path: Path) -> None:
    env, base = web
    big = tmp_path / "big.bin"
    make_file(big, 64 * MiB + 1)
    too_big = await run_curl("-u", ALICE, "-T", str(big), f"{base}/inbox/big.bin")
    assert too_big.status == 413
    chunked = await run_curl(
        "-u", ALICE, "-H", "Transfer-Encoding: chunked", "-T", str(big), f"{base}/inbox/big.bin"
    )
    assert chunked.status == 413
    assert not (env.folder("inbox") / "alice" / "big.bin").exists()

    # Two uploads held open (their bodies unfinished): a third is refused, and so is a
    # second upload of a name being uploaded.
    port = int(base.rsplit(":", 1)[1])
    auth = base64.b64encode(ALICE.encode()).decode()
    held = []
    for name in ("one.bin", "two.bin"):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"PUT /inbox/{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Length: 100\r\n\r\n".encode()
            + b"y" * 10
        )
        await writer.drain()
        held.append(writer)
    await wait_row(env, lambda t: t.dest_filename == "two.bin", "for two.bin")
    small = tmp_path / "small.bin"
    make_file(small, 10)
    same = await run_curl("-u", ALICE, "-T", str(small), f"{base}/inbox/one.bin")
    assert same.status == 409, same
    url3 = f"{base}/inbox/three.bin"
    third = await run_curl("-u", ALICE, "-T", str(small), url3)
    assert third.status == 429 and third.headers["retry-after"]
    for writer in held:
        writer.close()
    for name in ("one.bin", "two.bin"):
        await wait_row(
            env, lambda t, n=name: t.dest_filename == n and t.status == Status.ERROR, "aborted"
        )
    # The aborts are recorded a moment before the server counts the uploads as ended.
    async with asyncio.timeout(10):
        while (after := await run_curl("-u", ALICE, "-T", str(small), url3)).status == 429:
            await asyncio.sleep(0.01)
    assert after.status == 201, after


async def test_stop_during_upload_interrupts_the_transfer(
    web: tuple[GatewayEnv, str], tmp_path: Path
) -> None:
    env, base = web
    source = tmp_path / "s.bin"
    make_file(source, 4 * MiB)
    final = env.folder("inbox") / "alice" / "s.bin"
    curl = await asyncio.create_subprocess_exec(
        "curl", "-q", "-sS", "--noproxy", "*", "--limit-rate", "1M", "-u", ALICE,
        "-T", str(source), f"{base}/inbox/s.bin",
        env=environ_without_proxy(), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        row = await wait_row(env, lambda t: t.progress > 0, "with progress")
        store = env.gw.store
        await env.gw.stop(5)
        stopped = await store.get_transfer(row.id or 0)
        await store.close()
        env.gateway = None
    finally:
        if curl.returncode is None:
            os.kill(curl.pid, signal.SIGKILL)
        await curl.wait()
    assert stopped is not None and stopped.status == Status.INTERRUPTED, stopped
    assert stopped.progress > 0
    assert not final.exists()
