"""An ICAP client (RFC 3507) that asks a scanner about one file.

The file goes in an encapsulated HTTP message (RESPMOD: the response to a `GET` of its
name; REQMOD: a `PUT` of it), in chunks with the chunked encoding, announcing
`Allow: 204`. With a preview, the first bytes go first and the rest only after the
server's `100 Continue`; a file that fits in the preview ends it with `ieof`. The
verdicts:

- `204 No Content`: the server would not change the file: clean.
- `200 OK`: the server sends back another message (a block page, a changed body): the
  file is refused, with the server's reason (`X-Infection-Found`, `X-Violations-Found`,
  `X-Virus-ID`, else the encapsulated HTTP status line).
- anything else, a connection refused or cut, a malformed answer, a timeout: `IcapError`.
  A scan that cannot be made never lets a file through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = ["IcapError", "IcapVerdict", "scan"]

_CHUNK = 64 * 1024
_MAX_HEAD = 64 * 1024
_REASON_HEADERS = ("x-infection-found", "x-violations-found", "x-virus-id", "x-blocked")


class IcapError(Exception):
    """The scan could not be made (the message says why)."""


@dataclass(frozen=True)
class IcapVerdict:
    """What the server said about the file."""

    clean: bool
    status: int
    # Why the file is refused (empty when clean).
    reason: str = ""


@dataclass(frozen=True)
class _Head:
    status: int
    text: str
    headers: dict[str, str]


async def scan(
    url: str,
    chunks: AsyncIterator[bytes],
    *,
    name: str,
    size: int,
    method: str = "RESPMOD",
    preview: int | None = 4096,
    timeout: float = 60.0,
    ssl_context: ssl.SSLContext | None = None,
) -> IcapVerdict:
    """Scan the bytes `chunks` gives (`size` of them, the file `name`) with the ICAP
    service at `url` (icap:// or icaps://). Raises IcapError."""
    parts = urlsplit(url)
    secure = parts.scheme == "icaps"
    host = parts.hostname or ""
    port = parts.port or (11344 if secure else 1344)
    if secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context if secure else None
            )
    except TimeoutError:
        raise IcapError(f"no connection to {host}:{port} within {timeout:g} s") from None
    except (OSError, ssl.SSLError) as error:
        raise IcapError(f"cannot connect to {host}:{port}: {error.strerror or error}") from None
    try:
        return await _exchange(
            reader, writer, url, chunks, name, size, method, preview, timeout, host
        )
    except TimeoutError:
        raise IcapError(f"{host}:{port} did not answer within {timeout:g} s") from None
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as error:
        raise IcapError(f"connection to {host}:{port} failed: {error}") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    url: str,
    chunks: AsyncIterator[bytes],
    name: str,
    size: int,
    method: str,
    preview: int | None,
    timeout: float,
    host: str,
) -> IcapVerdict:
    resource = "/" + quote(name)
    if method == "REQMOD":
        http = (
            f"PUT {resource} HTTP/1.1\r\nHost: gatewayd\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        encapsulated = f"req-hdr=0, req-body={len(http)}"
    else:
        request = f"GET {resource} HTTP/1.1\r\nHost: gatewayd\r\n\r\n".encode()
        response = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n\r\n"
        ).encode()
        http = request + response
        encapsulated = f"req-hdr=0, res-hdr={len(request)}, res-body={len(http)}"
    head = f"{method} {url} ICAP/1.0\r\nHost: {host}\r\nAllow: 204\r\n"
    if preview is not None:
        head += f"Preview: {preview}\r\n"
    head += f"Encapsulated: {encapsulated}\r\n\r\n"

    async def send(data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(timeout):
            await writer.drain()

    await send(head.encode() + http)
    source = _Rechunk(chunks)
    if preview is not None:
        first = await source.take(preview)
        rest = await source.peek()
        await send(_chunk(first) + (b"0; ieof\r\n\r\n" if not rest else b"0\r\n\r\n"))
        answer = await _read_head(reader, timeout)
        if answer.status != 100:
            return await _verdict(reader, answer, timeout, source, method)
        if not rest:
            raise IcapError("the server asked for more after the end of the file")
    while data := await source.take(_CHUNK):
        await send(_chunk(data))
    await send(b"0\r\n\r\n")
    answer = await _read_head(reader, timeout)
    while answer.status == 100:  # a stray Continue (no preview was announced)
        answer = await _read_head(reader, timeout)
    return await _verdict(reader, answer, timeout, source, method)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


class _Rechunk:
    """Takes exact amounts from an iterator of blocks of any size."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""
        self.ended = False
        # Of the bytes taken (sent): to tell a message sent back unchanged.
        self.digest = hashlib.sha256()
        self.size = 0

    async def _fill(self, wanted: int) -> None:
        while len(self.buffer) < wanted and not self.ended:
            try:
                self.buffer += await anext(self.chunks)
            except StopAsyncIteration:
                self.ended = True

    async def take(self, amount: int) -> bytes:
        await self._fill(amount)
        data, self.buffer = self.buffer[:amount], self.buffer[amount:]
        self.digest.update(data)
        self.size += len(data)
        return data

    async def peek(self) -> bool:
        """Whether more bytes remain."""
        await self._fill(1)
        return bool(self.buffer)


async def _read_head(reader: asyncio.StreamReader, timeout: float) -> _Head:
    async with asyncio.timeout(timeout):
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise IcapError("the server's answer has too long a header") from None
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise IcapError("the server closed the connection without answering") from None
            raise
    if len(raw) > _MAX_HEAD:
        raise IcapError("the server's answer has too long a header")
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0]
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("ICAP/") or not fields[1].isdigit():
        raise IcapError(f"not an ICAP answer: {status_line[:200]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return _Head(int(fields[1]), status_line, headers)


async def _verdict(
    reader: asyncio.StreamReader, answer: _Head, timeout: float, sent: _Rechunk, method: str
) -> IcapVerdict:
    if answer.status == 204:
        return IcapVerdict(clean=True, status=204)
    if answer.status != 200:
        raise IcapError(f"the server answered {answer.text[:200]!r}")
    for header in _REASON_HEADERS:
        if value := answer.headers.get(header):
            return IcapVerdict(clean=False, status=200, reason=f"{header}: {value[:500]}")
    async with asyncio.timeout(timeout):
        first_line, body = await _read_encapsulated(reader, answer, sent.size)
    # A server may send the message back unchanged although it was told `Allow: 204`
    # (c-icap does, after a whole-body scan): the same status and the same bytes are clean.
    wanted = "PUT " if method == "REQMOD" else "HTTP/"
    unchanged = first_line.startswith(wanted) and (method == "REQMOD" or " 200 " in first_line)
    whole = sent.ended and not sent.buffer  # an early answer judged a part only
    if unchanged and whole and body is not None and body == sent.digest.digest():
        return IcapVerdict(clean=True, status=200)
    what = f" ({first_line[:200]})" if first_line else ""
    return IcapVerdict(clean=False, status=200, reason=f"the server changed the file{what}")


async def _read_encapsulated(
    reader: asyncio.StreamReader, answer: _Head, limit: int
) -> tuple[str, bytes | None]:
    """The first line of the HTTP message the server sent back, and the SHA-256 of its
    body (None: no body, or one longer than `limit`, which cannot be the file)."""
    offsets: dict[str, int] = {}
    for part in answer.headers.get("encapsulated", "").split(","):
        key, _, value = part.strip().partition("=")
        if value.strip().isdigit():
            offsets[key.strip()] = int(value)
    body_at = next((v for k, v in offsets.items() if k.endswith("-body")), None)
    if body_at is None or body_at > _MAX_HEAD:
        return "", None
    heads = await reader.readexactly(body_at) if body_at else b""
    first_line = heads.split(b"\r\n", 1)[0].decode("latin-1").strip()
    if "null-body" in offsets:
        return first_line, hashlib.sha256(b"").digest() if limit == 0 else None
    digest = hashlib.sha256()
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size_text = size_line.split(b";", 1)[0].strip()
        try:
            length = int(size_text, 16)
        except ValueError:
            raise IcapError(f"bad chunk size in the server's answer: {size_text[:20]!r}") from None
        if length == 0:
            await reader.readuntil(b"\r\n")
            break
        total += length
        if total > limit:
            return first_line, None
        digest.update(await reader.readexactly(length))
        await reader.readexactly(2)
    return first_line, digest.digest()
