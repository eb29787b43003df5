"""The `http`/`https` client: sends by streaming PUT, receives by GET, resumes both.

A resumed send asks the partner how much of the unfinished upload it durably holds
(`HEAD` -> `Upload-Offset`, which gatewayd servers answer) and continues with
`Content-Range`; a partner that gives no `Upload-Offset` (a plain WebDAV server such as
nginx) gets the whole file again. A resumed receive asks for the rest with `Range`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import hdrs

from gatewayd.config.schema import PartnerConfig
from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.ports import DataSink, DataSource, Delivered, ProtocolClient, RemoteStat
from protocols.http import headers as h
from protocols.http import tls
from protocols.http.config import HttpPartnerConfig
from protocols.http.errors import code_for, peer_message
from protocols.http.listing import ListingError, parse_listing
from protocols.pacing import Pacer

CHUNK = 1 << 20
# A folder listing larger than this is refused (a partner's, read into memory).
MAX_LISTING = 16 << 20


class HttpClient(ProtocolClient):
    """One partner reached over http or https; its connections are kept alive and
    reused across transfers."""

    def __init__(self, name: str, config: PartnerConfig) -> None:
        assert isinstance(config, HttpPartnerConfig)
        self.name, self.config = name, config
        self.scheme = "https" if config.protocol == "https" else "http"
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ plumbing

    def url(self, remote_path: str) -> str:
        """The partner's URL for `remote_path` (relative to `base_path`)."""
        parts = [p for p in remote_path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise TransferError(ErrorCode.TeForbidden, f"{remote_path}: '..' is not allowed")
        host = self.config.address
        if not host:
            raise TransferError(ErrorCode.TeConnection, f"partner {self.name} has no address")
        if ":" in host:
            host = f"[{host}]"
        port = f":{self.config.port}" if self.config.port else ""
        base = self.config.base_path.rstrip("/")
        path = "/".join(quote(p, safe="") for p in parts)
        return f"{self.scheme}://{host}{port}{base}/{path}"

    async def connect(self) -> None:
        async with self._lock:
            if self._session is not None and not self._session.closed:
                return
            ssl: Any = True
            if self.scheme == "https":
                if self.config.cert_sha256 is not None:
                    ssl = aiohttp.Fingerprint(bytes.fromhex(self.config.cert_sha256))
                else:
                    try:
                        ssl = await asyncio.to_thread(tls.client_context, self.config)
                    except (OSError, ValueError) as exc:
                        raise TransferError(
                            ErrorCode.TeConnection, f"TLS settings of {self.name}: {exc}"
                        ) from exc
            headers = {}
            if self.config.login:
                try:
                    headers[hdrs.AUTHORIZATION] = h.basic_authorization(
                        self.config.login, self.config.password or ""
                    )
                except h.HeaderError as exc:
                    raise TransferError(ErrorCode.TeBadAuthentication, str(exc)) from None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    sock_connect=self.config.connect_timeout,
                    sock_read=self.config.read_timeout,
                ),
                headers=headers,
                auto_decompress=False,
                trust_env=False,
            )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise TransferError(ErrorCode.TeConnection, f"not connected to {self.name}")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Network failures as transfer errors that say what was being done."""
        try:
            yield
        except TransferError:
            raise
        except aiohttp.ServerFingerprintMismatch as exc:
            raise TransferError(
                ErrorCode.TeConnection,
                f"{what}: {self.name}'s certificate does not match cert_sha256",
            ) from exc
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise TransferError(
                ErrorCode.TeConnection, f"{what}: TLS verification of {self.name} failed: {exc}"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransferError(
                ErrorCode.TeConnection, f"{what}: cannot reach {self.name}: {exc.strerror or exc}"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransferError(
                ErrorCode.TeConnectionReset,
                f"{what}: connection to {self.name} lost: {str(exc) or type(exc).__name__}",
            ) from exc

    async def _failure(self, resp: aiohttp.ClientResponse, what: str) -> TransferError:
        body = b""
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            body = await resp.content.read(4096)
        message = resp.headers.get(h.ERROR_MESSAGE) or peer_message(body) or resp.reason or ""
        code = code_for(resp.status, resp.headers.get(h.ERROR_CODE))
        return TransferError(code, f"{what}: {self.name} answered {resp.status} {message}".strip())

    # ------------------------------------------------------------------ what the peer holds

    async def _head(self, remote_path: str) -> aiohttp.ClientResponse | None:
        url = self.url(remote_path)
        with self._errors(f"HEAD {remote_path}"):
            async with self.session.head(url, allow_redirects=False) as resp:
                if resp.status in (404, 410):
                    return None
                if resp.status >= 300:
                    raise await self._failure(resp, f"HEAD {remote_path}")
                return resp

    async def stat(self, remote_path: str) -> RemoteStat | None:
        resp = await self._head(remote_path)
        if resp is None:
            return None
        length = resp.headers.get(h.UPLOAD_OFFSET) or resp.headers.get(hdrs.CONTENT_LENGTH)
        size = int(length) if length and length.isdigit() else 0
        return RemoteStat(size=size, is_dir=resp.content_type == "application/json")

    async def sent_offset(self, remote_path: str, local_offset: int) -> int:
        """Where a resumed send continues: the partner's own count of the bytes it
        durably holds of the unfinished upload (`Upload-Offset`), the one offset it
        accepts. Our recorded progress counts bytes handed to the connection, saved now
        and then: it may be above or below that count, and only says that a resume is
        worth asking for. A partner that reports no unfinished upload (a plain WebDAV
        server such as nginx) gets the whole file again."""
        resp = await self._head(remote_path)
        if resp is None or resp.headers.get(h.UPLOAD_COMPLETE) == "?1":
            return 0
        held = resp.headers.get(h.UPLOAD_OFFSET, "")
        return int(held) if held.isdigit() else 0

    # ------------------------------------------------------------------ folders

    async def list(self, remote_dir: str) -> list[RemoteStat]:
        what = f"listing of {remote_dir or '/'}"
        url = self.url(remote_dir).rstrip("/") + "/"
        with self._errors(what):
            async with self.session.get(
                url, headers={hdrs.ACCEPT: "application/json"}, allow_redirects=False
            ) as resp:
                if resp.status >= 300:
                    raise await self._failure(resp, what)
                body = await resp.content.read(MAX_LISTING + 1)
        if len(body) > MAX_LISTING:
            raise TransferError(ErrorCode.TeDataTransfer, f"{what}: larger than {MAX_LISTING}")
        try:
            return parse_listing(body)
        except ListingError as exc:
            raise TransferError(ErrorCode.TeDataTransfer, f"{what} of {self.name}: {exc}") from None

    async def delete(self, remote_path: str) -> None:
        what = f"DELETE {remote_path}"
        with self._errors(what):
            async with self.session.delete(self.url(remote_path), allow_redirects=False) as resp:
                if resp.status >= 300:
                    raise await self._failure(resp, what)

    async def rename(self, remote_path: str, new_path: str) -> None:
        """WebDAV MOVE (nginx's dav_methods, a gatewayd server), never over a file."""
        what = f"MOVE {remote_path}"
        headers = {"Destination": self.url(new_path), "Overwrite": "F"}
        with self._errors(what):
            async with self.session.request(
                "MOVE", self.url(remote_path), headers=headers, allow_redirects=False
            ) as resp:
                if resp.status >= 300:
                    raise await self._failure(resp, what)

    # ------------------------------------------------------------------ data

    async def send(self, source: DataSource, remote_path: str, offset: int) -> Delivered:
        total = source.size
        if offset > total:
            offset = 0  # the partner holds more than our file has: not our upload
        headers = {
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_LENGTH: str(total - offset),
        }
        if offset > 0:
            headers[hdrs.CONTENT_RANGE] = (
                f"bytes {offset}-{total - 1}/{total}" if offset < total else f"bytes */{total}"
            )
        what = f"PUT {remote_path}"
        with self._errors(what):
            async with self.session.put(
                self.url(remote_path),
                data=self._body(source, offset),
                headers=headers,
                allow_redirects=False,
                expect100=True,
            ) as resp:
                if resp.status not in (200, 201, 204):
                    raise await self._failure(resp, what)
                held = _int_header(resp.headers.get(h.UPLOAD_OFFSET))
                sha256 = None
                if digest := resp.headers.get(h.REPR_DIGEST):
                    with contextlib.suppress(h.HeaderError):
                        sha256 = h.parse_sha256([(h.REPR_DIGEST, digest)], whole_body=True)
            if held is None:
                held = await self._held_size(remote_path, total)
        source.confirm(total)
        return Delivered(held, sha256)

    async def _held_size(self, remote_path: str, sent: int) -> int:
        """What the partner holds after a PUT, asked with HEAD; a partner that cannot
        answer HEAD acknowledged the whole body by answering the PUT with success."""
        async with self.session.head(self.url(remote_path), allow_redirects=False) as resp:
            if resp.status == 200 and resp.content_length is not None:
                return resp.content_length
            if resp.status in (405, 501):
                return sent
            raise await self._failure(resp, f"HEAD {remote_path}")

    async def _body(self, source: DataSource, offset: int) -> AsyncIterator[bytes]:
        """The file from `offset`, the next block read while the current one is sent.

        Progress counts the bytes handed to the connection: an upper bound of what the
        partner holds, which `sent_offset` lowers to the partner's answer on a resume.
        """
        pacer = Pacer(self.config.max_rate)
        position, total = offset, source.size
        pending: asyncio.Future[bytes] | None = None
        try:
            if position < total:
                pending = asyncio.ensure_future(source.read(position, min(CHUNK, total - position)))
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    raise TransferError(
                        ErrorCode.TeDataTransfer, f"local file shrank to {position} bytes"
                    )
                position += len(data)
                if position < total:
                    pending = asyncio.ensure_future(
                        source.read(position, min(CHUNK, total - position))
                    )
                yield data
                source.confirm(position)
                await pacer.pace(len(data))
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def receive(self, sink: DataSink, remote_path: str, offset: int) -> None:
        headers = {hdrs.ACCEPT_ENCODING: "identity"}
        if offset > 0:
            headers[hdrs.RANGE] = f"bytes={offset}-"
        what = f"GET {remote_path}"
        pacer = Pacer(self.config.max_rate)
        with self._errors(what):
            # No redirects: our credentials go to the partner's address and nowhere else.
            async with self.session.get(
                self.url(remote_path), headers=headers, allow_redirects=False
            ) as resp:
                start, total = await self._data_range(resp, offset, what)
                if total is not None:
                    sink.set_size(total)
                    if start >= total:
                        return
                position = start
                async for data in resp.content.iter_any():
                    await sink.write(position, data)
                    position += len(data)
                    await pacer.pace(len(data))
        if total is not None and position != total:
            raise TransferError(
                ErrorCode.TeDataTransfer, f"{what}: got {position} of {total} bytes"
            )

    async def _data_range(
        self, resp: aiohttp.ClientResponse, offset: int, what: str
    ) -> tuple[int, int | None]:
        """Where the response's body starts in the file, and the file's size if known."""
        if resp.status == 416 and offset > 0:
            held = resp.headers.get(hdrs.CONTENT_RANGE, "").rpartition("/")[2]
            if held.isdigit() and int(held) == offset:
                return offset, offset  # we already have every byte
        if resp.status == 206:
            try:
                part = h.parse_content_range(resp.headers.get(hdrs.CONTENT_RANGE, ""))
            except h.HeaderError as exc:
                raise TransferError(ErrorCode.TeDataTransfer, f"{what}: {exc}") from None
            if part.start != offset:
                raise TransferError(
                    ErrorCode.TeDataTransfer,
                    f"{what}: asked from byte {offset}, the partner sent from {part.start}",
                )
            return part.start, part.total
        if resp.status == 200:
            # The partner ignored the Range: take the whole file again, from byte 0.
            length = resp.content_length
            return 0, length
        raise await self._failure(resp, what)


def _int_header(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)
