"""Blocking file operations of the tasks, meant to run in a worker thread.

Every new file is written under a temporary name in its destination folder, fsynced, then
published under its final name, and the folder fsynced: a reader never sees half a file,
and a crash leaves at worst a hidden `.<name>.<tag>.tmp` file. A task of a transfer gives
the tag of its place in the transfer's chains (`TaskContext.temp_tag`): the rerun of that
task after the crash uses the same name and removes the leftover before writing, so a
crash leaves nothing behind once the transfer has gone on. Publishing refuses to replace
an existing file unless asked to, without a window between the check and the rename (a
hard link fails atomically when the name exists).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from gatewayd import crashpoints, safepath
from gatewayd.errors import TaskError
from gatewayd.fsutil import fsync_dir, rename_noreplace
from gatewayd.model import ErrorCode
from gatewayd.safepath import Beneath, LinkRefused, NotAFile

CHUNK = 1 << 20


class ExistsError(TaskError):
    """The destination exists and the task may not replace it."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} already exists (set 'overwrite: true' to replace it)")
        self.path = path


def os_error_text(error: OSError) -> str:
    """A short message naming the file, without the `[Errno n]` noise."""
    text = error.strerror or str(error)
    if error.filename is not None:
        text = f"{text}: {error.filename}"
    if error.filename2 is not None:
        text = f"{text} -> {error.filename2}"
    return text


def _beneath(path: str, root: str | None) -> Beneath:
    return Beneath.of(Path(root) if root else Path(os.path.abspath(path)).parent, path)


def require_file(path: str, root: str | None = None) -> os.stat_result:
    """The stat of the regular file `path`, reached from the folder `root` (the rule's)
    through no symbolic link, nor being one; TaskError otherwise (TeFileNotFound, or
    TeForbidden for a link)."""
    try:
        info = safepath.lstat(_beneath(path, root))
    except LinkRefused as error:
        raise TaskError(f"{path}: {error.message}", ErrorCode.TeForbidden) from None
    if info is None:
        raise TaskError(f"file not found: {path}", ErrorCode.TeFileNotFound)
    if stat.S_ISLNK(info.st_mode):
        raise TaskError(f"{path} is a symbolic link: refused", ErrorCode.TeForbidden)
    if not stat.S_ISREG(info.st_mode):
        raise TaskError(f"not a regular file: {path}", ErrorCode.TeFileNotFound)
    return info


def open_input(path: str, root: str | None = None) -> BinaryIO:
    """The regular file `path` open for reading, with the guarantees of `require_file`
    (there is no window between that check and this open: the open itself refuses)."""
    try:
        fd = safepath.open_file(_beneath(path, root), os.O_RDONLY)
    except LinkRefused as error:
        raise TaskError(f"{path}: {error.message}", ErrorCode.TeForbidden) from None
    except NotAFile:
        raise TaskError(f"not a regular file: {path}", ErrorCode.TeFileNotFound) from None
    return os.fdopen(fd, "rb")


def make_dirs(path: str) -> None:
    """Create folder `path` and its missing parents; refuse a file in the way."""
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        raise TaskError(f"not a folder: {path}") from None


def temp_name(dest: str, tag: str | None = None) -> str:
    """A hidden name next to `dest`, short enough for any file system: the same for the
    same `tag` (a task's place in its transfer), else a fresh random one."""
    folder, name = os.path.split(dest)
    return os.path.join(folder, f".{name[:200]}.{tag or secrets.token_hex(6)}.tmp")


def drop_leftover(path: str) -> None:
    """Remove what an interrupted run left under the temporary name `path`.

    Removed, not truncated and reused: whatever the name is now (a link planted by
    someone with access to the folder, a second name of another file), unlinking it
    changes no other file, and the new file is then created exclusively."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def publish(temp: str, dest: str, *, overwrite: bool) -> None:
    """Give the complete file `temp` its final name `dest` (same folder, durable)."""
    if overwrite:
        os.replace(temp, dest)
    else:
        try:
            rename_noreplace(temp, dest)
        except FileExistsError:
            raise ExistsError(dest) from None
    fsync_dir(os.path.dirname(dest) or ".")


@contextlib.contextmanager
def _removed_on_error(path: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def write_atomic(
    dest: str,
    write: Callable[[BinaryIO], None],
    *,
    overwrite: bool,
    mode_from: str | None = None,
    tag: str | None = None,
    rerun: bool = False,
) -> None:
    """Create `dest` with what `write` writes into an open file, atomically.

    Missing parent folders are created. `mode_from` copies the permission bits of
    another file (by default the new file gets the usual umask-based mode). With `tag`
    the temporary name is the tag's (see `temp_name`), and a leftover under it is
    removed first. With `rerun` (the task may have run before), an existing `dest`
    that holds exactly what would be written is taken as the task's own earlier output,
    not as a conflict: a crash after publishing and before the row recorded the task
    done does not fail its rerun.
    """
    make_dirs(os.path.dirname(dest) or ".")
    temp = temp_name(dest, tag)
    if tag is not None:
        drop_leftover(temp)  # even when the task then fails: nothing is left behind
    if not overwrite and not rerun and os.path.lexists(dest):
        # Fail before doing the work; publish() checks again, atomically.
        raise ExistsError(dest)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    with _removed_on_error(temp):
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        if mode_from is not None:
            shutil.copymode(mode_from, temp)
        crashpoints.reached(crashpoints.TASK_OUTPUT)
        if not overwrite and rerun and same_content(temp, dest):
            os.unlink(temp)
            return
        publish(temp, dest, overwrite=overwrite)
    crashpoints.reached(crashpoints.TASK_PUBLISHED)


def same_content(path: str, other: str) -> bool:
    """Whether the regular file `other` (not a link) holds exactly the bytes of `path`."""
    try:
        fd = os.open(other, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # missing, a link, unreadable: not the same
        return False
    with os.fdopen(fd, "rb") as theirs, open(path, "rb") as ours:
        info = os.fstat(theirs.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != os.fstat(ours.fileno()).st_size:
            return False
        while chunk := ours.read(CHUNK):
            if theirs.read(len(chunk)) != chunk:
                return False
    return True


def copy_atomic(
    src: str,
    dest: str,
    *,
    overwrite: bool,
    root: str | None = None,
    tag: str | None = None,
    rerun: bool = False,
) -> None:
    """Copy the content and permission bits of file `src` (reached from `root` through
    no link) to `dest`, atomically."""

    def write(out: BinaryIO) -> None:
        with open_input(src, root) as source:
            shutil.copyfileobj(source, out, CHUNK)

    write_atomic(dest, write, overwrite=overwrite, mode_from=src, tag=tag, rerun=rerun)


def move(
    src: str,
    dest: str,
    *,
    overwrite: bool,
    root: str | None = None,
    tag: str | None = None,
    rerun: bool = False,
) -> None:
    """Move file `src` to `dest` (any file system), creating missing folders."""
    make_dirs(os.path.dirname(dest) or ".")
    try:
        if overwrite:
            os.replace(src, dest)
        else:
            try:
                os.link(src, dest, follow_symlinks=False)
            except FileExistsError:
                # `dest` already a second name of `src`: a move cut between its link and
                # its unlink (a crash) is finished, not refused.
                if not _same_file(src, dest):
                    raise ExistsError(dest) from None
            os.unlink(src)
    except OSError as error:
        if error.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # Another file system (or no hard links): copy, then remove the original.
        copy_atomic(src, dest, overwrite=overwrite, root=root, tag=tag, rerun=rerun)
        os.unlink(src)
    fsync_dir(os.path.dirname(dest) or ".")
    fsync_dir(os.path.dirname(src) or ".")


def _same_file(path: str, other: str) -> bool:
    """Whether two names (neither followed if a link) name the same file."""
    try:
        a, b = os.lstat(path), os.lstat(other)
    except OSError:
        return False
    return stat.S_ISREG(a.st_mode) and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
