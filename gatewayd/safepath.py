"""Paths beneath a folder, reached without following any symbolic link.

Every file the core opens, lists, walks or renames for a rule is named by a
`Beneath`: the rule's folder (`root`, opened as configured, links in the admin's own
path allowed) and the components below it. Each component is opened from its parent's
descriptor with `O_NOFOLLOW`, so a link anywhere below the root is refused, even one that
points back inside, and a link swapped in between a check and an open is refused too:
there is no check separate from the open.

Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from gatewayd.errors import TransferError
from gatewayd.fsutil import rename_noreplace
from gatewayd.model import ErrorCode

FOLDER_MODE = 0o750
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkRefused(TransferError):
    """A symbolic link on a path the gateway was asked to use (TeForbidden)."""

    def __init__(self, link: str) -> None:
        super().__init__(ErrorCode.TeForbidden, f"{link} is a symbolic link: refused")
        self.link = link


class NotAFile(TransferError):
    """The name is there but is not a regular file (a folder, a device, a FIFO)."""

    def __init__(self, name: str) -> None:
        super().__init__(ErrorCode.TeForbidden, f"{name} is not a regular file")


@dataclass(frozen=True)
class Beneath:
    """A path below a trusted folder: `root` and the components under it (none: the
    root itself)."""

    root: Path
    parts: tuple[str, ...] = ()

    @classmethod
    def of(cls, root: Path, path: Path | str) -> Beneath:
        """`path` as seen from `root` when it lies lexically below it; otherwise (a path
        the admin wrote elsewhere, e.g. after a MOVE task) from its own folder, so that
        at least its last component is never a link."""
        # String operations, not pathlib's: this runs several times for every file
        # a partner sends, and pathlib's parsing was a visible share of that.
        full, top = os.path.abspath(path), os.path.abspath(root)
        if full == top:
            return cls(_path(top))
        prefix = top if top.endswith(os.sep) else top + os.sep
        if full.startswith(prefix):
            return cls(_path(top), tuple(full[len(prefix) :].split(os.sep)))
        folder, name = os.path.split(full)
        return cls(Path(folder), (name,))

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else self.root.name

    def parent(self) -> Beneath:
        return Beneath(self.root, self.parts[:-1])

    def child(self, *names: str) -> Beneath:
        return Beneath(self.root, (*self.parts, *names))

    def shown(self, upto: int | None = None) -> str:
        """The path for a message: the components below the root."""
        parts = self.parts if upto is None else self.parts[:upto]
        return "/".join(parts) or "."


@functools.lru_cache(maxsize=256)
def _path(folder: str) -> Path:
    """The Path of a root folder: few of them, met again and again."""
    return Path(folder)


def _refusal(where: Beneath, index: int, dir_fd: int, exc: OSError) -> Exception:
    """Why component `index` could not be opened: a link (LinkRefused), or `exc`."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            mode = os.stat(where.parts[index], dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            return exc
        if stat.S_ISLNK(mode):
            return LinkRefused(where.shown(index + 1))
    return exc


def open_dir(where: Beneath, *, create: bool = False) -> int:
    """A descriptor of the folder `where` (the caller closes it). With `create`, missing
    folders are made (mode 0750). Raises LinkRefused, or OSError."""
    fd = os.open(where.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(where.parts):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, FOLDER_MODE, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _refusal(where, index, fd, exc) from None
            except OSError as exc:
                raise _refusal(where, index, fd, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder(where: Beneath, *, create: bool = False) -> Iterator[int]:
    """`open_dir` as a context manager."""
    fd = open_dir(where, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def open_file(
    where: Beneath, flags: int, mode: int = 0o640, *, create_parents: bool = False
) -> int:
    """Open the file `where` with `flags` (O_NOFOLLOW added): only a regular file is
    opened (a FIFO never blocks the caller). Raises LinkRefused, NotAFile, OSError."""
    if not where.parts:
        raise NotAFile(where.shown())
    with folder(where.parent(), create=create_parents) as dir_fd:
        try:
            fd = os.open(
                where.name,
                flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                mode,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise _refusal(where, len(where.parts) - 1, dir_fd, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFile(where.shown())
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat(where: Beneath) -> os.stat_result | None:
    """The status of `where` itself (None when missing); a link on the way is refused,
    a link as the last component is returned as a link (callers show it as nothing)."""
    if not where.parts:
        return os.stat(where.root)
    try:
        with folder(where.parent()) as dir_fd:
            return os.stat(where.name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def regular_file(where: Beneath) -> os.stat_result | None:
    """The status of the regular file `where`; None when missing or anything else (a
    link, a folder)."""
    try:
        info = lstat(where)
    except LinkRefused:
        return None
    return info if info is not None and stat.S_ISREG(info.st_mode) else None


def list_files(where: Beneath) -> list[tuple[str, os.stat_result]]:
    """The regular files directly in folder `where` (links, folders and hidden names
    left out); an empty list when the folder does not exist."""
    try:
        fd = open_dir(where)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append((entry.name, entry.stat(follow_symlinks=False)))
    finally:
        os.close(fd)
    return found


def walk_files(
    where: Beneath, limit: int, exclude: Collection[str] = ()
) -> tuple[list[tuple[Beneath, os.stat_result]], list[str]]:
    """Every regular file below folder `where` with its status, depth first, sorted;
    at most `limit + 1`
    (so a caller can tell "too many"); names in `exclude` are left out at the top.
    Links are not followed: they are returned apart, as the paths skipped."""
    found: list[tuple[Beneath, os.stat_result]] = []
    skipped: list[str] = []

    def walk(current: Beneath, fd: int) -> None:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        if current == where:
            entries = [e for e in entries if e.name not in exclude]
        for entry in entries:
            if len(found) > limit:
                return
            if entry.is_symlink():
                skipped.append(current.child(entry.name).shown())
            elif entry.is_dir(follow_symlinks=False):
                try:
                    child_fd = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    skipped.append(current.child(entry.name).shown())
                    continue
                try:
                    walk(current.child(entry.name), child_fd)
                finally:
                    os.close(child_fd)
            elif entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    found.append((current.child(entry.name), entry.stat(follow_symlinks=False)))

    with folder(where) as fd:
        walk(where, fd)
    return found, skipped


def rename(old: Beneath, new: Beneath, *, replace: bool = False) -> None:
    """Rename `old` to `new` (same root); never replaces an existing name unless
    `replace`. The new name's folder is created if missing. Raises FileExistsError,
    LinkRefused, OSError."""
    with folder(old.parent()) as src_fd, folder(new.parent(), create=True) as dst_fd:
        if replace:
            os.rename(old.name, new.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        else:
            rename_noreplace(old.name, new.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def unlink(where: Beneath) -> bool:
    """Remove the file `where` (a link is removed as itself); False when missing."""
    try:
        with folder(where.parent()) as dir_fd:
            os.unlink(where.name, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def fsync_folder(where: Beneath) -> None:
    """Make the names in folder `where` durable."""
    with folder(where) as fd:
        os.fsync(fd)
