"""File tasks: COPY, COPYRENAME, MOVE, MOVERENAME, DELETE, RENAME.

They act on the transfer's file (`#TRUEFULLPATH#`). Copies are atomic and fsynced; no
task replaces an existing file unless its `overwrite` argument is true. MOVE, MOVERENAME
and RENAME make the transfer follow the file. Relative paths are taken from the home
folder (`#HOMEPATH#`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from typing import Any, ClassVar

from gatewayd.errors import TaskError
from gatewayd.fsutil import fsync_dir
from gatewayd.model import ErrorCode
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks._target import follow, retarget
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args


class _FileTask(ArgsTask):
    """COPY and MOVE, into a folder or to a file name."""

    required_args: ClassVar[tuple[str, ...]] = ("path",)
    optional_args: ClassVar[tuple[str, ...]] = ("overwrite",)
    arg_kinds: ClassVar[dict[str, Kind]] = {"path": Kind.TEXT, "overwrite": Kind.FLAG}
    # `path` is a folder that gets the file under its name (COPY, MOVE), or the new file.
    into_folder: ClassVar[bool]
    # The file moves and the transfer follows it (MOVE, MOVERENAME).
    moves: ClassVar[bool]

    async def _source(self, ctx: TaskContext) -> str:
        source = ctx.transfer.local_filepath
        if not source:
            raise self.fail("the transfer has no local file yet")
        try:
            await asyncio.to_thread(_fsops.require_file, source, ctx.rule_folder)
        except TaskError as error:
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None
        return source

    def _destination(self, ctx: TaskContext, args: dict[str, Any], source: str) -> str:
        raw = self.text(args, "path")
        if self.into_folder:
            return os.path.join(self.path(ctx, raw), os.path.basename(source))
        if raw.endswith(("/", os.sep)):
            raise self.fail(f"path {raw!r} names a folder, not a file")
        return self.path(ctx, raw)

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        if self.moves and ctx.rerun and await self._moved_already(ctx, args):
            return
        source = await self._source(ctx)
        dest = self._destination(ctx, args, source)
        operation = _fsops.move if self.moves else _fsops.copy_atomic
        overwrite = self.flag(args, "overwrite")
        try:
            await asyncio.to_thread(
                operation,
                source,
                dest,
                overwrite=overwrite,
                root=ctx.rule_folder,
                tag=ctx.temp_tag,
                rerun=ctx.rerun,
            )
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        except TaskError as error:
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None
        if self.moves:
            follow(ctx, dest)
        ctx.log.info(f"{self.type_name}: {source} -> {dest}")

    async def _moved_already(self, ctx: TaskContext, args: dict[str, Any]) -> bool:
        """A rerun of a move that a crash cut after the file moved, before the row
        followed it: the file is gone from where the row says and sits at the
        destination with the size and SHA-256 the row records. Then the transfer only
        follows it."""
        t = ctx.transfer
        source = t.local_filepath
        if not source or not t.sha256:
            return False
        dest = self._destination(ctx, args, source)
        if not await asyncio.to_thread(_moved, source, dest, t.filesize, t.sha256):
            return False
        follow(ctx, dest)
        ctx.log.info(f"{self.type_name}: {source} -> {dest} (moved by the interrupted run)")
        return True


@register
class Copy(_FileTask):
    """Copy the file into folder `path` (created if missing), keeping its name."""

    type_name = "COPY"
    into_folder = True
    moves = False


@register
class CopyRename(_FileTask):
    """Copy the file to the file path `path`."""

    type_name = "COPYRENAME"
    into_folder = False
    moves = False


@register
class Move(_FileTask):
    """Move the file into folder `path`, keeping its name; the transfer follows it."""

    type_name = "MOVE"
    into_folder = True
    moves = True


@register
class MoveRename(_FileTask):
    """Move the file to the file path `path`; the transfer follows it."""

    type_name = "MOVERENAME"
    into_folder = False
    moves = True


@register
class Delete(ArgsTask):
    """Delete the transfer's file (it must exist)."""

    type_name = "DELETE"

    async def run(self, ctx: TaskContext) -> None:
        path = ctx.transfer.local_filepath
        if not path:
            raise self.fail("the transfer has no local file")
        try:
            await asyncio.to_thread(_delete, path)
        except FileNotFoundError:
            raise TaskError(f"DELETE: file not found: {path}", ErrorCode.TeFileNotFound) from None
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        ctx.log.info(f"DELETE: {path}")


def _moved(source: str, dest: str, size: int, sha256: str) -> bool:
    if os.path.lexists(source):
        return False
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        while chunk := f.read(_fsops.CHUNK):
            digest.update(chunk)
            size -= len(chunk)
    return size == 0 and digest.hexdigest() == sha256.lower()


def _delete(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    os.unlink(path)
    fsync_dir(os.path.dirname(path) or ".")


@register
class Rename(ArgsTask):
    """Point the transfer at another existing file `path`; no file is touched."""

    type_name = "RENAME"
    required_args: ClassVar[tuple[str, ...]] = ("path",)
    arg_kinds: ClassVar[dict[str, Kind]] = {"path": Kind.TEXT}

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        new_path = self.path(ctx, self.text(args, "path"))
        try:
            await retarget(ctx, new_path)
        except TaskError as error:
            raise TaskError(f"RENAME: {error.message}", error.code) from None
        ctx.log.info(f"RENAME: the transfer now points at {new_path}")
