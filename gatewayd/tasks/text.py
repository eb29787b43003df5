"""Text files: TRANSCODE (change the character set) and CHNEWLINE (change line endings).

Both stream the file (constant memory whatever its size) into a temporary file that
replaces the original atomically, keeping its permission bits; the transfer's
`filesize` is updated. The new file carries the extended attribute
`user.gatewayd.rewritten`, the tag of the task's place in the transfer: a rerun after a
crash that came between the replacement and the row's commit finds its own work done
and does not transform it twice (converting a character set twice would garble it).
On a file system without user extended attributes that rerun transforms it again.
TRANSCODE may write to `outputPath` instead (the transfer keeps pointing at the
original; an existing file there is replaced only with `overwrite`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
from typing import Any, BinaryIO, ClassVar

from gatewayd.errors import TaskError
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import has_markers, substitute_args


class _InPlaceTask(ArgsTask):
    """A task that rewrites the transfer's file through a streaming byte transform."""

    # Bytes read at a time; small values in tests put boundaries where they hurt.
    chunk_size: int = _fsops.CHUNK

    async def _source(self, ctx: TaskContext) -> str:
        path = ctx.transfer.local_filepath
        if not path:
            raise self.fail("the transfer has no local file")
        try:
            await asyncio.to_thread(_fsops.require_file, path, ctx.rule_folder)
        except TaskError as error:
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None
        return path

    async def _rewrite(self, ctx: TaskContext, source: str, dest: str, overwrite: bool) -> None:
        """Write `transform(source)` to `dest` atomically; follow the size if in place."""
        in_place, tag = dest == source, ctx.temp_tag

        def write(out: BinaryIO) -> None:
            with _fsops.open_input(source, ctx.rule_folder) as data:
                self.transform(data, out)
            if in_place:
                _mark_rewritten(out.fileno(), tag)

        try:
            if in_place and ctx.rerun and await asyncio.to_thread(_rewritten_by, source, tag):
                ctx.log.info(f"{self.type_name}: done before the restart, not run again")
                ctx.transfer.filesize = (await asyncio.to_thread(os.stat, source)).st_size
                return
            await asyncio.to_thread(
                _fsops.write_atomic,
                dest,
                write,
                overwrite=overwrite,
                mode_from=source,
                tag=ctx.temp_tag,
                rerun=ctx.rerun,
            )
            if dest == source:
                ctx.transfer.filesize = (await asyncio.to_thread(os.stat, dest)).st_size
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        except TaskError as error:
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None

    def transform(self, data: BinaryIO, out: BinaryIO) -> None:
        raise NotImplementedError


_REWRITTEN = "user.gatewayd.rewritten"


def _mark_rewritten(fd: int, tag: str | None) -> None:
    if tag is None:  # outside a transfer's chain: there is no rerun to tell
        return
    with contextlib.suppress(OSError):  # no user xattrs here: the rerun redoes the work
        os.setxattr(fd, _REWRITTEN, tag.encode())


def _rewritten_by(path: str, tag: str | None) -> bool:
    """Whether `path` is the file that the task of `tag` wrote in place."""
    if tag is None:
        return False
    try:
        return os.getxattr(path, _REWRITTEN, follow_symlinks=False) == tag.encode()
    except OSError:
        return False


# ----------------------------------------------------------------------------- TRANSCODE


def charset_problem(name: str) -> str | None:
    """Why `name` is not a usable text encoding, or None."""
    try:
        codecs.lookup(name)
        # Codecs such as base64 or rot13 exist but do not turn text into bytes.
        "".encode(name)
    except LookupError as error:
        return str(error)
    return None


@register
class Transcode(_InPlaceTask):
    """Re-encode the file from `fromCharset` to `toCharset` (Python codec names).

    Bytes that are not valid in `fromCharset`, or characters that `toCharset` cannot
    represent, fail the task and leave the file untouched.
    """

    type_name = "TRANSCODE"
    required_args: ClassVar[tuple[str, ...]] = ("fromCharset", "toCharset")
    optional_args: ClassVar[tuple[str, ...]] = ("outputPath", "overwrite")
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "fromCharset": Kind.TEXT,
        "toCharset": Kind.TEXT,
        "outputPath": Kind.TEXT,
        "overwrite": Kind.FLAG,
    }
    from_charset: str
    to_charset: str

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        for name in ("fromCharset", "toCharset"):
            value = args.get(name)
            if isinstance(value, str) and value and not has_markers(value):
                problem = charset_problem(value)
                if problem is not None:
                    problems.append(f"argument '{name}': {problem}")
        return problems

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        self.from_charset = self.text(args, "fromCharset")
        self.to_charset = self.text(args, "toCharset")
        for charset in (self.from_charset, self.to_charset):
            problem = charset_problem(charset)
            if problem is not None:
                raise self.fail(problem)
        source = await self._source(ctx)
        output = args.get("outputPath")
        if output is None:
            await self._rewrite(ctx, source, source, overwrite=True)
        else:
            dest = self.path(ctx, self.text(args, "outputPath"))
            await self._rewrite(ctx, source, dest, overwrite=self.flag(args, "overwrite"))
        ctx.log.info(f"TRANSCODE: {source} from {self.from_charset} to {self.to_charset}")

    def transform(self, data: BinaryIO, out: BinaryIO) -> None:
        decoder = codecs.getincrementaldecoder(self.from_charset)(errors="strict")
        encoder = codecs.getincrementalencoder(self.to_charset)(errors="strict")
        offset = 0
        try:
            while chunk := data.read(self.chunk_size):
                out.write(encoder.encode(decoder.decode(chunk)))
                offset += len(chunk)
            out.write(encoder.encode(decoder.decode(b"", final=True), final=True))
        except UnicodeDecodeError as error:
            # The decoder may hold a few bytes of the previous chunk: the offset is close.
            raise TaskError(
                f"not valid {self.from_charset} near byte {offset + error.start}: {error.reason}"
            ) from None
        except UnicodeEncodeError as error:
            character = error.object[error.start : error.end]
            raise TaskError(f"{character!r} cannot be written in {self.to_charset}") from None


# ----------------------------------------------------------------------------- CHNEWLINE

NEWLINES = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}


def newline_bytes(value: str) -> bytes:
    """The bytes for a newline name (LF, CRLF, CR, any case) or for literal text (UTF-8)."""
    return NEWLINES.get(value.upper(), value.encode("utf-8"))


class StreamReplacer:
    """Replace every `old` by `new` in a stream given in chunks of any size.

    Matches are found left to right without overlap, exactly as `bytes.replace` on the
    whole stream would, including a match split between two chunks.
    """

    def __init__(self, old: bytes, new: bytes) -> None:
        if not old:
            raise ValueError("nothing to replace")
        self.old = old
        self.new = new
        self._pending = b""

    def feed(self, chunk: bytes, final: bool = False) -> bytes:
        buffer = self._pending + chunk
        if final:
            self._pending = b""
            return buffer.replace(self.old, self.new)
        parts: list[bytes] = []
        position = 0
        while (found := buffer.find(self.old, position)) != -1:
            parts += [buffer[position:found], self.new]
            position = found + len(self.old)
        # Only the last len(old) - 1 bytes may begin a match that the next chunk completes.
        keep_from = max(position, len(buffer) - len(self.old) + 1)
        parts.append(buffer[position:keep_from])
        self._pending = buffer[keep_from:]
        return b"".join(parts)


@register
class ChNewline(_InPlaceTask):
    """Replace line endings `from` by `to` in the file.

    Each is a name (LF, CRLF, CR) or literal text; the replacement works on bytes, so it
    is meant for ASCII-compatible encodings (UTF-8, Latin-1, ...), not UTF-16.
    """

    type_name = "CHNEWLINE"
    required_args: ClassVar[tuple[str, ...]] = ("from", "to")
    arg_kinds: ClassVar[dict[str, Kind]] = {"from": Kind.TEXT, "to": Kind.TEXT}
    old: bytes
    new: bytes

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        old, new = args.get("from"), args.get("to")
        if (
            isinstance(old, str)
            and isinstance(new, str)
            and old
            and not has_markers(old + new)
            and newline_bytes(old) == newline_bytes(new)
        ):
            problems.append("arguments 'from' and 'to' are the same")
        return problems

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        self.old = newline_bytes(self.text(args, "from"))
        self.new = newline_bytes(self.text(args, "to"))
        source = await self._source(ctx)
        await self._rewrite(ctx, source, source, overwrite=True)
        ctx.log.info(f"CHNEWLINE: {source} from {self.old!r} to {self.new!r}")

    def transform(self, data: BinaryIO, out: BinaryIO) -> None:
        replacer = StreamReplacer(self.old, self.new)
        while chunk := data.read(self.chunk_size):
            out.write(replacer.feed(chunk))
        out.write(replacer.feed(b"", final=True))
