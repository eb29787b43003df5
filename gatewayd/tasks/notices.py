"""Notices: EMAIL (a mail through an SMTP server) and NOTIFY (a signed HTTP POST).

Both are at-least-once (see `gatewayd.outbound.context`): a message carries a key that
is the same each time this task of this transfer runs — EMAIL a `Message-ID`
`<key@gatewayd>`, NOTIFY an `Idempotency-Key` header — so that a receiver can drop the
repeat a kill -9 between the sending and the commit may cause. `failure: warning` makes
a notice that cannot be delivered a warning (the chain goes on); the default `error`
fails the task (TeExternalOperation).

EMAIL arguments: `server` (a name of `smtp:`; may be left out when there is one), `to`
(an address or a list), `cc`, `subject` and `body` (templates: every marker, among them
#ERRORCODE#, #ERRORSTRCODE# and #ERRORMSG# in error chains), `attach` (true: the
transfer's file goes along when it is at most `max_attachment` bytes, default 10 MiB;
a larger or missing file is named in the body instead) and `failure`.

NOTIFY arguments: `endpoint` (a name of `notify:`; may be left out when there is one)
and `failure`. The body is the transfer as the API shows it (`GET /api/transfers/{id}`),
as JSON; the header `X-Gatewayd-Signature: sha256=<hex>` is the HMAC-SHA256 of the body
with the endpoint's secret. A connection error, a timeout, a 429 or a 5xx answer is
tried again (`retries`, `retry_delay` doubled each time); any other answer but 2xx
fails at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import ssl
from collections.abc import Mapping
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, ClassVar, TypeVar

import aiohttp
import aiosmtplib

from gatewayd import crashpoints
from gatewayd.config.outbound import SmtpServerConfig
from gatewayd.errors import TaskError, TaskWarning
from gatewayd.outbound.context import CaFileError, notice_key, ssl_context
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args

_DEFAULT_MAX_ATTACHMENT = 10 * 1024 * 1024
SIGNATURE_HEADER = "X-Gatewayd-Signature"
C = TypeVar("C")


class _NoticeTask(ArgsTask):
    """What EMAIL and NOTIFY share: a named server, and `failure`."""

    setting: ClassVar[str]  # the name of the settings section

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        failure = args.get("failure", "error")
        if failure not in ("error", "warning"):
            problems.append("argument 'failure' must be error or warning")
        return problems

    def _named(self, servers: Mapping[str, C], args: dict[str, Any], arg: str) -> tuple[str, C]:
        name = args.get(arg)
        if name is None:
            if len(servers) != 1:
                raise self.fail(
                    f"argument '{arg}' is needed: {len(servers)} {self.setting} entries"
                    " are configured"
                )
            name = next(iter(servers))
        if not isinstance(name, str) or name not in servers:
            raise self.fail(f"unknown {self.setting} entry {name!r} (see `{self.setting}:`)")
        return name, servers[name]

    async def _tls(self, ca_file: str | None) -> ssl.SSLContext:
        try:
            return await asyncio.to_thread(ssl_context, ca_file)
        except CaFileError as error:
            raise self.fail(str(error)) from None

    def _undelivered(self, args: dict[str, Any], message: str) -> Exception:
        if args.get("failure", "error") == "warning":
            return TaskWarning(f"{self.type_name}: {message}")
        return self.fail(message)


@register
class EmailTask(_NoticeTask):
    type_name: ClassVar[str] = "EMAIL"
    setting: ClassVar[str] = "smtp"
    required_args: ClassVar[tuple[str, ...]] = ("to", "subject")
    optional_args: ClassVar[tuple[str, ...]] = (
        "server",
        "cc",
        "body",
        "attach",
        "max_attachment",
        "failure",
    )
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "server": Kind.TEXT,
        "to": Kind.TEXT_LIST,
        "cc": Kind.TEXT_LIST,
        "subject": Kind.TEXT,
        "body": Kind.ANY,
        "attach": Kind.FLAG,
        "max_attachment": Kind.NUMBER,
        "failure": Kind.TEXT,
    }

    def _addresses(self, args: dict[str, Any], name: str) -> list[str]:
        value = args.get(name, [])
        items = value.split(",") if isinstance(value, str) else list(value)
        found = [item.strip() for item in items if isinstance(item, str) and item.strip()]
        for address in found:
            # A marker's value could carry a line break: never a header of its own.
            if any(c in address for c in "\r\n\x00") or "@" not in address:
                raise self.fail(f"argument '{name}': {address!r} is not an address")
        return found

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        name, server = self._named(ctx.outbound.smtp if ctx.outbound else {}, args, "server")
        to, cc = self._addresses(args, "to"), self._addresses(args, "cc")
        if not to:
            raise self.fail("argument 'to' names no address")
        key = notice_key(ctx.transfer, ctx.step, ctx.task_number)
        try:
            message = self._message(args, server.sender, to, cc, key)
        except (ValueError, MessageError) as error:
            raise self.fail(f"cannot make the message: {error}") from None
        attachment = await self._attachment(ctx, args) if self.flag(args, "attach") else None
        body = str(args.get("body", ""))
        if isinstance(attachment, str):
            body += f"\n\n{attachment}\n"
            attachment = None
        message.set_content(body)
        if attachment is not None:
            message.add_attachment(
                attachment,
                maintype="application",
                subtype="octet-stream",
                filename=os.path.basename(ctx.transfer.local_filepath),
            )
        await self._send(ctx, args, name, server, message, to + cc, key)

    def _message(
        self,
        args: dict[str, Any],
        sender: str,
        to: list[str],
        cc: list[str],
        key: str,
    ) -> EmailMessage:
        """The headers: the subject on one line, the Message-ID made of the key."""
        domain = sender.rpartition("@")[2] or "gatewayd"
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        message["Subject"] = self.text(args, "subject").replace("\r", " ").replace("\n", " ")
        message["Date"] = formatdate(localtime=True)
        message["Message-ID"] = f"<{key}@{domain}>"
        message["X-Gatewayd-Key"] = key
        return message

    async def _send(
        self,
        ctx: TaskContext,
        args: dict[str, Any],
        name: str,
        server: SmtpServerConfig,
        message: EmailMessage,
        recipients: list[str],
        key: str,
    ) -> None:
        ca = ctx.outbound.ca_path(server.ca_file) if ctx.outbound else None
        context = await self._tls(ca) if server.tls != "none" else None
        try:
            await aiosmtplib.send(
                message,
                recipients=recipients,
                hostname=server.host,
                port=server.effective_port(),
                username=server.user,
                password=server.password,
                use_tls=server.tls == "implicit",
                start_tls=server.tls == "starttls",
                tls_context=context,
                timeout=server.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            raise self._undelivered(args, f"mail through '{name}' failed: {error}") from None
        crashpoints.reached(crashpoints.MAIL_SENT)
        ctx.log.info(f"EMAIL: sent to {', '.join(recipients)} through '{name}' ({key})")

    async def _attachment(self, ctx: TaskContext, args: dict[str, Any]) -> bytes | str:
        """The file's bytes, or why it is not attached."""
        limit = self.number(args, "max_attachment")
        limit_bytes = _DEFAULT_MAX_ATTACHMENT if limit is None else int(limit)
        path = ctx.transfer.local_filepath

        def read() -> bytes | str:
            try:
                info = _fsops.require_file(path, ctx.rule_folder)
            except TaskError as error:
                return f"(not attached: {error.message})"
            if info.st_size > limit_bytes:
                return f"(not attached: {info.st_size} bytes, more than {limit_bytes})"
            with _fsops.open_input(path, ctx.rule_folder) as file:
                data = file.read(limit_bytes + 1)
            if len(data) > limit_bytes:
                return f"(not attached: more than {limit_bytes} bytes)"
            return data

        return await asyncio.to_thread(read)


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header: `sha256=` and the HMAC-SHA256 of `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@register
class NotifyTask(_NoticeTask):
    type_name: ClassVar[str] = "NOTIFY"
    setting: ClassVar[str] = "notify"
    optional_args: ClassVar[tuple[str, ...]] = ("endpoint", "failure")
    arg_kinds: ClassVar[dict[str, Kind]] = {"endpoint": Kind.TEXT, "failure": Kind.TEXT}

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        outbound = ctx.outbound
        if outbound is None:
            raise self.fail("no notify endpoints here")
        name, endpoint = self._named(outbound.notify, args, "endpoint")
        key = notice_key(ctx.transfer, ctx.step, ctx.task_number)
        body = json.dumps(outbound.transfer_json(ctx.transfer), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            SIGNATURE_HEADER: signature(endpoint.secret, body),
            "X-Gatewayd-Step": ctx.step,
        }
        context = None
        if endpoint.url.startswith("https:"):
            context = await self._tls(outbound.ca_path(endpoint.ca_file))
        delay = endpoint.retry_delay
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
        problem = ""
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(endpoint.retries + 1):
                if attempt:
                    ctx.log.warning(f"NOTIFY: '{name}' attempt {attempt} failed: {problem}")
                    await asyncio.sleep(delay)
                    delay *= 2
                try:
                    async with session.post(
                        endpoint.url, data=body, headers=headers, ssl=context or True
                    ) as answer:
                        if 200 <= answer.status < 300:
                            crashpoints.reached(crashpoints.NOTICE_SENT)
                            ctx.log.info(f"NOTIFY: '{name}' answered {answer.status} ({key})")
                            return
                        problem = f"HTTP {answer.status} {answer.reason or ''}".strip()
                        if answer.status != 429 and answer.status < 500:
                            break
                except TimeoutError:
                    problem = f"no answer within {endpoint.timeout:g} s"
                except aiohttp.ClientError as error:
                    problem = str(error) or type(error).__name__
        raise self._undelivered(args, f"notice to '{name}' failed: {problem}")
