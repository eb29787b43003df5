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
