"""REMOTEDELETE and REMOTEMOVE: what becomes of the partner's file once a client
receive has it (the pollers add one of them at the end of the post chain, so it runs
only once the file is here whole and every other post task passed).

REMOTEDELETE removes the transfer's remote file (or `path`); REMOTEMOVE moves it into
the remote folder `to`, under the same name. A file already gone is a warning: the
task may run again after a crash, once it already did its work.
"""

from __future__ import annotations

import posixpath
from typing import ClassVar

from gatewayd.errors import TaskError, TaskWarning, TransferError
from gatewayd.model import ErrorCode
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args


class _RemoteTask(ArgsTask):
    def target(self, ctx: TaskContext) -> str:
        t = ctx.transfer
        if t.is_server or t.is_send:
            raise self.fail("only a client transfer that receives has a partner's file to change")
        args = substitute_args(self.args, ctx)
        path = args.get("path") or t.remote_filepath
        if not isinstance(path, str) or not path:
            raise self.fail("no remote file")
        return path

    async def apply(self, ctx: TaskContext, path: str, new: str | None) -> None:
        if ctx.remote is None:
            raise self.fail("no partner to reach")
        try:
            async with ctx.remote() as client:
                if new is None:
                    await client.delete(path)
                else:
                    await client.rename(path, new)
        except TransferError as exc:
            if exc.code == ErrorCode.TeFileNotFound:
                raise TaskWarning(f"{self.type_name}: {path} is not on the partner") from None
            raise TaskError(f"{self.type_name}: {exc}", exc.code) from None


@register
class RemoteDeleteTask(_RemoteTask):
    """Delete the received file on the partner."""

    type_name = "REMOTEDELETE"
    optional_args: ClassVar[tuple[str, ...]] = ("path",)
    arg_kinds: ClassVar[dict[str, Kind]] = {"path": Kind.TEXT}

    async def run(self, ctx: TaskContext) -> None:
        await self.apply(ctx, self.target(ctx), None)


@register
class RemoteMoveTask(_RemoteTask):
    """Move the received file into folder `to` on the partner."""

    type_name = "REMOTEMOVE"
    required_args: ClassVar[tuple[str, ...]] = ("to",)
    optional_args: ClassVar[tuple[str, ...]] = ("path",)
    arg_kinds: ClassVar[dict[str, Kind]] = {"to": Kind.TEXT, "path": Kind.TEXT}

    async def run(self, ctx: TaskContext) -> None:
        path = self.target(ctx)
        folder = substitute_args(self.args, ctx).get("to")
        if not isinstance(folder, str) or not folder:
            raise self.fail("the argument 'to' must name a remote folder")
        await self.apply(ctx, path, posixpath.join(folder, posixpath.basename(path)))
