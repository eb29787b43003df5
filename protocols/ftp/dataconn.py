"""Where a server's data connections come from: a passive listener (PASV, EPSV) on a
port of the configured range, or an active connection (PORT, EPRT) to the client.

Either way the connection must be the control connection's own client: a passive
listener accepts only connections from the control connection's address (others are
closed and logged), an active one connects only to that address. Over FTPS the TLS
handshake starts as soon as the connection is there (clients differ on whether they
send the transfer command first), and a data connection that does not resume the
control connection's TLS session is refused when reuse is required.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from protocols.ftp import stream
from protocols.ftp.channel import ChannelClosed, DataChannel

log = structlog.get_logger("gatewayd.ftp")


class NotReused(ChannelClosed):
    """The data connection's TLS handshake did not resume the control session."""


@dataclass(frozen=True)
class Protection:
    """How the data connections of a session are protected, as decided when they open."""

    context: ssl.SSLContext | None  # None: plain
    require_reuse: bool
    timeout: float


async def _secure(channel: DataChannel, protection: Protection) -> DataChannel:
    if protection.context is None:
        return channel
    try:
        await channel.start_tls(protection.context, server_side=True, timeout=protection.timeout)
    except ChannelClosed:
        channel.reset()
        raise
    if protection.require_reuse and not channel.session_reused:
        channel.reset()
        raise NotReused("the data connection must resume the TLS session of the control connection")
    return channel


def _bind(address: str, ports: tuple[int, int] | None) -> socket.socket:
    """A listening socket on `address`, on a free port of `ports` (any when None)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    candidates = [0]
    if ports is not None:
        candidates = list(range(ports[0], ports[1] + 1))
        random.shuffle(candidates)
    last: OSError | None = None
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((address, port))
            sock.listen(1)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            last = exc
    raise OSError(errno.EADDRINUSE, f"no free passive port in {ports}") from last


class Passive:
    """One passive listener: the first connection from the right address is the data
    connection; then it stops listening."""

    def __init__(self, peer_address: str, protection: Callable[[], Protection]) -> None:
        self.peer_address = peer_address
        self._protection = protection
        self._server: asyncio.Server | None = None
        self._ready: asyncio.Future[DataChannel] | None = None
        self._taken = False
        self.port = 0

    async def open(self, address: str, ports: tuple[int, int] | None) -> int:
        sock = _bind(address, ports)
        self._ready = asyncio.get_running_loop().create_future()
        self._server = await stream.serve(self._connected, sock=sock)
        self.port = sock.getsockname()[1]
        return self.port

    async def _connected(self, connection: stream.Stream) -> None:
        channel = DataChannel(connection)
        ready = self._ready
        if _plain_address(channel.peer_address) != _plain_address(self.peer_address):
            log.warning(
                "data connection refused: not from the control connection's address",
                expected=self.peer_address,
                remote=channel.peer_address,
            )
            channel.reset()
            return
        if ready is None or ready.done():
            channel.reset()  # one data connection per listener
            return
        self.stop_listening()
        try:
            secured = await _secure(channel, self._protection())
        except ChannelClosed as exc:
            if not ready.done():
                ready.set_exception(exc)
            return
        if ready.done():
            secured.reset()
        else:
            ready.set_result(secured)

    async def accept(self, timeout: float) -> DataChannel:
        """The data connection, once connected (and TLS ready); ChannelClosed when it
        does not come within `timeout` seconds or fails."""
        assert self._ready is not None
        try:
            channel = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
            self._taken = True
            return channel
        except TimeoutError:
            raise ChannelClosed(f"no data connection within {timeout:g} s") from None
        finally:
            self.stop_listening()

    def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def close(self) -> None:
        """Drop the listener and any connection it holds that nobody took."""
        self.stop_listening()
        ready = self._ready
        if ready is None:
            return
        if not ready.done():
            ready.set_exception(ChannelClosed("the data connection was not opened"))
        if ready.exception() is None and not self._taken:
            ready.result().reset()


class Active:
    """PORT/EPRT: we connect to the client (its control address only)."""

    def __init__(
        self, host: str, port: int, local_address: str, protection: Callable[[], Protection]
    ) -> None:
        self.host, self.port, self.local_address = host, port, local_address
        self._protection = protection
        self._task: asyncio.Task[DataChannel] | None = None

    async def accept(self, timeout: float) -> DataChannel:
        self._task = asyncio.ensure_future(self._connect(timeout))
        await asyncio.wait({self._task})
        if self._task.cancelled():
            raise ChannelClosed("the data connection was not opened")
        return self._task.result()

    async def _connect(self, timeout: float) -> DataChannel:
        where = f"{self.host}:{self.port}"
        try:
            connection = await asyncio.wait_for(
                stream.connect(self.host, self.port, local_addr=(self.local_address, 0)), timeout
            )
        except TimeoutError:
            raise ChannelClosed(f"cannot connect to {where} within {timeout:g} s") from None
        except OSError as exc:
            raise ChannelClosed(f"cannot connect to {where}: {exc.strerror or exc}") from None
        return await _secure(DataChannel(connection), self._protection())

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _plain_address(address: str) -> str:
    """`::ffff:127.0.0.1` and `127.0.0.1` are one address."""
    return address[7:] if address.startswith("::ffff:") else address


def parse_port(arg: str) -> tuple[str, int]:
    """PORT h1,h2,h3,h4,p1,p2 -> (address, port); ValueError when malformed."""
    parts = [int(p) for p in arg.split(",")]
    if len(parts) != 6 or any(not 0 <= p <= 255 for p in parts):
        raise ValueError("PORT takes h1,h2,h3,h4,p1,p2")
    return ".".join(str(p) for p in parts[:4]), parts[4] * 256 + parts[5]


def parse_eprt(arg: str) -> tuple[str, int]:
    """EPRT |1|address|port| (or |2| for IPv6) -> (address, port)."""
    if len(arg) < 7:
        raise ValueError("EPRT takes |proto|address|port|")
    delim = arg[0]
    fields = arg.split(delim)
    if len(fields) != 5 or fields[1] not in ("1", "2") or not fields[3].isdigit():
        raise ValueError("EPRT takes |proto|address|port|")
    port = int(fields[3])
    if not 0 < port < 65536:
        raise ValueError("EPRT port out of range")
    return fields[2], port


def pasv_reply_address(address: str, port: int) -> str:
    """`h1,h2,h3,h4,p1,p2` for a 227 reply."""
    return ",".join([*address.split("."), str(port >> 8), str(port & 0xFF)])


async def close_quietly(channel: DataChannel | None) -> None:
    if channel is not None:
        with contextlib.suppress(Exception):
            await channel.closed()
