"""Archives: ARCHIVE (make a zip or tar) and EXTRACT (unpack one, safely).

ARCHIVE `files` is a list, or a comma-separated string, of paths and glob patterns
(`**` matches any depth; markers substituted in each); folders are archived with their
whole tree, each entry under its base name. `outputPath` ends with `.zip`, `.tar`,
`.tar.gz`/`.tgz`, `.tar.bz2`/`.tbz2` or `.tar.xz`/`.txz`, which chooses the format.

EXTRACT `archive` (default: the transfer's file) is unpacked into `outputDir`. The
format comes from the extension, else from the content. Nothing is written outside
`outputDir`: an archive with an absolute name, a `..` that climbs out, a link pointing
outside, a device or a fifo is refused as a whole (tar: the standard library's `data`
filter plus a check for absolute names; zip: our own checks, and zip symbolic links are
refused). Members are unpacked into a hidden folder inside `outputDir`, fsynced, then
each file is renamed into place.

Both refuse to replace existing files unless `overwrite` is true. The transfer keeps
pointing at its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from typing import Any, BinaryIO, ClassVar

from gatewayd.errors import TaskError
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import has_markers, substitute, substitute_args

_TAR_COMPRESSIONS = {
    ".tar": "",
    ".tar.gz": "gz",
    ".tgz": "gz",
    ".tar.bz2": "bz2",
    ".tbz2": "bz2",
    ".tar.xz": "xz",
    ".txz": "xz",
}
EXTENSIONS = (".zip", *_TAR_COMPRESSIONS)


def archive_format(path: str) -> tuple[str, str] | None:
    """("zip", "") or ("tar", compression) from the extension of `path`; None if unknown."""
    lowered = path.lower()
    if lowered.endswith(".zip"):
        return "zip", ""
    for extension in sorted(_TAR_COMPRESSIONS, key=len, reverse=True):
        if lowered.endswith(extension):
            return "tar", _TAR_COMPRESSIONS[extension]
    return None


# ------------------------------------------------------------------------------- ARCHIVE


def _entries(roots: list[str], exclude: set[str]) -> list[tuple[str, str]]:
    """(path, name in the archive) of every root and everything below, parents first."""
    entries: list[tuple[str, str]] = []
    for root in roots:
        base = os.path.basename(root.rstrip(os.sep)) or root
        entries.append((root, base))
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for folder, dirnames, filenames in os.walk(root):
            dirnames.sort()
            prefix = os.path.join(base, os.path.relpath(folder, root))
            for name in sorted(dirnames + filenames):
                path = os.path.join(folder, name)
                if os.path.realpath(path) not in exclude:
                    entries.append((path, os.path.normpath(os.path.join(prefix, name))))
    return entries


def _write_archive(
    out: BinaryIO, kind: str, compression: str, entries: list[tuple[str, str]]
) -> None:
    if kind == "zip":
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path, name in entries:
                archive.write(path, name)
    else:
        mode = f"w:{compression}" if compression else "w"
        # typeshed wants the mode as a literal; it is one of those it lists.
        with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
            for path, name in entries:
                tar.add(path, name, recursive=False)


def _make_archive(roots: list[str], output: str, overwrite: bool, tag: str | None) -> int:
    found = archive_format(output)
    if found is None:
        raise TaskError(f"unknown archive type for {output} (use one of {', '.join(EXTENSIONS)})")
    kind, compression = found
    if tag is not None:
        # Before listing: the leftover of a crashed run of this task is no entry.
        _fsops.drop_leftover(_fsops.temp_name(output, tag))
    entries = _entries(roots, exclude={os.path.realpath(output)})
    names = [name for _, name in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TaskError(f"several files would be archived as {duplicates[0]!r}")
    _fsops.write_atomic(
        output,
        lambda out: _write_archive(out, kind, compression, entries),
        overwrite=overwrite,
        tag=tag,
    )
    return len(entries)


@register
class Archive(ArgsTask):
    """Archive `files` (paths and globs) into `outputPath` (.zip, .tar, .tar.gz, ...)."""

    type_name = "ARCHIVE"
    required_args: ClassVar[tuple[str, ...]] = ("files", "outputPath")
    optional_args: ClassVar[tuple[str, ...]] = ("overwrite",)
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "files": Kind.TEXT_LIST,
        "outputPath": Kind.TEXT,
        "overwrite": Kind.FLAG,
    }

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        output = args.get("outputPath")
        # A name that ends with a marker is only known at run time.
        if (
            isinstance(output, str)
            and archive_format(output) is None
            and not (has_markers(output) and output.endswith("#"))
        ):
            problems.append(f"argument 'outputPath' must end with one of {', '.join(EXTENSIONS)}")
        if args.get("files") in ("", []):
            problems.append("argument 'files' names no file")
        return problems

    def _patterns(self, ctx: TaskContext) -> list[str]:
        raw = self.args.get("files")
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise self.fail(f"argument 'files' must be {Kind.TEXT_LIST.value}")
        # Split before substituting, so that a file name with a comma stays whole.
        patterns = [substitute(str(item).strip(), ctx) for item in items if str(item).strip()]
        if not patterns:
            raise self.fail("argument 'files' names no file")
        return [self.path(ctx, pattern) for pattern in patterns]

    async def run(self, ctx: TaskContext) -> None:
        patterns = self._patterns(ctx)
        args = substitute_args(self.args, ctx)
        output = self.path(ctx, self.text(args, "outputPath"))
        overwrite = self.flag(args, "overwrite")
        try:
            count = await asyncio.to_thread(
                self._archive, patterns, output, overwrite, ctx.temp_tag
            )
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        except (tarfile.TarError, zipfile.BadZipFile, ValueError) as error:
            raise self.fail(str(error)) from error
        except TaskError as error:
            raise TaskError(f"ARCHIVE: {error.message}", error.code) from None
        ctx.log.info(f"ARCHIVE: {count} entries written to {output}")

    @staticmethod
    def _archive(patterns: list[str], output: str, overwrite: bool, tag: str | None) -> int:
        roots: list[str] = []
        for pattern in patterns:
            if glob.escape(pattern) != pattern:
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    raise TaskError(f"no file matches {pattern}")
                roots.extend(matches)
            elif os.path.lexists(pattern):
                roots.append(pattern)
            else:
                raise TaskError(f"file not found: {pattern}")
        return _make_archive(roots, output, overwrite, tag)


# ------------------------------------------------------------------------------- EXTRACT

_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise TaskError(f"member {name!r} has an absolute path")
    if ".." in parts:
        raise TaskError(f"member {name!r} climbs out of the output folder")
    if "\0" in name:
        raise TaskError(f"member {name!r} has a NUL in its name")
    # Only zips made on Unix carry a file type; others have none (0): plain files.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise TaskError(f"member {name!r} is not a regular file or folder")


def _extract_zip(archive: BinaryIO, into: str) -> None:
    root = os.path.realpath(into)
    with zipfile.ZipFile(archive) as source:
        members = source.infolist()
        for info in members:
            _check_zip_member(info)
        for info in members:
            target = os.path.realpath(os.path.join(root, info.filename))
            if os.path.commonpath([root, target]) != root:
                raise TaskError(f"member {info.filename!r} climbs out of the output folder")
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                raise TaskError(f"member {info.filename!r} appears twice") from None
            with source.open(info) as data, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(data, out, _fsops.CHUNK)


def _refusal(member: tarfile.TarInfo, error: tarfile.FilterError) -> TaskError:
    # The library's messages name the staging folder, which would confuse: say it plainly.
    reasons: list[tuple[type[tarfile.FilterError], str]] = [
        (tarfile.AbsolutePathError, "has an absolute path"),
        (tarfile.OutsideDestinationError, "climbs out of the output folder"),
        (tarfile.AbsoluteLinkError, "is a link to an absolute path"),
        (tarfile.LinkOutsideDestinationError, "links outside the output folder"),
        (tarfile.SpecialFileError, "is a special file (device or fifo)"),
    ]
    reason = next((text for kind, text in reasons if isinstance(error, kind)), str(error))
    return TaskError(f"member {member.name!r} {reason}")


def _extract_tar(archive: BinaryIO, into: str) -> None:
    with tarfile.open(fileobj=archive, mode="r:*") as source:
        members = source.getmembers()
        for member in members:
            if member.name.startswith("/"):
                raise TaskError(f"member {member.name!r} has an absolute path")
            try:
                tarfile.data_filter(member, into)
            except tarfile.FilterError as error:
                raise _refusal(member, error) from None
        try:
            # Checked again while extracting: links made by earlier members count now.
            # (extractall, not extract per member: it sets folder modes last, so that a
            # read-only folder can still receive its files.)
            source.extractall(into, members=members, filter="data")
        except tarfile.FilterError as error:
            raise _refusal(error.tarinfo, error) from None


def _sync_tree(root: str) -> None:
    for folder, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _publish_tree(staging: str, output: str, overwrite: bool) -> int:
    """Move everything from `staging` to the same place under `output`."""
    folders: list[str] = []
    files: list[str] = []
    for folder, dirnames, filenames in os.walk(staging):
        relative = os.path.relpath(folder, staging)
        folders += [os.path.normpath(os.path.join(relative, name)) for name in sorted(dirnames)]
        files += [os.path.normpath(os.path.join(relative, name)) for name in sorted(filenames)]
    # Find every conflict before moving anything.
    for relative in folders:
        target = os.path.join(output, relative)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise TaskError(f"{target} exists and is not a folder")
    if not overwrite:
        for relative in files:
            if os.path.lexists(os.path.join(output, relative)):
                raise _fsops.ExistsError(os.path.join(output, relative))
    for relative in folders:
        os.makedirs(os.path.join(output, relative), exist_ok=True)
    for relative in files:
        _fsops.publish(
            os.path.join(staging, relative), os.path.join(output, relative), overwrite=overwrite
        )
    return len(files)


def _staging(output: str, tag: str | None) -> str:
    """The hidden folder members are unpacked into: named after the task's place in its
    transfer when it has one, so that a rerun after a crash first removes the leftover."""
    if tag is None:
        return tempfile.mkdtemp(prefix=".extract-", dir=output)
    staging = os.path.join(output, f".extract-{tag}")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(staging)
    os.mkdir(staging, 0o700)
    return staging


def _extract(archive: str, output: str, overwrite: bool, root: str, tag: str | None) -> int:
    # Opened once, through no link: what is checked is what is read.
    with _fsops.open_input(archive, root) as data:
        found = archive_format(archive)
        if found is None:
            if zipfile.is_zipfile(data):
                found = ("zip", "")
            else:
                data.seek(0)
                if not _is_tar(data):
                    raise TaskError(f"{archive} is neither a zip nor a tar archive")
                found = ("tar", "")
        data.seek(0)
        _fsops.make_dirs(output)
        staging = _staging(output, tag)
        try:
            if found[0] == "zip":
                _extract_zip(data, staging)
            else:
                _extract_tar(data, staging)
            _sync_tree(staging)
            return _publish_tree(staging, output, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _is_tar(data: BinaryIO) -> bool:
    try:
        with tarfile.open(fileobj=data, mode="r:*"):
            return True
    except tarfile.TarError:
        return False


@register
class Extract(ArgsTask):
    """Unpack `archive` (default: the transfer's file) into folder `outputDir`."""

    type_name = "EXTRACT"
    required_args: ClassVar[tuple[str, ...]] = ("outputDir",)
    optional_args: ClassVar[tuple[str, ...]] = ("archive", "overwrite")
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "archive": Kind.TEXT,
        "outputDir": Kind.TEXT,
        "overwrite": Kind.FLAG,
    }

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        archive = self.path(ctx, self.text(args, "archive", ctx.transfer.local_filepath or None))
        output = self.path(ctx, self.text(args, "outputDir"))
        try:
            count = await asyncio.to_thread(
                _extract,
                archive,
                output,
                self.flag(args, "overwrite"),
                ctx.rule_folder,
                ctx.temp_tag,
            )
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        except (tarfile.TarError, zipfile.BadZipFile, RuntimeError, EOFError) as error:
            raise self.fail(f"cannot read {archive}: {error}") from error
        except TaskError as error:
            raise TaskError(f"EXTRACT: {archive}: {error.message}", error.code) from None
        ctx.log.info(f"EXTRACT: {count} files from {archive} into {output}")
