"""One control connection of our FTP client to a partner: connect, TLS, login, commands
and replies, and the data connections of its transfers.

Data connections are passive (EPSV, then PASV for servers without it) unless the
partner is set to active mode (EPRT, then PORT: the partner connects to us, only from
its own address). Over FTPS they resume the control connection's TLS session (what
vsftpd and our own server require), and their TLS handshake starts once the partner
answered the transfer command with 1xx: servers accept the data connection only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from dataclasses import dataclass

import structlog

from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from protocols.ftp import stream, tls
from protocols.ftp.channel import ChannelClosed, DataChannel
from protocols.ftp.config import FtpPartnerConfig
from protocols.ftp.errors import code_for
from protocols.ftp.wire import MAX_LINE, Reply, ReplyParser

log = structlog.get_logger("gatewayd.ftp")

_EPSV = re.compile(r"\((.)\1\1(\d+)\1\)")
_PASV = re.compile(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")


class ReplyError(TransferError):
    """The partner answered a command with a failure; the connection is still usable."""

    def __init__(self, code: ErrorCode, message: str, reply: Reply) -> None:
        super().__init__(code, message)
        self.reply = reply


@dataclass
class _Pending:
    """A data connection being set up: connected (passive) or awaited (active)."""

    channel: DataChannel | None = None
    server: asyncio.Server | None = None
    accepted: asyncio.Future[DataChannel] | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.channel is not None:
            self.channel.reset()
        if self.accepted is not None:
            if not self.accepted.done():
                self.accepted.cancel()
            elif not self.accepted.cancelled() and self.accepted.exception() is None:
                self.accepted.result().reset()


class ControlConnection:
    """A logged-in control connection (see `open`)."""

    def __init__(self, partner: str, config: FtpPartnerConfig, context: ssl.SSLContext | None):
        self.partner, self.config, self.context = partner, config, context
        self.channel: DataChannel | None = None
        self.features: set[str] = set()
        self.hash_sha256 = False
        self.broken = False
        self.last_used = time.monotonic()
        self.where = f"{config.address}:{config.ftp_port}"
        self.log = log.bind(partner=partner)

    # ------------------------------------------------------------------ plumbing

    def _lost(self, what: str, exc: BaseException) -> TransferError:
        self.broken = True
        reason = str(exc) or type(exc).__name__
        return TransferError(
            ErrorCode.TeConnectionReset,
            f"{what}: connection to partner {self.partner} lost: {reason}",
        )

    async def _reply(self, what: str) -> Reply:
        assert self.channel is not None
        parser = ReplyParser()
        try:
            async with asyncio.timeout(self.config.read_timeout):
                while True:
                    line = await self.channel.readline(MAX_LINE)
                    if not line:
                        raise ChannelClosed("the partner closed the control connection")
                    found = parser.feed(line)
                    if found is not None:
                        if found.code == 421:
                            self.broken = True
                        return found
        except (ChannelClosed, TimeoutError, ValueError) as exc:
            raise self._lost(what, exc) from None

    async def send_line(self, line: str) -> None:
        assert self.channel is not None
        if "\r" in line or "\n" in line:
            raise TransferError(ErrorCode.TeForbidden, "line breaks are not allowed in names")
        try:
            async with asyncio.timeout(self.config.read_timeout):
                await self.channel.write(line.encode("utf-8") + b"\r\n")
        except (ChannelClosed, TimeoutError) as exc:
            raise self._lost(line.split(" ", 1)[0], exc) from None

    async def command(
        self,
        line: str,
        expect: tuple[int, ...] = (2,),
        default: ErrorCode = ErrorCode.TeDataTransfer,
    ) -> Reply:
        """Send `line`, return the reply; ReplyError unless its code (or first digit)
        is in `expect`."""
        verb = line.split(" ", 1)[0]
        await self.send_line(line)
        return self.check(await self._reply(verb), verb, expect, default)

    def check(self, found: Reply, verb: str, expect: tuple[int, ...], default: ErrorCode) -> Reply:
        if found.code in expect or found.code // 100 in expect:
            return found
        shown = "PASS" if verb == "PASS" else verb
        raise ReplyError(
            code_for(found.code, default),
            f"partner {self.partner}: {shown} answered {found}",
            found,
        )

    # ------------------------------------------------------------------ opening

    async def open(self) -> None:
        """Connect, TLS (implicit or AUTH TLS), log in, learn the features."""
        cfg = self.config
        try:
            connection = await asyncio.wait_for(
                stream.connect(cfg.address, cfg.ftp_port, chunk=stream.CONTROL_CHUNK),
                cfg.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TransferError(
                ErrorCode.TeConnection,
                f"cannot connect to partner {self.partner} ({self.where}): {reason}",
            ) from None
        self.channel = DataChannel(connection)
        try:
            if cfg.tls == "implicit":
                await self._tls()
            await self._greeting()
            if cfg.tls in ("explicit", "required"):
                await self.command("AUTH TLS", (234,), ErrorCode.TeConnection)
                await self._tls()
            await self._login()
            await self._features()
            if self.context is not None:
                await self.command("PBSZ 0", (2,), ErrorCode.TeConnection)
                await self.command("PROT P", (2,), ErrorCode.TeConnection)
            await self.command("TYPE I")
            if "UTF8" in self.features:
                with contextlib.suppress(ReplyError):
                    await self.command("OPTS UTF8 ON")
        except BaseException:
            self.close()
            raise
        self.log.info("connected", address=self.where, tls=self.channel.is_tls)

    async def _greeting(self) -> None:
        found = await self._reply("connect")
        while found.code == 120:  # "ready in a few minutes"
            found = await self._reply("connect")
        if found.code != 220:
            raise TransferError(
                ErrorCode.TeConnection, f"partner {self.partner} ({self.where}) answered {found}"
            )

    async def _tls(self) -> None:
        assert self.channel is not None and self.context is not None
        hostname = None if self.config.cert_sha256 else self.config.address
        try:
            await self.channel.start_tls(
                self.context,
                server_side=False,
                server_hostname=hostname,
                timeout=self.config.connect_timeout,
            )
        except ChannelClosed as exc:
            raise TransferError(
                ErrorCode.TeConnection,
                f"TLS with partner {self.partner} ({self.where}) failed: {exc}",
            ) from None
        self._check_pin(self.channel)

    def _check_pin(self, channel: DataChannel) -> None:
        pinned = self.config.cert_sha256
        if pinned is None:
            return
        found = tls.fingerprint(channel.ssl_object)
        if found != pinned:
            self.broken = True
            raise TransferError(
                ErrorCode.TeConnection,
                f"partner {self.partner} ({self.where}) presented the certificate {found}, "
                f"the configuration pins {pinned}",
            )

    async def _login(self) -> None:
        cfg = self.config
        found = await self.command(f"USER {cfg.login}", (2, 3), ErrorCode.TeBadAuthentication)
        if found.code == 331 or found.code // 100 == 3:
            try:
                await self.command(
                    f"PASS {cfg.password or ''}", (2,), ErrorCode.TeBadAuthentication
                )
            except ReplyError as exc:
                raise TransferError(
                    ErrorCode.TeBadAuthentication,
                    f"partner {self.partner} ({self.where}) refused the login of "
                    f"{cfg.login!r}: {exc.reply}",
                ) from None

    async def _features(self) -> None:
        try:
            found = await self.command("FEAT", (211,))
        except ReplyError:
            return  # an old server: no extensions
        for line in found.lines[1:-1]:
            feature = line.strip()
            name = feature.split(" ", 1)[0].upper()
            self.features.add(name)
            if name == "REST" and "STREAM" in feature.upper():
                self.features.add("REST STREAM")
            if name == "HASH" and "SHA-256" in feature.upper():
                self.hash_sha256 = True
        if self.hash_sha256:
            with contextlib.suppress(ReplyError):
                await self.command("OPTS HASH SHA-256")

    def close(self) -> None:
        self.broken = True
        if self.channel is not None:
            self.channel.reset()

    async def quit(self) -> None:
        if self.channel is None or self.broken:
            self.close()
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.send_line("QUIT")
                await self._reply("QUIT")
        with contextlib.suppress(Exception):
            await self.channel.closed()

    # ------------------------------------------------------------------ data connections

    async def prepare_data(self) -> _Pending:
        """Passive: EPSV (PASV when refused) and connect; active: listen, EPRT/PORT."""
        if self.config.active_mode:
            return await self._active()
        try:
            found = await self.command("EPSV", (229,))
            match = _EPSV.search(found.text)
            if match is None:
                raise TransferError(ErrorCode.TeDataTransfer, f"cannot read the EPSV reply {found}")
            host, port = self.config.address, int(match.group(2))
        except ReplyError as exc:
            if exc.reply.code // 100 != 5:
                raise
            found = await self.command("PASV", (227,))
            pasv = _PASV.search(found.text)
            if pasv is None:
                raise TransferError(
                    ErrorCode.TeDataTransfer, f"cannot read the PASV reply {found}"
                ) from None
            # The address in the reply is ignored (NAT, and no data connection to a
            # third host): the data goes where the control connection goes.
            host, port = self.config.address, int(pasv.group(5)) * 256 + int(pasv.group(6))
        try:
            connection = await asyncio.wait_for(
                stream.connect(host, port), self.config.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise TransferError(
                ErrorCode.TeConnection,
                f"cannot open a data connection to partner {self.partner} ({host}:{port}): "
                f"{reason}",
            ) from None
        return _Pending(channel=DataChannel(connection))

    async def _active(self) -> _Pending:
        assert self.channel is not None
        local = self.channel.stream.get_extra_info("sockname")
        peer = self.channel.stream.get_extra_info("peername")
        address, peer_address = str(local[0]), str(peer[0])
        pending = _Pending()
        accepted = pending.accepted = asyncio.get_running_loop().create_future()

        async def connected(connection: stream.Stream) -> None:
            channel = DataChannel(connection)
            if channel.peer_address != peer_address or accepted.done():
                channel.reset()
                return
            accepted.set_result(channel)

        pending.server = await stream.serve(connected, address, 0)
        port = pending.server.sockets[0].getsockname()[1]
        family = 2 if ":" in address else 1
        try:
            await self.command(f"EPRT |{family}|{address}|{port}|")
        except ReplyError as exc:
            if exc.reply.code // 100 != 5 or family != 1:
                pending.close()
                raise
            numbers = ",".join([*address.split("."), str(port >> 8), str(port & 0xFF)])
            try:
                await self.command(f"PORT {numbers}")
            except BaseException:
                pending.close()
                raise
        return pending

    async def open_data(self, pending: _Pending) -> DataChannel:
        """After the transfer command's 1xx: the data connection, TLS on."""
        channel = pending.channel
        try:
            if channel is None:
                assert pending.accepted is not None
                try:
                    channel = await asyncio.wait_for(
                        asyncio.shield(pending.accepted), self.config.connect_timeout
                    )
                except TimeoutError:
                    raise TransferError(
                        ErrorCode.TeConnection,
                        f"partner {self.partner} did not open the data connection",
                    ) from None
                finally:
                    if pending.server is not None:
                        pending.server.close()
            if self.context is not None:
                assert self.channel is not None and self.channel.ssl_object is not None
                hostname = None if self.config.cert_sha256 else self.config.address
                try:
                    await channel.start_tls(
                        self.context,
                        server_side=False,
                        server_hostname=hostname,
                        session=self.channel.ssl_object.session,
                        timeout=self.config.connect_timeout,
                    )
                except ChannelClosed as exc:
                    raise TransferError(
                        ErrorCode.TeConnection, f"TLS on the data connection failed: {exc}"
                    ) from None
                self._check_pin(channel)
        except BaseException:
            pending.close()
            raise
        return channel

    async def transfer_command(self, line: str, pending: _Pending) -> DataChannel:
        """Send a transfer command (STOR, RETR, MLSD...) and return its data
        connection once the partner answered 1xx."""
        verb = line.split(" ", 1)[0]
        try:
            await self.send_line(line)
            found = await self._reply(verb)
            self.check(found, verb, (1,), ErrorCode.TeDataTransfer)
        except BaseException:
            pending.close()
            raise
        return await self.open_data(pending)

    async def final_reply(self, verb: str) -> Reply:
        """The reply that ends a transfer (226, or the partner's failure)."""
        return self.check(await self._reply(verb), verb, (2,), ErrorCode.TeDataTransfer)
