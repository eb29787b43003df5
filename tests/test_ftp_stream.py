"""The FTP connections' stream (protocols.ftp.stream) over real loopback sockets, on
the standard event loop and uvloop: the views it hands over are kept by the temp
file's write-behind without a copy, so they must never change afterwards, and it must
stop reading at its limit like asyncio's StreamReader does."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from protocols.ftp import stream

RUNNERS: dict[str, Callable[[Coroutine[Any, Any, None]], None]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


async def _pair(**kwargs: Any) -> tuple[stream.Stream, asyncio.StreamWriter, asyncio.Server]:
    """A Stream server's side of a connection, and the client's writer."""
    accepted: asyncio.Future[stream.Stream] = asyncio.get_running_loop().create_future()

    async def connected(conn: stream.Stream) -> None:
        accepted.set_result(conn)

    server = await stream.serve(connected, "127.0.0.1", 0, **kwargs)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = await asyncio.wait_for(accepted, 10)
    return conn, writer, server


async def _kept_views() -> None:
    conn, writer, server = await _pair(chunk=256 * 1024, limit=512 * 1024)
    sent = hashlib.sha256()
    size = 0
    for piece in range(200):  # uneven pieces: chunk ends fall mid-piece
        data = os.urandom(1000 + piece * 97)
        sent.update(data)
        size += len(data)
        writer.write(data)
    writer.write_eof()
    kept: list[bytes | memoryview] = []
    async with asyncio.timeout(20):
        while data := await conn.read():
            assert isinstance(data, memoryview) and data.readonly
            kept.append(data)
        assert await conn.read() == b"", "the end stays the end"
    got = hashlib.sha256()
    for view in kept:  # hashed only now: every later arrival had its chance to overwrite
        got.update(view)
    assert sum(len(v) for v in kept) == size
    assert got.hexdigest() == sent.hexdigest()
    assert len(kept) > 1
    writer.close()
    conn.close()
    await conn.wait_closed()
    server.close()


async def _stops_at_limit() -> None:
    limit = 1024 * 1024
    conn, writer, server = await _pair(chunk=256 * 1024, limit=limit)
    payload = os.urandom(64 * 1024 * 1024)
    writer.write(payload)  # more than the kernel's buffers on both ends can hold
    transport = conn.transport
    assert transport is not None
    async with asyncio.timeout(20):
        while transport.is_reading():
            await asyncio.sleep(0.001)
    # Paused while the client still had most of it unsent: the stream held it back.
    assert writer.transport.get_write_buffer_size() > len(payload) // 2
    got = hashlib.sha256()
    size = 0
    async with asyncio.timeout(30):
        while size < len(payload):
            data = await conn.read()
            assert data, "no end before the whole payload"
            got.update(data)
            size += len(data)
    assert transport.is_reading(), "reading resumed once the reader caught up"
    assert got.digest() == hashlib.sha256(payload).digest()
    writer.close()
    async with asyncio.timeout(10):
        assert await conn.read() == b""
    conn.close()
    server.close()


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_views_handed_over_never_change(loop: str) -> None:
    RUNNERS[loop](_kept_views())


@pytest.mark.parametrize("loop", sorted(RUNNERS))
def test_reading_stops_at_the_limit_and_resumes(loop: str) -> None:
    RUNNERS[loop](_stops_at_limit())
