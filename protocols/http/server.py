"""The `http`/`https` server: partners upload with PUT (or POST) and download with GET.

Requests map onto the core's `ServerContext`: Basic credentials (or a verified client
certificate) authenticate an account; the URL path is a path of the account's virtual
tree (`/inbox/report.csv`), or, with a `Waarp-Rule-Name` header (or `?rule=`), the file
name within that rule's folder. Each upload or download is one server transfer.

Resume: `HEAD` on an unfinished upload answers its durable progress in `Upload-Offset`
(and `Content-Length`); a `PUT` with `Content-Range: bytes N-END/TOTAL` continues it
from N. A body that ends short of its length, or a dropped connection, aborts the
transfer with its durable bytes kept for that resume; never does it complete a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import ssl
from collections.abc import Awaitable, Callable
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from aiohttp import hdrs, web

from gatewayd.config.schema import ServerConfig
from gatewayd.errors import AlreadyRunning, LimitReached, ResumeRefused, TransferError
from gatewayd.model import Direction, ErrorCode
from gatewayd.ports import Entry, ProtocolServer, ServerContext, TransferHandle
from protocols.http import headers as h
from protocols.http import tls
from protocols.http.config import HttpServerConfig
from protocols.http.errors import error_body, status_for

log = structlog.get_logger("gatewayd.http")

CHUNK = 1 << 20  # bytes per read of a download
# Connections the kernel queues before they are accepted (aiohttp's default, 128, drops
# the SYNs of a rush of partners, which retry only seconds later).
LISTEN_BACKLOG = 1024
# Bytes of a request body buffered before the socket is read no more: up to twice this
# per uploading connection.
READ_BUFSIZE = 1 << 20


class Reply(Exception):
    """Ends a request with an error response (JSON body, Waarp error headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: ErrorCode | str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}

    @classmethod
    def of(cls, error: TransferError, headers: dict[str, str] | None = None) -> Reply:
        """The answer to a refusal of the core: its code says the status, and what
        the refusal carries says the rest (how much is held, when to come back)."""
        extra = dict(headers or {})
        status = status_for(error.code)
        if isinstance(error, ResumeRefused):
            status = 409
            extra[h.UPLOAD_OFFSET] = str(error.held)
        elif isinstance(error, AlreadyRunning):
            status = 409
        elif isinstance(error, LimitReached):
            extra[hdrs.RETRY_AFTER] = str(max(1, math.ceil(error.retry_after)))
        return cls(status, error.message, error.code, extra)

    def response(self) -> web.Response:
        headers = {
            h.ERROR_CODE: str(self.code),
            h.ERROR_MESSAGE: _header_text(self.message),
            **self.headers,
        }
        if self.status == 401:
            headers[hdrs.WWW_AUTHENTICATE] = 'Basic realm="gatewayd", charset="UTF-8"'
        resp = web.Response(
            status=self.status,
            body=error_body(self.message, self.code),
            content_type="application/json",
            headers=headers,
        )
        # The request body may be unread: do not let it be taken for the next request.
        resp.force_close()
        return resp


def _header_text(text: str, limit: int = 300) -> str:
    """`text` safe for a header value: one line of printable ASCII."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean[:limit]


async def _no_expect(request: web.Request) -> None:
    """`Expect: 100-continue` is answered by the handler, once the request is accepted,
    so that a refused upload is refused before its body is sent."""


class HttpServer(ProtocolServer):
    """One `http` or `https` listener."""

    def __init__(self, name: str, config: ServerConfig, ctx: ServerContext) -> None:
        assert isinstance(config, HttpServerConfig)
        self.name, self.config, self.ctx = name, config, ctx
        self.tls = config.protocol == "https"
        self._ssl_context: ssl.SSLContext | None = None  # loaded by prepare()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0
        # Requests in progress, until their answer is written (aiohttp runs each in a
        # task of its own, which writes the response after the handler returns).
        self._requests: set[asyncio.Task[Any]] = set()
        # Those whose answer ends a transfer (an upload's close, the rename of a
        # temporary name): a stop waits for them, and cuts the others.
        self._answering: set[asyncio.Task[Any]] = set()
        self.stopping = False
        self.log = log.bind(server=name)

    @property
    def bound_port(self) -> int:
        return self._port

    @property
    def session_count(self) -> int:
        return len(self._requests)  # HTTP has no sessions: requests in progress

    async def prepare(self) -> None:
        """https: load the certificate, its key and the client CA (a FileError names
        the file that cannot be used)."""
        if self.tls and self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(tls.server_context, self.config)

    async def start(self) -> None:
        await self.prepare()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._dispatch, expect_handler=_no_expect)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=1.0,
            # aiohttp closes a connection that has sent no complete request head
            # within its keep-alive timeout: that is the header-read timeout.
            keepalive_timeout=self.config.header_timeout,
            # An upload's body is read in pieces of what is buffered: with aiohttp's
            # 256 KiB a piece (and uvloop delivering 64 KiB at a time) the loop paid per
            # piece more than the worker thread paid to write it.
            read_bufsize=READ_BUFSIZE,
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.config.address,
            self.config.port,
            ssl_context=self._ssl_context,
            backlog=LISTEN_BACKLOG,
            reuse_port=self.config.reuse_port or None,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self._port = runner.addresses[0][1]

    async def stop_accepting(self) -> None:
        """Stop listening; a new request on an open connection is answered 503 (with
        `Connection: close`). Requests under way go on."""
        self.stopping = True
        if self._site is not None:
            site, self._site = self._site, None
            await site.stop()

    async def stop(self, grace: float = 0.0) -> None:
        """End the requests under way, then close every connection. Once the engine
        has stopped, only answers that end a transfer (an upload's close, a rename)
        are worth waiting for: those get up to `grace` seconds to be written; the
        others (a body still coming or a download still going for a transfer already
        INTERRUPTED, a login, a listing) are cut at once."""
        if self._runner is None:
            return
        await self.stop_accepting()
        runner, self._runner = self._runner, None
        for task in list(self._requests - self._answering):
            task.cancel()
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=grace)
        for task in list(self._requests):
            task.cancel()
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=1.0)
        await runner.cleanup()

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._requests.add(task)
            task.add_done_callback(self._request_over)
        try:
            if self.stopping:
                raise Reply(
                    503, "the server is stopping", ErrorCode.TeShuttingDown, {"Retry-After": "5"}
                )
            handler = self._handlers().get(request.method)
            if handler is None:
                allow = ", ".join(self._handlers())
                message = f"method {request.method} not allowed"
                raise Reply(405, message, "MethodNotAllowed", {"Allow": allow})
            return await handler(request)
        except Reply as reply:
            if reply.status >= 500 or reply.status == 401:
                self.log.info(
                    "request refused",
                    method=request.method,
                    remote=request.remote,
                    status=reply.status,
                    error=reply.message,
                )
            return reply.response()

    def _request_over(self, task: asyncio.Task[Any]) -> None:
        self._requests.discard(task)
        self._answering.discard(task)

    def _answers_a_completion(self) -> None:
        """The current request's answer ends a transfer: a stop lets it be written."""
        task = asyncio.current_task()
        if task is not None:
            self._answering.add(task)

    def _handlers(self) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        return {
            "GET": self._get,
            "HEAD": self._get,
            "PUT": self._put,
            "POST": self._put,
            "MOVE": self._move,
            "DELETE": self._delete,
        }

    # ------------------------------------------------------------------ who and what

    async def _account(self, request: web.Request) -> str:
        """The authenticated account, or Reply(401)."""
        login = password = None
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header:
            try:
                login, password = h.basic_credentials(header)
            except h.HeaderError as exc:
                raise Reply(401, str(exc), ErrorCode.TeBadAuthentication) from None
        certified = self._certificate_login(request)
        if certified is not None:
            if login not in (None, certified):
                raise Reply(
                    401,
                    "the login is not the one of the client certificate",
                    ErrorCode.TeBadAuthentication,
                )
            login = certified
            if not password:
                if self.ctx.has_account(login):
                    return login
                raise Reply(401, "unknown or disabled account", ErrorCode.TeBadAuthentication)
        elif self.config.client_certs == "required":
            raise Reply(401, "a client certificate is required", ErrorCode.TeBadAuthentication)
        if not login or password is None:
            raise Reply(401, "credentials required", ErrorCode.TeBadAuthentication)
        account = await self.ctx.authenticate(login, password=password, remote=request.remote or "")
        if account is None:
            raise Reply(401, "bad credentials", ErrorCode.TeBadAuthentication)
        return account

    def _certificate_login(self, request: web.Request) -> str | None:
        if not self.tls or self.config.client_certs == "none" or request.transport is None:
            return None
        # With CERT_OPTIONAL/REQUIRED, the TLS layer only hands out a verified certificate.
        return tls.peer_common_name(request.transport.get_extra_info("peercert"))

    def _path(self, request: web.Request, account: str) -> str:
        """The virtual path a request names (a trailing '/' kept for folders)."""
        raw = request.raw_path.split("?", 1)[0]
        try:
            parts = [unquote(p, errors="strict") for p in raw.split("/")[1:]]
        except UnicodeDecodeError:
            raise Reply(400, "the path is not valid UTF-8", ErrorCode.TeForbidden) from None
        folder = not parts or parts[-1] == ""
        for part in parts:
            if part in (".", "..") or any(c in part for c in "/\\\x00"):
                raise Reply(403, f"path segment {part!r} refused", ErrorCode.TeForbidden)
        parts = [p for p in parts if p]
        rule = (
            request.headers.get(h.RULE_NAME)
            or request.headers.get(h.RULE_STRING)
            or request.query.get("rule")
        )
        if rule:
            base = self.ctx.rule_path(account, rule)
            if base is None:
                raise Reply(404, f"no rule {rule!r} for this account", ErrorCode.TeForbidden)
            base_parts = [p for p in base.split("/") if p]
            if parts[: len(base_parts)] != base_parts:
                if len(parts) > 1:
                    raise Reply(
                        400,
                        "with a rule header, the path is the file name only",
                        ErrorCode.TeForbidden,
                    )
                parts = base_parts + parts
        path = "/" + "/".join(parts)
        return path + "/" if folder and parts else path

    # ------------------------------------------------------------------ GET and HEAD

    async def _get(self, request: web.Request) -> web.StreamResponse:
        account = await self._account(request)
        path = self._path(request, account)
        try:
            entry = await self.ctx.stat(account, path.rstrip("/") or "/")
        except TransferError as exc:
            raise Reply.of(exc) from None
        if entry is None:
            raise Reply(404, f"no such file or folder {path}", ErrorCode.TeFileNotFound)
        if entry.is_dir:
            return await self._listing(request, account, path)
        if path.endswith("/"):
            raise Reply(404, f"{path} is a file, not a folder", ErrorCode.TeFileNotFound)
        if request.method == "HEAD":
            return _head(entry)
        return await self._download(request, account, path, entry)

    async def _listing(self, request: web.Request, account: str, path: str) -> web.Response:
        try:
            entries = await self.ctx.list_dir(account, path.rstrip("/") or "/")
        except TransferError as exc:
            raise Reply.of(exc) from None
        body = json.dumps(
            {
                "path": path.rstrip("/") or "/",
                "entries": [
                    {
                        "name": e.name,
                        "isDir": e.is_dir,
                        "size": e.size,
                        "mtime": e.mtime.isoformat() if e.mtime else None,
                        "unfinished": e.unfinished,
                    }
                    for e in entries
                ],
            }
        )
        return web.Response(text=body, content_type="application/json")

    async def _download(
        self, request: web.Request, account: str, path: str, entry: Entry
    ) -> web.StreamResponse:
        try:
            wanted = h.parse_range(request.headers.get(hdrs.RANGE), entry.size)
        except h.RangeNotSatisfiable:
            raise Reply(
                416,
                f"the range is outside the file ({entry.size} bytes)",
                ErrorCode.TeDataTransfer,
                {hdrs.CONTENT_RANGE: f"bytes */{entry.size}"},
            ) from None
        info = _transfer_info(request)
        try:
            handle = await self.ctx.open_transfer(
                account,
                path,
                Direction.SEND,
                offset=wanted[0] if wanted else 0,
                remote=request.remote or "",
                transfer_info=info,
            )
        except TransferError as exc:
            raise Reply.of(exc) from None
        start, size = handle.offset, handle.size
        end = min(wanted[1], size - 1) if wanted else size - 1
        resp = web.StreamResponse(status=206 if wanted else 200)
        resp.content_type = "application/octet-stream"
        resp.content_length = max(0, end - start + 1)
        resp.headers[hdrs.ACCEPT_RANGES] = "bytes"
        resp.headers[h.TRANSFER_ID] = str(handle.transfer_id)
        if entry.mtime is not None:
            resp.headers[hdrs.LAST_MODIFIED] = format_datetime(entry.mtime, usegmt=True)
        if wanted:
            resp.headers[hdrs.CONTENT_RANGE] = h.format_content_range(start, end, size)
        try:
            await resp.prepare(request)
            await _send_range(resp, handle, start, end + 1, self.config.idle_timeout)
            await resp.write_eof()
        except asyncio.CancelledError:
            await _abort(handle, ErrorCode.TeShuttingDown, "the server is stopping")
            raise
        except TransferError as exc:
            await handle.abort(exc)
            resp.force_close()
            return resp
        except (OSError, RuntimeError) as exc:  # the client went away
            reason = str(exc) or "reset"
            await _abort(handle, ErrorCode.TeConnectionReset, f"download cut: {reason}")
            resp.force_close()
            return resp
        try:
            await handle.close()
        except TransferError as exc:
            self.log.warning("download ended in error after its data", path=path, error=exc.message)
        return resp

    # ------------------------------------------------------------------ PUT and POST

    async def _put(self, request: web.Request) -> web.StreamResponse:
        account = await self._account(request)
        path = self._path(request, account)
        if path.endswith("/"):
            raise Reply(405, "cannot upload to a folder", ErrorCode.TeForbidden)
        body_length = request.content_length
        offset, size = 0, body_length if body_length is not None else -1
        try:
            if hdrs.CONTENT_RANGE in request.headers:
                part = h.parse_content_range(request.headers[hdrs.CONTENT_RANGE])
                if body_length is not None and body_length != part.length:
                    raise h.HeaderError(
                        f"Content-Range covers {part.length} bytes, Content-Length says "
                        f"{body_length}"
                    )
                offset, size = part.start, part.total if part.total is not None else -1
            whole = offset == 0 and (size < 0 or body_length in (None, size))
            sha256 = h.parse_sha256(request.headers.items(), whole_body=whole)
            info = _transfer_info(request)
        except h.HeaderError as exc:
            raise Reply(400, str(exc), ErrorCode.TeDataTransfer) from None
        limit = self.config.max_body_size
        if limit and body_length is not None and body_length > limit:
            raise Reply(413, f"the body is larger than {limit} bytes", ErrorCode.TeExceededLimit)
        return await self._upload(request, account, path, offset, size, body_length, sha256, info)

    async def _upload(
        self,
        request: web.Request,
        account: str,
        path: str,
        offset: int,
        size: int,
        body_length: int | None,
        sha256: str | None,
        info: dict[str, object],
    ) -> web.StreamResponse:
        try:
            handle = await self.ctx.open_transfer(
                account,
                path,
                Direction.RECEIVE,
                offset=offset,
                truncate=offset == 0,
                remote=request.remote or "",
                size=size,
                transfer_info=info,
            )
        except TransferError as exc:
            raise Reply.of(exc) from None
        ids = {h.TRANSFER_ID: str(handle.transfer_id)}
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        try:
            end = await self._receive_body(request, handle, offset)
        except asyncio.CancelledError:
            await _abort(handle, ErrorCode.TeShuttingDown, "the server is stopping")
            raise
        except Reply as reply:
            await _abort(handle, ErrorCode.TeExceededLimit, reply.message)
            reply.headers.update(ids)
            raise
        except TransferError as exc:
            await handle.abort(exc)
            raise Reply.of(exc, ids) from None
        except Exception as exc:  # the body could not be read: the client went away
            message = f"upload cut: {str(exc) or type(exc).__name__}"
            await _abort(handle, ErrorCode.TeConnectionReset, message)
            raise Reply(400, message, ErrorCode.TeConnectionReset, ids) from None
        received = end - offset
        if body_length is not None and received != body_length:
            message = f"the body ended after {received} of {body_length} bytes"
            await _abort(handle, ErrorCode.TeDataTransfer, message)
            raise Reply(400, message, ErrorCode.TeDataTransfer, ids)
        if 0 <= end < size:
            # A complete body that stops before the file's end: one piece of an upload
            # sent in several. Its bytes are kept; the next piece resumes from `end`.
            message = f"upload holds {end} of {size} bytes: send the rest from byte {end}"
            await _abort(handle, ErrorCode.TeDataTransfer, message)
            return web.Response(
                status=202,
                body=json.dumps({"transferId": handle.transfer_id, "uploadOffset": end}),
                content_type="application/json",
                headers={**ids, h.UPLOAD_OFFSET: str(end), h.UPLOAD_COMPLETE: "?0"},
            )
        self._answers_a_completion()
        try:
            await handle.close(expected_sha256=sha256)
        except TransferError as exc:
            raise Reply.of(exc, {**ids, h.TRANSFER_STATUS: "ERROR"}) from None
        body: dict[str, object] = {"transferId": handle.transfer_id, "path": path, "size": end}
        if getattr(handle, "awaiting_rename", False):
            # A temporary name (`*.part`...): complete, durable, and placed once the
            # partner renames it (MOVE) to its final name.
            body["awaitingRename"] = True
            return web.json_response(body, status=202, headers=ids)
        done = {**ids, h.TRANSFER_STATUS: "DONE", h.UPLOAD_OFFSET: str(end)}
        if handle.sha256:
            done[h.REPR_DIGEST] = h.repr_digest(handle.sha256)
        return web.json_response(body, status=201, headers=done)

    async def _receive_body(self, request: web.Request, handle: TransferHandle, offset: int) -> int:
        """Stream the body into the transfer; returns the offset reached."""
        content = request.content
        limit = self.config.max_body_size
        timeout = self.config.idle_timeout
        position = offset
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await content.readany()
            except TimeoutError:
                raise TransferError(
                    ErrorCode.TeConnectionReset, f"no data from the client for {timeout:g} s"
                ) from None
            if not data:
                return position
            if limit and position + len(data) - offset > limit:
                raise Reply(
                    413, f"the body is larger than {limit} bytes", ErrorCode.TeExceededLimit
                )
            await handle.write(position, data)
            position += len(data)

    # ------------------------------------------------------------------ MOVE

    async def _move(self, request: web.Request) -> web.StreamResponse:
        """WebDAV MOVE within a rule folder: completes an upload made under a temporary
        name (`report.csv.part` -> `report.csv`)."""
        account = await self._account(request)
        path = self._path(request, account)
        destination = request.headers.get("Destination")
        if not destination:
            raise Reply(400, "MOVE needs a Destination header", ErrorCode.TeForbidden)
        split = urlsplit(destination)
        if split.netloc and split.netloc.lower() != request.host.lower():
            # RFC 4918 9.9.4: a MOVE to another server is not ours to do.
            raise Reply(
                502, f"the destination {split.netloc} is another server", ErrorCode.TeForbidden
            )
        target = unquote(split.path)
        self._answers_a_completion()
        try:
            await self.ctx.rename(account, path, target)
        except TransferError as exc:
            raise Reply.of(exc) from None
        return web.json_response({"path": target}, status=201)

    # ------------------------------------------------------------------ DELETE

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        """Delete a file the account may download, where its rule allows it."""
        account = await self._account(request)
        path = self._path(request, account)
        try:
            await self.ctx.delete(account, path)
        except TransferError as exc:
            raise Reply.of(exc) from None
        return web.Response(status=204)


def _head(entry: Entry) -> web.StreamResponse:
    """What HEAD tells about a file: its size, and for an unfinished upload the bytes
    the server durably holds, where a resumed PUT starts (`Upload-Offset`)."""
    resp = web.StreamResponse(status=200)
    resp.content_type = "application/octet-stream"
    resp.content_length = entry.size
    if entry.unfinished:
        resp.headers[h.UPLOAD_OFFSET] = str(entry.size)
        resp.headers[h.UPLOAD_COMPLETE] = "?0"
    else:
        resp.headers[hdrs.ACCEPT_RANGES] = "bytes"
        if entry.mtime is not None:
            resp.headers[hdrs.LAST_MODIFIED] = format_datetime(entry.mtime, usegmt=True)
    return resp


def _transfer_info(request: web.Request) -> dict[str, object]:
    try:
        return h.parse_transfer_info(request.headers.getall(h.TRANSFER_INFO, []))
    except h.HeaderError as exc:
        raise Reply(400, str(exc), ErrorCode.TeDataTransfer) from None


async def _abort(handle: TransferHandle, code: ErrorCode, message: str) -> None:
    """Abort, even from a cancelled request: the row must record how it ended."""
    with contextlib.suppress(Exception):
        await asyncio.shield(handle.abort(TransferError(code, message)))


async def _send_range(
    resp: web.StreamResponse, handle: TransferHandle, start: int, stop: int, idle: float
) -> None:
    """Write bytes [start, stop) of the transfer, reading the next block from disk while
    the current one goes to the socket; a client that takes nothing for `idle` seconds
    is dropped."""
    position = start
    pending: asyncio.Future[bytes] | None = None
    try:
        if position < stop:
            pending = asyncio.ensure_future(handle.read(position, min(CHUNK, stop - position)))
        while pending is not None:
            data = await pending
            pending = None
            if not data:
                raise TransferError(ErrorCode.TeDataTransfer, f"the file ended at byte {position}")
            position += len(data)
            if position < stop:
                pending = asyncio.ensure_future(handle.read(position, min(CHUNK, stop - position)))
            try:
                async with asyncio.timeout(idle):
                    await resp.write(data)
            except TimeoutError:
                raise TransferError(
                    ErrorCode.TeConnectionReset, f"the client took no data for {idle:g} s"
                ) from None
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
