"""An FTP connection (control or data), plain or TLS, over a `protocols.ftp.stream`
connection (incoming bytes handed over in the buffers the kernel filled).

TLS runs through `ssl.MemoryBIO` rather than the event loop's TLS transport, because
FTPS needs what the transports do not give, on the standard loop and uvloop alike:
whether the peer ended with a TLS `close_notify` (the only end-of-file mark an FTPS
upload has) or the connection just dropped; whether the handshake resumed the control
connection's session; and a switch to TLS (`AUTH TLS`, implicit FTPS) that loses no
byte the client sent early (its ClientHello may already sit in a read buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import cast

from protocols.ftp.stream import Stream

_TLS_RECORD = 16 * 1024  # the most plaintext one TLS record holds


class ChannelClosed(Exception):
    """The connection broke (reset, TLS error, end without close_notify)."""


class LineTooLong(ChannelClosed):
    """A control line longer than the limit."""


class DataChannel:
    """One connection. `read()` returns b"" at a clean end (a plain end of stream, or
    TLS close_notify); a broken end raises ChannelClosed. `readline()` for control
    connections."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ended = False  # read() saw the end of the data
        self._lines = bytearray()  # read, not yet taken by readline()
        peer = stream.get_extra_info("peername")
        self.peer_address = str(peer[0]) if peer else ""
        sock = stream.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    @property
    def is_tls(self) -> bool:
        return self._tls is not None

    @property
    def session_reused(self) -> bool:
        return self._tls is not None and self._tls.session_reused

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._tls

    async def start_tls(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        timeout: float = 30.0,
    ) -> None:
        """The TLS handshake; raises ChannelClosed when it fails."""
        if self._lines:  # bytes sent right behind AUTH TLS: the start of the handshake
            self._incoming.write(bytes(self._lines))
            self._lines.clear()
        self._tls = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        self._tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        if not await self._fill():
                            raise ChannelClosed(
                                "the data connection closed during the TLS handshake"
                            ) from None
            await self._flush()
        except ssl.SSLError as exc:
            with contextlib.suppress(Exception):
                await self._flush()
            raise ChannelClosed(f"TLS handshake failed: {exc.reason or exc}") from None
        except TimeoutError:
            raise ChannelClosed(f"no TLS handshake within {timeout:g} s") from None
        except OSError as exc:
            raise ChannelClosed(f"data connection lost: {exc.strerror or exc}") from None

    async def _fill(self) -> bool:
        """More bytes from the socket into the TLS layer; False at the end of stream."""
        data = await self.stream.read()
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self.stream.write(pending)
            await self.stream.drain()

    async def readline(self, limit: int) -> bytes:
        """The next line (with its LF); what is left at the end; b"" at the end."""
        while True:
            at = self._lines.find(b"\n")
            if at >= 0:
                line = bytes(self._lines[: at + 1])
                del self._lines[: at + 1]
                return line
            if len(self._lines) > limit:
                raise LineTooLong(f"a line longer than {limit} bytes")
            data = await self._read()
            if not data:
                line = bytes(self._lines)
                self._lines.clear()
                return line
            self._lines += data

    async def read(self) -> bytes | memoryview:
        """The next bytes; b"" at a clean end; ChannelClosed when it broke. A view
        (plain connections) is of bytes that never change: it may be kept."""
        if self._lines:
            data = bytes(self._lines)
            self._lines.clear()
            return data
        return await self._read()

    async def _read(self) -> bytes | memoryview:
        if self.ended:
            return b""
        try:
            if self._tls is None:
                data = await self.stream.read()
                if not data:
                    self.ended = True
                return data
            return await self._read_tls(self._tls)
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"data connection lost: {exc.strerror or exc}") from None

    async def _read_tls(self, tls: ssl.SSLObject) -> bytes | memoryview:
        # Decrypted straight into a buffer of this read's own, handed over whole, sized
        # to what arrived (a small file's read does not zero a megabyte).
        view: memoryview | None = None
        size = 0
        while True:
            if view is None:
                arrived = self._incoming.pending + tls.pending()
                view = memoryview(bytearray(min(self.stream.chunk_size, max(_TLS_RECORD, arrived))))
            try:
                got = _read_into(tls, view[size:])
            except ssl.SSLWantReadError:
                if size:
                    return view[:size].toreadonly()
                await self._flush()  # e.g. a TLS 1.3 key update answer
                await self._fill()
                view = None  # empty: sized again to what came
                continue
            except ssl.SSLZeroReturnError:  # close_notify: the peer's clean end
                self.ended = True
                return view[:size].toreadonly() if size else b""
            except ssl.SSLEOFError:
                raise ChannelClosed("the data connection ended without TLS close_notify") from None
            except ssl.SSLError as exc:
                raise ChannelClosed(
                    f"TLS error on the data connection: {exc.reason or exc}"
                ) from None
            if not got:  # what SSLObject.read gives for the peer's close_notify
                self.ended = True
                return view[:size].toreadonly() if size else b""
            size += got
            if len(view) - size < _TLS_RECORD:  # no room for one more record
                return view[:size].toreadonly()

    async def write(self, data: bytes) -> None:
        try:
            if self._tls is None:
                self.stream.write(data)
            else:
                self._tls.write(data)
                self.stream.write(self._outgoing.read())
            await self.stream.drain()
        except ssl.SSLError as exc:
            raise ChannelClosed(f"TLS error on the data connection: {exc.reason or exc}") from None
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"data connection lost: {exc.strerror or exc}") from None

    async def finish(self, timeout: float = 10.0) -> None:
        """The clean end of what we send: TLS close_notify, then the end of stream;
        returns once the peer's kernel took it all. Raises ChannelClosed."""
        try:
            async with asyncio.timeout(timeout):
                if self._tls is not None:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        self._tls.unwrap()  # sends our close_notify; theirs may follow
                    await self._flush()
                if self.stream.can_write_eof():
                    self.stream.write_eof()
                await self.stream.drain()
        except TimeoutError:
            raise ChannelClosed(f"the peer took no data for {timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ChannelClosed(f"TLS error on the data connection: {exc.reason or exc}") from None
        except (ConnectionError, OSError) as exc:
            raise ChannelClosed(f"data connection lost: {exc.strerror or exc}") from None

    async def answer_close(self) -> None:
        """After the peer's close_notify: ours, so that its TLS layer ends cleanly."""
        if self._tls is None:
            return
        with contextlib.suppress(ssl.SSLError, OSError, ConnectionError):
            self._tls.unwrap()
        with contextlib.suppress(Exception):
            await self._flush()

    async def wait_peer_end(self, timeout: float) -> None:
        """Wait (bounded) for the peer to close its side, reading what remains."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                while await self.stream.read():
                    pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()

    def reset(self) -> None:
        """Drop the connection at once (ABOR, a refused connection)."""
        with contextlib.suppress(Exception):
            self.stream.abort()

    async def closed(self) -> None:
        self.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.stream.wait_closed(), 5)


def _read_into(tls: ssl.SSLObject, view: memoryview) -> int:
    """Decrypt into `view`; the count of bytes (typeshed says bytes: the copying form's)."""
    return cast(int, tls.read(len(view), view))
