"""ICAP: have an ICAP scanner (RFC 3507) judge the transfer's file.

Arguments: `server` (a name of the `icap:` settings; may be left out when there is only
one) and `quarantine` (a folder; relative paths are taken from the home folder).

A clean file (204, or 200 with the file sent back unchanged) passes and stays where it
is. A file the server blocks or changes fails the task with TeExternalOperation and the
server's reason; with `quarantine`, it is moved there first (under its name, or its name
and a suffix when taken) and the transfer follows it, so the row says where it is. A
server that cannot be reached, does not answer in time or answers something else fails
the task too: the file is never let through unscanned, and is left untouched.

A rerun (a crash in the middle) scans again; one whose file is already in quarantine
refuses it again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, ClassVar

from gatewayd.config.outbound import IcapServerConfig
from gatewayd.errors import TaskError
from gatewayd.outbound.context import CaFileError, ssl_context
from gatewayd.outbound.icap import IcapError, scan
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks._target import follow
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args

_BLOCK = 256 * 1024


@register
class IcapTask(ArgsTask):
    type_name: ClassVar[str] = "ICAP"
    optional_args: ClassVar[tuple[str, ...]] = ("server", "quarantine")
    arg_kinds: ClassVar[dict[str, Kind]] = {"server": Kind.TEXT, "quarantine": Kind.TEXT}

    def _server(self, ctx: TaskContext, args: dict[str, Any]) -> tuple[str, IcapServerConfig]:
        servers = ctx.outbound.icap if ctx.outbound else {}
        name = args.get("server")
        if name is None:
            if len(servers) != 1:
                raise self.fail(
                    f"argument 'server' is needed: {len(servers)} ICAP servers are configured"
                )
            name = next(iter(servers))
        if not isinstance(name, str) or name not in servers:
            raise self.fail(f"unknown ICAP server {name!r} (see `icap:` in gatewayd.yaml)")
        return name, servers[name]

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        name, server = self._server(ctx, args)
        quarantine = self.path(ctx, self.text(args, "quarantine")) if "quarantine" in args else None
        source = ctx.transfer.local_filepath
        if not source:
            raise self.fail("the transfer has no local file yet")
        if ctx.rerun and quarantine is not None and await self._quarantined(ctx, quarantine):
            return
        try:
            info = await asyncio.to_thread(_fsops.require_file, source, ctx.rule_folder)
        except TaskError as error:
            raise TaskError(f"ICAP: {error.message}", error.code) from None
        context = None
        if server.url.startswith("icaps:"):
            ca = ctx.outbound.ca_path(server.ca_file) if ctx.outbound else None
            try:
                context = await asyncio.to_thread(ssl_context, ca)
            except CaFileError as error:
                raise self.fail(f"server '{name}': {error}") from None
        file = await asyncio.to_thread(_fsops.open_input, source, ctx.rule_folder)
        try:
            verdict = await scan(
                server.url,
                _blocks(file),
                name=os.path.basename(source),
                size=info.st_size,
                method=server.method,
                preview=server.preview,
                timeout=server.timeout,
                ssl_context=context,
            )
        except IcapError as error:
            raise self.fail(f"scan by '{name}' failed: {error}") from None
        finally:
            await asyncio.to_thread(file.close)
        if verdict.clean:
            ctx.log.info(f"ICAP: {source} is clean ('{name}', ICAP {verdict.status})")
            return
        message = f"{os.path.basename(source)} refused by '{name}': {verdict.reason}"
        if quarantine is not None:
            dest = await self._quarantine(ctx, source, quarantine)
            message += f"; quarantined as {dest}"
        ctx.log.warning(f"ICAP: {message}")
        raise self.fail(message)

    async def _quarantine(self, ctx: TaskContext, source: str, folder: str) -> str:
        def move() -> str:
            base = os.path.basename(source)
            for attempt in range(1000):
                dest = os.path.join(folder, base if attempt == 0 else f"{base}.{attempt}")
                try:
                    _fsops.move(source, dest, overwrite=False, tag=ctx.temp_tag)
                except _fsops.ExistsError:
                    continue
                return dest
            raise self.fail(f"no free name for {base} in the quarantine folder {folder}")

        try:
            dest = await asyncio.to_thread(move)
        except OSError as error:
            raise self.fail(f"cannot quarantine: {_fsops.os_error_text(error)}") from error
        follow(ctx, dest)
        return dest

    async def _quarantined(self, ctx: TaskContext, folder: str) -> bool:
        """A rerun after the file went to quarantine (a crash before the failure was
        recorded): refuse it again, following it there."""
        source = ctx.transfer.local_filepath
        there = os.path.join(folder, os.path.basename(source))
        if source != there and await asyncio.to_thread(os.path.lexists, source):
            return False
        if not await asyncio.to_thread(os.path.isfile, there):
            return False
        follow(ctx, there)
        raise self.fail(f"{os.path.basename(there)} was refused and quarantined as {there}")


async def _blocks(file: BinaryIO) -> AsyncIterator[bytes]:
    while block := await asyncio.to_thread(file.read, _BLOCK):
        yield block
