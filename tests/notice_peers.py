"""Real peers of the ICAP, EMAIL and NOTIFY tasks: Debian's c-icap with the
content-filtering service, an aiosmtpd SMTP server (STARTTLS, AUTH), an aiohttp receiver
of signed notices."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import email.policy
import hashlib
import hmac
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.http_support import CertFiles, free_port, wait_port

C_ICAP = "/usr/bin/c-icap"
C_ICAP_MODULES = "/usr/lib/x86_64-linux-gnu/c_icap"
MARKER = "GATEWAYD-TEST-BLOCK-ME"


class CIcap:
    """c-icap in the foreground on free ports (plain ICAP, and ICAP over TLS with the
    certificate `certs`), with the content-filtering service `scan` blocking any body
    that holds MARKER (whatever its content type)."""

    def __init__(self, folder: Path, certs: CertFiles) -> None:
        self.folder = folder
        self.certs = certs
        self.port = free_port()
        self.tls_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"icap://127.0.0.1:{self.port}/scan"

    @property
    def tls_url(self) -> str:
        return f"icaps://127.0.0.1:{self.tls_port}/scan"

    def _config(self) -> str:
        f = self.folder
        return f"""\
PidFile {f}/c-icap.pid
CommandsSocket {f}/c-icap.ctl
Timeout 30
StartServers 1
MaxServers 1
MinSpareThreads 2
MaxSpareThreads 4
ThreadsPerChild 4
Port 127.0.0.1:{self.port}
TlsPort 127.0.0.1:{self.tls_port} cert={self.certs.cert} key={self.certs.key}
TmpDir {f}
DebugLevel 1
ModulesDir {C_ICAP_MODULES}
ServicesDir {C_ICAP_MODULES}
TemplateDir /usr/share/c_icap/templates/
TemplateDefaultLanguage en
LoadMagicFile /etc/c-icap/c-icap.magic
ServerLog {f}/server.log
AccessLog {f}/access.log
Service scan srv_content_filtering.so
acl All src 0.0.0.0/0.0.0.0
srv_content_filtering.Match Marker body /{MARKER}/ score=10
srv_content_filtering.Profile blocking block score{{Marker>5}}
srv_content_filtering.ProfileOption blocking AnyContentType
srv_content_filtering.ProfileAccess blocking All
"""

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "c-icap.conf"
        conf.write_text(self._config())
        self.proc = await asyncio.create_subprocess_exec(
            C_ICAP,
            "-N",
            "-D",
            "-d",
            "1",
            "-f",
            str(conf),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=open(self.folder / "stdout", "wb"),  # noqa: SIM115 - the child keeps it
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            await wait_port(self.port, timeout=10)
            await wait_port(self.tls_port, timeout=10)
        except AssertionError:
            await self.stop()
            raise AssertionError(f"c-icap did not start: {self.output()}") from None

    def output(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")[-2000:]

    async def stop(self, graceful: bool = True) -> None:
        """SIGTERM (c-icap takes about a second to end its children), or SIGKILL to
        the whole group at a test's end."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        # Its children serve the port: wait until nothing listens there any more.
        async with asyncio.timeout(10):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    return
                writer.close()
                await asyncio.sleep(0.05)


class SmtpSink:
    """An SMTP server in this event loop: STARTTLS required (or, `implicit`, TLS from
    the first byte), AUTH LOGIN/PLAIN with one user; the messages it accepted, parsed."""

    def __init__(
        self, certs: CertFiles, user: str, password: str, *, implicit: bool = False
    ) -> None:
        self.implicit = implicit
        self.port = free_port()
        self.user, self.password = user, password
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certs.cert, certs.key)
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.server: asyncio.Server | None = None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.user
            and data.password.decode() == self.password
        )
        return AuthResult(success=ok)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(
                self,
                hostname="127.0.0.1",
                tls_context=None if self.implicit else self.context,
                require_starttls=not self.implicit,
                auth_required=True,
                # Implicit TLS: the connection is TLS already (aiosmtpd only knows
                # STARTTLS's).
                auth_require_tls=not self.implicit,
                authenticator=self._authenticate,
            ),
            "127.0.0.1",
            self.port,
            ssl=self.context if self.implicit else None,
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class NotifyReceiver:
    """An aiohttp receiver that checks each POST's HMAC-SHA256 signature and answers
    500 to the first `fail_first` of them."""

    def __init__(self, secret: str, fail_first: int = 0, certs: CertFiles | None = None) -> None:
        self.certs = certs
        self.secret = secret
        self.fail_first = fail_first
        self.port = free_port()
        # Every POST: (its headers, its body, whether its signature was right).
        self.posts: list[tuple[dict[str, str], bytes, bool]] = []
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.certs else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        good = hmac.compare_digest(request.headers.get("X-Gatewayd-Signature", ""), expected)
        self.posts.append((dict(request.headers), body, good))
        if not good:
            return web.Response(status=401)
        if len(self.posts) <= self.fail_first:
            return web.Response(status=500, text="try again")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        context = None
        if self.certs is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.certs.cert, self.certs.key)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    """Poll `check` until it holds (bounded)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None
