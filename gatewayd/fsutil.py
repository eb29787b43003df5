"""File-system primitives shared by the pipeline and the tasks (blocking: call them from
a worker thread)."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any

StrPath = str | os.PathLike[str]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_renameat2: Any = None


def fsync_dir(path: StrPath) -> None:
    """Make the names in folder `path` durable (a rename, a creation, a removal)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename_noreplace(
    src: StrPath,
    dst: StrPath,
    *,
    src_dir_fd: int | None = None,
    dst_dir_fd: int | None = None,
) -> None:
    """Rename that raises FileExistsError instead of replacing `dst` (each name relative
    to its folder descriptor when one is given).

    Linux's renameat2(RENAME_NOREPLACE) does it in one atomic step. Where it is missing
    (old kernel or libc, some file systems) a hard link then an unlink gives the same
    guarantee; on file systems without hard links, a check then a rename is the best
    they allow.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
    src_at = _AT_FDCWD if src_dir_fd is None else src_dir_fd
    dst_at = _AT_FDCWD if dst_dir_fd is None else dst_dir_fd
    if _renameat2:
        if _renameat2(src_at, os.fsencode(src), dst_at, os.fsencode(dst),
                      _RENAME_NOREPLACE) == 0:  # fmt: skip
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), os.fsdecode(dst))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), os.fsdecode(dst))
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        try:
            os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        else:
            raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(dst)) from None
    else:
        os.unlink(src, dir_fd=src_dir_fd)


def create_exclusive(path: StrPath, data: bytes, mode: int) -> bool:
    """Write `data` as the new file `path` unless it exists: False when another writer
    (another node on a shared folder) made it first, whose file then stands.

    The data is written and fsynced under a name of this process's own, then renamed
    without replacing: a reader of `path` never sees a partial file, and of two writers
    racing exactly one wins (the loser reads the winner's file).
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        rename_noreplace(tmp, target)
    except FileExistsError:
        return False
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    fsync_dir(folder or ".")
    return True
