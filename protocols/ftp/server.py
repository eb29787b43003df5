"""The FTP and FTPS server role, on asyncio streams: partners log in and see their
virtual tree, as over SFTP.

Each session is one control connection (`FtpSession`): its commands map onto the core's
`ServerContext`. Files are stored (`STOR`, `APPE`) into receive rules' folders and
retrieved (`RETR`) from send rules'; listings, sizes, times, renames and deletes are the
core's. Nothing else of the file system exists for a partner.

Ends of an upload, as the pipeline needs them (FTP sends no length):
- over FTPS the data connection's clean end is the client's TLS `close_notify`; an end
  without it is a drop;
- over plain FTP the end of the data connection is the clean end only if the control
  connection is still open `eof_grace` seconds later: a killed client drops both;
- `ABOR`, a reset, a timeout or our shutdown abort the transfer (its durable bytes are
  kept for a resume), never complete it. The 226 reply comes once the file is complete,
  fsynced, in place and its post tasks ran (or, under a temporary name, parked until
  `RNFR`/`RNTO`).

Resume: `SIZE` of an unfinished upload answers its durable progress; `REST N` + `STOR`,
or `APPE` (from that progress), continues the same transfer; any offset above what is
held is refused with 554 and the held count. Downloads resume with `REST` + `RETR`.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from gatewayd.errors import TransferError
from gatewayd.model import Direction, ErrorCode
from gatewayd.ports import Entry, ProtocolServer, ServerContext, TransferHandle
from protocols.ftp import listing, stream, tls
from protocols.ftp.channel import ChannelClosed, DataChannel, LineTooLong
from protocols.ftp.config import FtpServerConfig
from protocols.ftp.dataconn import (
    Active,
    NotReused,
    Passive,
    Protection,
    close_quietly,
    parse_eprt,
    parse_port,
    pasv_reply_address,
)
from protocols.ftp.errors import reply_for
from protocols.ftp.wire import MAX_LINE, Command, LineError, parse_command, quote_path, reply

log = structlog.get_logger("gatewayd.ftp")

# Bytes read from a download's file at a time. Each read is one worker-thread hop and
# one write (one TLS write) on the data connection: 1 MiB instead of 256 KiB took plain
# downloads from ~550 to ~750 MB/s and FTPS ones from ~420 to ~580 here (curl, 1 GiB).
CHUNK = 1024 * 1024
_TCP_ESTABLISHED = 1  # tcpi_state of Linux's TCP_INFO (CLOSE_WAIT once a FIN came)
# Where Linux's struct tcp_info holds tcpi_min_rtt (microseconds, since Linux 4.6): the
# shortest round trip seen. Not tcpi_rtt: on a control connection, where the client
# answers each reply only with its next command, delayed ACKs make that one tens of
# milliseconds however near the client is.
_TCP_INFO_MIN_RTT = 148
_TCP_INFO_MIN_RTT_END = _TCP_INFO_MIN_RTT + 4
_ANONYMOUS = ("anonymous", "ftp")


class FtpServer(ProtocolServer):
    """One `protocol: ftp` listener (plain, explicit or implicit FTPS)."""

    def __init__(self, name: str, config: FtpServerConfig, ctx: ServerContext) -> None:
        self.name, self.config, self.ctx = name, config, ctx
        self._listener: asyncio.Server | None = None
        self.sessions: set[FtpSession] = set()
        self.log = log.bind(server=name)
        self._prepared = False
        # False once a stop began: new logins and transfers are refused (421).
        self.accepting = True

    @property
    def bound_port(self) -> int:
        if self._listener is None or not self._listener.sockets:
            return 0
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def session_count(self) -> int:
        return len(self.sessions)

    async def prepare(self) -> None:
        """FTPS: the certificate, its key and the client CA load (each session builds
        its own context from them, see protocols.ftp.tls)."""
        if self.config.tls != "none" and not self._prepared:
            await asyncio.to_thread(tls.server_context, self.config)
        self._prepared = True

    async def tls_context(self) -> ssl.SSLContext:
        """A new context for one control connection and its data connections."""
        return await asyncio.to_thread(tls.server_context, self.config)

    async def start(self) -> None:
        await self.prepare()
        self._listener = await stream.serve(
            self._accept,
            self.config.address,
            self.config.port,
            chunk=stream.CONTROL_CHUNK,
            limit=MAX_LINE,
            reuse_address=True,
            reuse_port=self.config.reuse_port or None,
        )

    async def stop_accepting(self) -> None:
        """Stop listening; an open session's next command other than QUIT is answered
        421 and ends it. Transfers under way go on."""
        self.accepting = False
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def stop(self, grace: float = 0.0) -> None:
        """Stop listening; uploads whose data has all arrived get up to `grace` seconds
        to complete and write their 226; then every session ends: transfers still under
        way are aborted (INTERRUPTED, as it is our shutdown), the clients told 421."""
        await self.stop_accepting()
        sessions = list(self.sessions)
        completing = [s.transfer for s in sessions if s.completing and s.transfer is not None]
        if completing:
            await asyncio.wait(completing, timeout=grace)
        for session in sessions:
            session.shut_down()
        for session in sessions:
            await session.ended.wait()

    async def _accept(self, connection: stream.Stream) -> None:
        session = FtpSession(self, connection)
        self.sessions.add(session)
        try:
            await session.run()
        except Exception:  # a bug must not leave the session's transfer hanging
            session.log.exception("session failed")
        finally:
            self.sessions.discard(session)
            session.ended.set()


Handler = Callable[[str], Awaitable[None]]


class FtpSession:
    """One control connection and what it has set up."""

    def __init__(self, server: FtpServer, connection: stream.Stream) -> None:
        self.server, self.ctx, self.config = server, server.ctx, server.config
        peer = connection.get_extra_info("peername")
        local = connection.get_extra_info("sockname")
        self.remote = str(peer[0]) if peer else ""
        self.local = str(local[0]) if local else "127.0.0.1"
        sock = connection.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # ABOR comes with urgent data (Telnet IP, DM): read it in line.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.control = DataChannel(connection)
        self.log = server.log.bind(remote=self.remote)
        self.account: str | None = None
        self.user: str | None = None
        self.failures = 0
        self.cwd = "/"
        self.rest = 0
        self.rename_from: str | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.prot = "P" if self.config.tls == "implicit" else "C"
        self.epsv_all = False
        self.data_source: Passive | Active | None = None
        self.connecting: Passive | Active | None = None
        self._closing: asyncio.Future[None] | None = None
        self.channel: DataChannel | None = None
        self.transfer: asyncio.Task[None] | None = None
        self.transferred = 0
        self.abort_requested = False
        self.stopping = False
        # An upload's data has all arrived: it is completing (a stop lets it finish).
        self.completing = False
        self.control_gone = asyncio.Event()
        self.ended = asyncio.Event()
        self.started = datetime.now(UTC)

    # ------------------------------------------------------------------ the connection

    @property
    def control_tls(self) -> bool:
        return self.control.is_tls

    async def send(self, code: int, text: str, lines: list[str] | tuple[str, ...] = ()) -> None:
        if self.control_gone.is_set():
            return
        try:
            async with asyncio.timeout(self.config.data_timeout):
                await self.control.write(reply(code, text, lines))
        except (ChannelClosed, TimeoutError):
            self.control_gone.set()

    async def run(self) -> None:
        try:
            if self.config.tls == "implicit" and not await self._start_tls():
                return
            await self.send(220, "gatewayd FTP server ready")
            await self._loop()
        finally:
            self.control_gone.set()
            if self.transfer is not None:
                # Its data connection decides: a dropped or plain one aborts it, a TLS
                # one may still end cleanly (bounded by the data timeout).
                with contextlib.suppress(BaseException):
                    await self.transfer
            self._drop_data_source()
            await self.control.closed()

    def shut_down(self) -> None:
        """Our shutdown: abort the transfer under way, tell the client, close."""
        self.stopping = True
        self._cut_data()
        self._closing = asyncio.ensure_future(self._close_control())

    def _cut_data(self) -> None:
        """Drop the data connection under way, or the one being opened."""
        if self.channel is not None:
            self.channel.reset()
        if self.connecting is not None:
            self.connecting.close()
        self._drop_data_source()

    async def _close_control(self) -> None:
        if self.transfer is not None:
            with contextlib.suppress(BaseException):
                await self.transfer
        await self.send(421, "the server is shutting down")
        self.control.close()

    async def _loop(self) -> None:
        reading: asyncio.Task[bytes] | None = None
        try:
            while not self.stopping:
                if reading is None:
                    reading = asyncio.ensure_future(self.control.readline(MAX_LINE))
                timeout = self.config.idle_timeout if self.account else self.config.login_timeout
                done, _ = await asyncio.wait({reading}, timeout=timeout)
                if not done:
                    if self.transfer is not None and not self.transfer.done():
                        continue  # the control connection idles while the data moves
                    await self.send(421, f"no command for {timeout:g} s: closing")
                    return
                try:
                    raw = reading.result()
                except LineTooLong:
                    await self.send(500, "command line too long")
                    return
                except ChannelClosed:
                    return
                finally:
                    reading = None
                if not raw:
                    return  # the client closed (or was killed)
                try:
                    command = parse_command(raw)
                except LineError as exc:
                    await self.send(501, str(exc))
                    continue
                if not command.verb:
                    continue
                if not await self._dispatch(command):
                    return
        finally:
            self.control_gone.set()
            if reading is not None:
                reading.cancel()

    async def _dispatch(self, command: Command) -> bool:
        """Run one command; False when the session ends."""
        verb = command.verb
        running = self.transfer is not None and not self.transfer.done()
        if running and verb == "ABOR":
            await self._abor_running()
            return True
        if running and verb == "STAT" and not command.arg:
            await self.send(213, f"transfer in progress: {self.transferred} bytes moved")
            return True
        if running:
            assert self.transfer is not None
            with contextlib.suppress(BaseException):
                await self.transfer  # one command at a time: the others wait their turn
        if self.stopping:
            return False
        if verb == "QUIT":
            await self.send(221, "goodbye")
            return False
        if not self.server.accepting:
            await self.send(421, "the server is shutting down")
            return False
        handler = self._handlers().get(verb)
        if handler is None:
            await self.send(502, f"{verb} is not implemented")
            return True
        if verb not in _BEFORE_LOGIN and self.account is None:
            await self.send(530, "log in with USER and PASS first")
            return True
        if verb not in ("RNFR", "RNTO"):
            self.rename_from = None
        try:
            await handler(command.arg)
        except TransferError as exc:
            await self.send(*reply_for(exc))
        return not self.control_gone.is_set()

    def _handlers(self) -> dict[str, Handler]:
        return {
            "USER": self.ftp_user,
            "PASS": self.ftp_pass,
            "AUTH": self.ftp_auth,
            "PBSZ": self.ftp_pbsz,
            "PROT": self.ftp_prot,
            "CCC": self.ftp_ccc,
            "FEAT": self.ftp_feat,
            "OPTS": self.ftp_opts,
            "SYST": self.ftp_syst,
            "NOOP": self.ftp_noop,
            "HELP": self.ftp_help,
            "STAT": self.ftp_stat,
            "ABOR": self.ftp_abor,
            "ACCT": self.ftp_acct,
            "ALLO": self.ftp_allo,
            "TYPE": self.ftp_type,
            "MODE": self.ftp_mode,
            "STRU": self.ftp_stru,
            "PWD": self.ftp_pwd,
            "XPWD": self.ftp_pwd,
            "CWD": self.ftp_cwd,
            "XCWD": self.ftp_cwd,
            "CDUP": self.ftp_cdup,
            "XCUP": self.ftp_cdup,
            "MKD": self.ftp_mkd,
            "XMKD": self.ftp_mkd,
            "RMD": self.ftp_mkd,
            "XRMD": self.ftp_mkd,
            "PASV": self.ftp_pasv,
            "EPSV": self.ftp_epsv,
            "PORT": self.ftp_port,
            "EPRT": self.ftp_eprt,
            "REST": self.ftp_rest,
            "STOR": self.ftp_stor,
            "APPE": self.ftp_appe,
            "RETR": self.ftp_retr,
            "LIST": self.ftp_list,
            "NLST": self.ftp_nlst,
            "MLSD": self.ftp_mlsd,
            "MLST": self.ftp_mlst,
            "SIZE": self.ftp_size,
            "MDTM": self.ftp_mdtm,
            "HASH": self.ftp_hash,
            "XSHA256": self.ftp_xsha256,
            "RNFR": self.ftp_rnfr,
            "RNTO": self.ftp_rnto,
            "DELE": self.ftp_dele,
        }

    # ------------------------------------------------------------------ TLS and login

    async def _start_tls(self) -> bool:
        """The TLS handshake of the control connection (implicit, or after AUTH TLS)."""
        try:
            context = await self.server.tls_context()
        except Exception as exc:
            self.log.error("cannot load the TLS settings", error=str(exc))
            return False
        try:
            await self.control.start_tls(
                context, server_side=True, timeout=self.config.login_timeout
            )
        except ChannelClosed as exc:
            self.log.info("TLS handshake failed", error=str(exc))
            self.control_gone.set()
            return False
        # Data connections resume this session and need no tickets of their own (a
        # client closing with unread tickets could reset the connection).
        context.num_tickets = 0
        self.tls_context = context
        return True

    def _certified_login(self) -> str | None:
        if self.config.client_certs == "none":
            return None
        ssl_object = self.control.ssl_object
        return tls.peer_common_name(ssl_object.getpeercert() if ssl_object else None)

    async def ftp_auth(self, arg: str) -> None:
        mechanism = arg.strip().upper()
        if self.config.tls in ("none", "implicit"):
            await self.send(
                502, "AUTH is not offered here" if self.config.tls == "none" else "already TLS"
            )
            return
        if mechanism not in ("TLS", "TLS-C", "SSL"):
            await self.send(504, f"AUTH {mechanism} is not supported: use AUTH TLS")
            return
        if self.control_tls:
            await self.send(503, "TLS is already on")
            return
        if self.account is not None:
            await self.send(503, "AUTH TLS comes before the login")
            return
        await self.send(234, "proceed with the TLS handshake")
        if not await self._start_tls():
            self.control_gone.set()
            return
        self.user = None

    async def ftp_pbsz(self, arg: str) -> None:
        if not self.control_tls:
            await self.send(503, "PBSZ needs TLS (AUTH TLS first)")
            return
        await self.send(200, "PBSZ=0")

    async def ftp_prot(self, arg: str) -> None:
        level = arg.strip().upper()
        if not self.control_tls:
            await self.send(503, "PROT needs TLS (AUTH TLS first)")
            return
        if level == "P":
            self.prot = "P"
            await self.send(200, "data connections are protected")
        elif level == "C":
            if self.config.tls in ("required", "implicit"):
                await self.send(534, "data connections must be protected (PROT P)")
                return
            self.prot = "C"
            await self.send(200, "data connections are in the clear")
        else:
            await self.send(536, f"PROT {level} is not supported: use P")

    async def ftp_ccc(self, arg: str) -> None:
        await self.send(534, "the control connection stays protected")

    async def ftp_user(self, arg: str) -> None:
        login = arg.strip()
        if self.account is not None:
            await self.send(503, "already logged in")
            return
        if self.config.tls == "required" and not self.control_tls:
            await self.send(530, "TLS is required: send AUTH TLS first")
            return
        if not login:
            await self.send(501, "USER needs a login")
            return
        if login.lower() in _ANONYMOUS:
            await self.send(530, "anonymous logins are not allowed")
            return
        certified = self._certified_login()
        if certified is not None and certified == login and self.ctx.has_account(login):
            self._logged_in(login)
            await self.send(232, f"logged in as {login} (client certificate)")
            return
        if self.config.client_certs == "required":
            await self.send(530, "the login must be the client certificate's")
            return
        self.user = login
        await self.send(331, "password please")

    async def ftp_pass(self, arg: str) -> None:
        if self.account is not None:
            await self.send(503, "already logged in")
            return
        if self.user is None:
            await self.send(503, "USER first")
            return
        login, self.user = self.user, None
        account = await self.ctx.authenticate(login, password=arg, remote=self.remote)
        if account is None:
            self.failures += 1
            if self.failures >= self.config.max_login_failures:
                await self.send(421, "too many failed logins: closing")
                self.control_gone.set()
                return
            await self.send(530, "login incorrect")
            return
        self._logged_in(account)
        await self.send(230, f"logged in as {account}")

    def _logged_in(self, account: str) -> None:
        self.account = account
        self.log = self.log.bind(account=account)
        self.log.info("logged in", tls=self.control_tls)

    async def ftp_acct(self, arg: str) -> None:
        await self.send(202, "no account needed")

    # ------------------------------------------------------------------ information

    def _features(self) -> list[str]:
        found = []
        if self.config.tls in ("explicit", "required"):
            found.append("AUTH TLS")
        if self.config.tls != "none":
            found += ["PBSZ", "PROT"]
        if self.config.active_mode:
            found.append("EPRT")
        found += [
            "EPSV",
            "HASH SHA-256*",
            "MDTM",
            "MLST type*;size*;modify*;",
            "REST STREAM",
            "SIZE",
            "TVFS",
            "UTF8",
        ]
        return found

    async def ftp_feat(self, arg: str) -> None:
        await self.send(211, "Features:", self._features())

    async def ftp_opts(self, arg: str) -> None:
        name, _, value = arg.strip().partition(" ")
        name, value = name.upper(), value.strip().upper()
        if name == "UTF8" and value in ("ON", ""):
            await self.send(200, "UTF-8 always on")
        elif name == "MLST":
            await self.send(200, "MLST OPTS type;size;modify;")
        elif name == "HASH":
            if value in ("", "SHA-256"):
                await self.send(200, "SHA-256")
            else:
                await self.send(501, f"{value}: only SHA-256 is offered")
        else:
            await self.send(501, f"no option {name}")

    async def ftp_syst(self, arg: str) -> None:
        await self.send(215, "UNIX Type: L8")

    async def ftp_noop(self, arg: str) -> None:
        await self.send(200, "ok")

    async def ftp_help(self, arg: str) -> None:
        await self.send(214, "Commands:", [" ".join(sorted(self._handlers()))])

    async def ftp_stat(self, arg: str) -> None:
        if arg.strip():
            if self.account is None:
                await self.send(530, "log in with USER and PASS first")
                return
            path = self.vpath(_strip_ls_options(arg))
            entries = await self._entries(path)
            now = datetime.now(UTC)
            lines = [listing.list_line(e, self.account or "", now) for e in entries]
            await self.send(213, f"status of {path}:", lines)
            return
        lines = [
            f"connected from {self.remote}",
            f"logged in as {self.account}" if self.account else "not logged in",
            f"control connection: {'TLS' if self.control_tls else 'plain'}",
            f"data connections: {'protected' if self.prot == 'P' else 'clear'}",
            "TYPE: BINARY, MODE: STREAM, STRUcture: FILE",
        ]
        await self.send(211, "gatewayd FTP server status:", lines)

    async def ftp_allo(self, arg: str) -> None:
        await self.send(202, "no storage allocation needed")

    async def ftp_type(self, arg: str) -> None:
        kind = arg.strip().upper().split()
        if kind and kind[0] in ("A", "I", "L"):
            # TYPE A moves the bytes unchanged, as vsftpd does by default.
            await self.send(200, f"type set to {kind[0]} (bytes move unchanged)")
        else:
            await self.send(504, f"TYPE {arg} is not supported: use I (or A)")

    async def ftp_mode(self, arg: str) -> None:
        if arg.strip().upper() == "S":
            await self.send(200, "mode set to S")
        else:
            await self.send(504, "only MODE S (stream) is supported")

    async def ftp_stru(self, arg: str) -> None:
        if arg.strip().upper() == "F":
            await self.send(200, "structure set to F")
        else:
            await self.send(504, "only STRU F (file) is supported")

    # ------------------------------------------------------------------ the tree

    def vpath(self, arg: str) -> str:
        """The virtual path an argument names: relative ones from the current folder;
        lexical, clamped at the root (`..` cannot climb above `/`)."""
        path = posixpath.normpath(posixpath.join(self.cwd, arg.strip() or "."))
        return "/" + path.lstrip("/")

    async def _stat(self, path: str) -> Entry | None:
        assert self.account is not None
        return await self.ctx.stat(self.account, path)

    async def _entries(self, path: str) -> list[Entry]:
        """The entries LIST shows for `path`: a folder's, or the file itself."""
        assert self.account is not None
        entry = await self._stat(path)
        if entry is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no such file or folder {path}")
        if not entry.is_dir:
            return [entry]
        return await self.ctx.list_dir(self.account, path)

    async def ftp_pwd(self, arg: str) -> None:
        await self.send(257, f"{quote_path(self.cwd)} is the current folder")

    async def ftp_cwd(self, arg: str) -> None:
        path = self.vpath(arg)
        entry = await self._stat(path)
        if entry is None or not entry.is_dir:
            await self.send(550, f"no such folder {path}")
            return
        self.cwd = path
        await self.send(250, f"now in {path}")

    async def ftp_cdup(self, arg: str) -> None:
        await self.ftp_cwd("..")

    async def ftp_mkd(self, arg: str) -> None:
        await self.send(550, "the folders are the rules': none can be created or removed")

    async def ftp_size(self, arg: str) -> None:
        entry = await self._stat(self.vpath(arg))
        if entry is None or entry.is_dir:
            await self.send(550, f"{self.vpath(arg)}: not a file")
            return
        # An unfinished upload: its durable progress, where a resume may start.
        await self.send(213, str(entry.size))

    async def ftp_mdtm(self, arg: str) -> None:
        entry = await self._stat(self.vpath(arg))
        if entry is None or entry.is_dir or entry.mtime is None:
            await self.send(550, f"{self.vpath(arg)}: no modification time")
            return
        await self.send(213, listing.mlsx_time(entry.mtime))

    async def _sha256(self, arg: str) -> tuple[str, Entry] | None:
        assert self.account is not None
        path = self.vpath(arg)
        entry = await self._stat(path)
        if entry is None or entry.is_dir or entry.unfinished:
            await self.send(550, f"{path}: not a complete file")
            return None
        return await self.ctx.digest(self.account, path, "sha256"), entry

    async def ftp_hash(self, arg: str) -> None:
        found = await self._sha256(arg)
        if found is not None:
            digest, entry = found
            span = f"0-{max(0, entry.size - 1)}"
            await self.send(213, f"SHA-256 {span} {digest} {self.vpath(arg)}")

    async def ftp_xsha256(self, arg: str) -> None:
        found = await self._sha256(arg)
        if found is not None:
            await self.send(250, found[0])

    async def ftp_rnfr(self, arg: str) -> None:
        path = self.vpath(arg)
        if await self._stat(path) is None:
            await self.send(550, f"no such file {path}")
            return
        self.rename_from = path
        await self.send(350, "ready for RNTO")

    async def ftp_rnto(self, arg: str) -> None:
        old, self.rename_from = self.rename_from, None
        if old is None:
            await self.send(503, "RNFR first")
            return
        assert self.account is not None
        new = self.vpath(arg)
        # A temporary name renamed to its final name: returns once the upload is
        # complete under it (post tasks run).
        await self.ctx.rename(self.account, old, new)
        self.log.info("renamed", old=old, new=new)
        await self.send(250, f"renamed to {new}")

    async def ftp_dele(self, arg: str) -> None:
        assert self.account is not None
        await self.ctx.delete(self.account, self.vpath(arg))
        await self.send(250, "deleted")

    async def ftp_mlst(self, arg: str) -> None:
        path = self.vpath(arg)
        entry = await self._stat(path)
        if entry is None:
            await self.send(550, f"no such file or folder {path}")
            return
        await self.send(250, f"listing {path}", [listing.mlsx_line(entry, self.started, path)])

    async def ftp_rest(self, arg: str) -> None:
        value = arg.strip()
        if not value.isdigit():
            await self.send(501, "REST takes a byte offset")
            return
        self.rest = int(value)
        await self.send(350, f"restarting at byte {self.rest}: send STOR, APPE or RETR")

    # ------------------------------------------------------------------ data connections

    def _protection(self) -> Protection:
        context = self.tls_context if self.prot == "P" else None
        return Protection(context, self.config.require_session_reuse, self.config.data_timeout)

    def _drop_data_source(self) -> None:
        if self.data_source is not None:
            self.data_source.close()
            self.data_source = None

    async def _open_passive(self) -> int | None:
        self._drop_data_source()
        passive = Passive(self.remote, self._protection)
        try:
            port = await passive.open(self.local, self.config.passive_ports)
        except OSError as exc:
            self.log.warning("no passive port", error=str(exc))
            await self.send(425, "no passive port available: try again")
            return None
        self.data_source = passive
        return port

    async def ftp_pasv(self, arg: str) -> None:
        if self.epsv_all:
            await self.send(501, "EPSV ALL was sent: only EPSV now")
            return
        announce = self.config.passive_address or self.local
        if announce.startswith("::ffff:"):
            announce = announce[7:]
        if ":" in announce:
            await self.send(425, "PASV needs IPv4: use EPSV")
            return
        port = await self._open_passive()
        if port is not None:
            await self.send(227, f"Entering Passive Mode ({pasv_reply_address(announce, port)})")

    async def ftp_epsv(self, arg: str) -> None:
        value = arg.strip().upper()
        if value == "ALL":
            self.epsv_all = True
            await self.send(200, "EPSV ALL: only EPSV from now on")
            return
        if value and value not in ("1", "2"):
            await self.send(522, "network protocol not supported, use (1,2)")
            return
        port = await self._open_passive()
        if port is not None:
            await self.send(229, f"Entering Extended Passive Mode (|||{port}|)")

    async def _set_active(self, host: str, port: int) -> None:
        if not self.config.active_mode:
            await self.send(502, "active mode is off here: use PASV or EPSV")
            return
        if self.epsv_all:
            await self.send(501, "EPSV ALL was sent: only EPSV now")
            return
        if _plain(host) != _plain(self.remote) or port < 1024:
            self.log.warning("active data address refused", host=host, port=port)
            await self.send(500, "data connections go to your own address, on a port above 1023")
            return
        self._drop_data_source()
        self.data_source = Active(host, port, self.local, self._protection)
        await self.send(200, "active data connection set")

    async def ftp_port(self, arg: str) -> None:
        try:
            host, port = parse_port(arg.strip())
        except ValueError as exc:
            await self.send(501, str(exc))
            return
        await self._set_active(host, port)

    async def ftp_eprt(self, arg: str) -> None:
        try:
            host, port = parse_eprt(arg.strip())
        except ValueError as exc:
            await self.send(501, str(exc))
            return
        await self._set_active(host, port)

    async def _data_ready(self) -> bool:
        """Whether a data transfer may start: a data connection was set up (PASV...),
        and it is protected where the server wants it."""
        if self.data_source is None:
            await self.send(425, "use PASV or EPSV first")
            return False
        if self.prot != "P" and self.config.tls in ("required", "implicit"):
            self._drop_data_source()
            await self.send(521, "data connections must be protected (PROT P)")
            return False
        return True

    async def _connect_data(self) -> DataChannel:
        """The data connection (raises ChannelClosed)."""
        source, self.data_source = self.data_source, None
        assert source is not None
        self.connecting = source
        try:
            channel = await source.accept(self.config.data_timeout)
        finally:
            self.connecting = None
            source.close()
        if self.abort_requested or self.stopping:
            channel.reset()
            raise ChannelClosed("the transfer was aborted")
        self.channel = channel
        return channel

    def _start(self, work: Awaitable[None]) -> None:
        self.abort_requested = False
        self.transferred = 0
        self.completing = False

        async def run() -> None:
            try:
                await work
            finally:
                self.completing = False
                channel, self.channel = self.channel, None
                await close_quietly(channel)

        self.transfer = asyncio.ensure_future(run())

    async def _abor_running(self) -> None:
        self.abort_requested = True
        self._cut_data()
        if self.transfer is not None:
            with contextlib.suppress(BaseException):
                await self.transfer
        await self.send(226, "ABOR done")

    async def ftp_abor(self, arg: str) -> None:
        self._drop_data_source()
        await self.send(226, "no transfer to abort")

    async def _no_data_connection(self, handle: TransferHandle, exc: ChannelClosed) -> None:
        if self.stopping:
            await _abort(handle, ErrorCode.TeShuttingDown, "the server is stopping")
        elif self.abort_requested:
            await _abort(handle, ErrorCode.TeDataTransfer, "aborted by the partner (ABOR)")
            await self.send(426, "transfer aborted")
        else:
            await _abort(handle, ErrorCode.TeConnection, f"no data connection: {exc}")
            await self.send(*self._data_failure(exc))

    def _data_failure(self, exc: ChannelClosed) -> tuple[int, str]:
        if isinstance(exc, NotReused):
            return 522, str(exc)
        return 425, f"cannot open the data connection: {exc}"

    # ------------------------------------------------------------------ listings

    async def ftp_list(self, arg: str) -> None:
        await self._listing(arg, "LIST")

    async def ftp_nlst(self, arg: str) -> None:
        await self._listing(arg, "NLST")

    async def ftp_mlsd(self, arg: str) -> None:
        await self._listing(arg, "MLSD")

    async def _listing(self, arg: str, verb: str) -> None:
        path = self.vpath(_strip_ls_options(arg))
        self.rest = 0
        if verb == "MLSD":
            entry = await self._stat(path)
            if entry is None or not entry.is_dir:
                await self.send(501 if entry else 550, f"{path} is not a folder")
                return
        entries = await self._entries(path)
        if not await self._data_ready():
            return
        now = datetime.now(UTC)
        if verb == "LIST":
            lines = [listing.list_line(e, self.account or "", now) for e in entries]
        elif verb == "NLST":
            lines = [e.name for e in entries]
        else:
            here = Entry(name=".", is_dir=True)
            lines = [f"{listing.facts(here, self.started, kind='cdir')} {path}"]
            lines += [listing.mlsx_line(e, self.started) for e in entries]
        body = "".join(line + "\r\n" for line in lines).encode()
        await self.send(150, f"listing of {path}")
        self._start(self._send_listing(body))

    async def _send_listing(self, body: bytes) -> None:
        try:
            channel = await self._connect_data()
            async with asyncio.timeout(self.config.data_timeout):
                await channel.write(body)
                await channel.finish()
        except (ChannelClosed, TimeoutError) as exc:
            if isinstance(exc, ChannelClosed) and self.channel is None:
                await self.send(*self._data_failure(exc))
            else:
                await self.send(426, "listing cut")
            return
        await self.send(226, "listing sent")

    # ------------------------------------------------------------------ uploads

    async def ftp_stor(self, arg: str) -> None:
        await self._store(arg, append=False)

    async def ftp_appe(self, arg: str) -> None:
        await self._store(arg, append=True)

    async def _store(self, arg: str, *, append: bool) -> None:
        assert self.account is not None
        path = self.vpath(arg)
        offset, self.rest = self.rest, 0
        if append and offset == 0:
            # APPE continues what the server holds: an unfinished upload's durable
            # progress (a finished file cannot grow: the core refuses it).
            entry = await self._stat(path)
            offset = entry.size if entry is not None and not entry.is_dir else 0
        if not await self._data_ready():
            return
        try:
            handle = await self.ctx.open_transfer(
                self.account,
                path,
                Direction.RECEIVE,
                offset=offset,
                truncate=offset == 0,
                remote=self.remote,
            )
        except TransferError as exc:
            self._drop_data_source()
            self.log.info("upload refused", path=path, offset=offset, error=exc.message)
            await self.send(*reply_for(exc))
            return
        # Debug: the pipeline's "transfer done" is the line of record (one per file).
        self.log.debug("upload starts", path=path, offset=offset, transfer_id=handle.transfer_id)
        await self.send(150, f"ok to send data for {posixpath.basename(path)} from byte {offset}")
        self._start(self._receive(handle, path))

    async def _receive(self, handle: TransferHandle, path: str) -> None:
        try:
            channel = await self._connect_data()
        except ChannelClosed as exc:
            await self._no_data_connection(handle, exc)
            return
        position = handle.offset
        writing: asyncio.Future[None] | None = None
        problem: str | None = None
        failed: TransferError | None = None
        try:
            while True:
                async with asyncio.timeout(self.config.data_timeout):
                    data = await channel.read()
                if not data:
                    # The partner's end: the upload completes once the checks below
                    # pass, and a stop of the gateway lets it (see FtpServer.stop).
                    self.completing = True
                    handle.closing()
                    break
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(handle.write(position, data))
                position += len(data)
                self.transferred = position - handle.offset
            if writing is not None:
                await writing
                writing = None
        except TimeoutError:
            problem = f"no data for {self.config.data_timeout:g} s"
        except ChannelClosed as exc:
            problem = str(exc)
        except TransferError as exc:
            failed = exc
        finally:
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await writing
        if failed is not None:
            with contextlib.suppress(Exception):
                await handle.abort(failed)
            await self.send(*reply_for(failed))
            return
        name = posixpath.basename(path)
        if problem is None and not channel.is_tls and not await self._control_stays(handle):
            problem = (
                "the control connection closed with the data connection (the client was killed?)"
            )
        if self.stopping:
            await _abort(handle, ErrorCode.TeShuttingDown, "the server is stopping")
            return
        if self.abort_requested:
            await _abort(handle, ErrorCode.TeDataTransfer, f"{name}: aborted by the partner (ABOR)")
            await self.send(426, "transfer aborted")
            return
        if problem is not None:
            received = position - handle.offset
            self.log.warning("upload cut", path=path, received=received, error=problem)
            await _abort(
                handle, ErrorCode.TeConnectionReset, f"{name}: {problem} ({position} bytes held)"
            )
            await self.send(426, f"transfer aborted: {problem}")
            return
        await channel.answer_close()
        try:
            await handle.close()
        except TransferError as exc:
            self.log.warning("upload failed", path=path, error=exc.message)
            await self.send(*reply_for(exc))
            return
        self.log.debug("upload complete", path=path, transfer_id=handle.transfer_id, size=position)
        if getattr(handle, "awaiting_rename", False):
            await self.send(226, f"{position} bytes held: complete once renamed (RNFR/RNTO)")
        else:
            await self.send(226, f"transfer complete: {position} bytes, SHA-256 {handle.sha256}")

    async def _control_stays(self, handle: TransferHandle) -> bool:
        """Plain FTP's end of upload: the control connection must outlive the data
        connection by the grace time (a killed client closes both at once: its control
        connection, opened first, usually closes first). The grace is spent making the
        upload's bytes durable: the close then has only the placing left, and a cut
        upload keeps them for its resume."""
        if not self._control_open():
            return False
        grace = self._grace()
        if grace <= 0:
            return True
        syncing = asyncio.ensure_future(handle.sync())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.control_gone.wait(), grace)
            return self._control_open()
        finally:
            with contextlib.suppress(TransferError):  # kept by the file: the close reports it
                await syncing

    def _grace(self) -> float:
        """How long the control connection must outlive the data connection: a killed
        client's two FINs leave its host together and arrive within a few round trips
        of each other, so `eof_grace` is cut to four of the control connection's
        shortest round trips where the kernel tells it (never under `eof_grace_min`): on a
        near link a small upload's 226 then waits milliseconds, not a tenth of a
        second."""
        grace = self.config.eof_grace
        sock = self.control.stream.get_extra_info("socket")
        floor = self.config.eof_grace_min
        if grace <= floor or sock is None or not hasattr(socket, "TCP_INFO"):
            return grace
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_MIN_RTT_END)
        except OSError:
            return grace
        if len(info) < _TCP_INFO_MIN_RTT_END:
            return grace
        (min_rtt,) = struct.unpack_from("<I", info, _TCP_INFO_MIN_RTT)  # microseconds
        if min_rtt == 0:
            return grace
        return min(grace, max(floor, 4 * int(min_rtt) / 1e6))

    def _control_open(self) -> bool:
        """Whether the control connection is still open both ways: no end of it read,
        and (where the kernel tells) no FIN or reset from the client received yet."""
        if self.control_gone.is_set() or self.abort_requested:
            return False
        sock = self.control.stream.get_extra_info("socket")
        if sock is None or not hasattr(socket, "TCP_INFO"):
            return True
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        except OSError:
            return True
        return bool(info[0] == _TCP_ESTABLISHED)

    # ------------------------------------------------------------------ downloads

    async def ftp_retr(self, arg: str) -> None:
        assert self.account is not None
        path = self.vpath(arg)
        offset, self.rest = self.rest, 0
        entry = await self._stat(path)
        if entry is None or entry.is_dir:
            self._drop_data_source()
            await self.send(550, f"no such file {path}")
            return
        if offset > entry.size:
            self._drop_data_source()
            await self.send(
                554, f"REST {offset} is beyond the end of the file ({entry.size} bytes)"
            )
            return
        if not await self._data_ready():
            return
        try:
            handle = await self.ctx.open_transfer(
                self.account, path, Direction.SEND, offset=offset, remote=self.remote
            )
        except TransferError as exc:
            self._drop_data_source()
            await self.send(*reply_for(exc))
            return
        size = handle.size
        await self.send(
            150, f"opening data connection for {posixpath.basename(path)} ({size} bytes)"
        )
        self._start(self._send_file(handle, path))

    async def _send_file(self, handle: TransferHandle, path: str) -> None:
        try:
            channel = await self._connect_data()
        except ChannelClosed as exc:
            await self._no_data_connection(handle, exc)
            return
        position, size = handle.offset, handle.size
        reading: asyncio.Future[bytes] | None = None
        problem: str | None = None
        try:
            if position < size:
                reading = asyncio.ensure_future(handle.read(position, min(CHUNK, size - position)))
            while reading is not None:
                data = await reading
                reading = None
                if not data:
                    raise TransferError(
                        ErrorCode.TeDataTransfer, f"the file ended at byte {position}"
                    )
                position += len(data)
                if position < size:
                    reading = asyncio.ensure_future(
                        handle.read(position, min(CHUNK, size - position))
                    )
                async with asyncio.timeout(self.config.data_timeout):
                    await channel.write(data)
                self.transferred = position - handle.offset
            await channel.finish(self.config.data_timeout)
        except TimeoutError:
            problem = f"the client took no data for {self.config.data_timeout:g} s"
        except ChannelClosed as exc:
            problem = str(exc)
        except TransferError as exc:
            await handle.abort(exc)
            await self.send(*reply_for(exc))
            return
        finally:
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
        if self.stopping:
            await _abort(handle, ErrorCode.TeShuttingDown, "the server is stopping")
            return
        if self.abort_requested or problem is not None:
            why = "aborted by the partner (ABOR)" if self.abort_requested else problem
            await _abort(
                handle, ErrorCode.TeConnectionReset, f"download cut at byte {position}: {why}"
            )
            await self.send(426, f"transfer aborted: {why}")
            return
        try:
            await handle.close()
        except TransferError as exc:
            self.log.warning("download ended in error after its data", path=path, error=exc.message)
        self.log.debug("download complete", path=path, transfer_id=handle.transfer_id, size=size)
        await self.send(226, f"transfer complete: {size - handle.offset} bytes sent")


_BEFORE_LOGIN = frozenset(
    {"USER", "PASS", "AUTH", "PBSZ", "PROT", "CCC", "FEAT", "OPTS", "SYST", "NOOP", "HELP",
     "STAT", "ABOR", "ACCT"}
)  # fmt: skip


def _plain(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") else address


def _strip_ls_options(arg: str) -> str:
    """`LIST -la /inbox` -> `/inbox` (clients pass ls options)."""
    words = arg.strip().split(" ")
    while words and words[0].startswith("-"):
        words.pop(0)
    return " ".join(words)


async def _abort(handle: TransferHandle, code: ErrorCode, message: str) -> None:
    """Abort, even from a cancelled task: the row must record how it ended."""
    with contextlib.suppress(Exception):
        await asyncio.shield(handle.abort(TransferError(code, message)))
