"""File-system primitives of the pipeline: name checks, durable writes, atomic placing.

Everything here blocks; callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from gatewayd import safepath
from gatewayd.errors import TransferError, os_error
from gatewayd.fsutil import rename_noreplace
from gatewayd.model import ErrorCode
from gatewayd.names import check_name, escaped
from gatewayd.safepath import Beneath

CollisionPolicy = Literal["rename", "overwrite", "fail"]


def valid_name(name: str) -> str:
    """`name`, or TransferError(TeForbidden) explaining why it is refused (the name
    shown escaped: it may hold characters that act on a terminal)."""
    problem = check_name(name)
    if problem:
        raise TransferError(
            ErrorCode.TeForbidden, f"file name '{escaped(name)}' refused: {problem}"
        )
    return name


def _candidates(final: Beneath) -> Iterator[Beneath]:
    """The name itself, then `name_1.ext`, `name_2.ext`, ... (made as needed)."""
    yield final
    path = Path(final.name)
    stem, suffix = path.stem, path.suffix
    if final.name.startswith(".") and path.suffix == final.name:
        stem, suffix = final.name, ""
    parent = final.parent()
    for n in range(1, 1000):
        yield parent.child(f"{stem}_{n}{suffix}")


# errno values of a file system without hard links: placing falls back to a rename.
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV)


def _placing_name(tmp: Beneath) -> str:
    return f".{tmp.name}.placing"


def place(tmp: Beneath, final: Beneath, policy: CollisionPolicy) -> Beneath:
    """Give the complete file `tmp` its final name atomically; returns where it landed.

    `rename` picks `name_1.ext`, `name_2.ext`... when the name is taken; `overwrite`
    replaces; `fail` raises TeFinalization. Without overwrite, a file that appeared
    under the name meanwhile is never replaced. No link is followed on either path, and
    the destination folder is fsynced.

    The final name is a hard link: the temp name stays, a second name of the same file,
    until the caller has recorded where the file landed and calls `drop_temp`. A crash
    in between thus leaves evidence (`find_placed`) instead of a file nobody knows about.
    On file systems without hard links the file is renamed instead.
    """
    try:
        with (
            safepath.folder(tmp.parent()) as src_fd,
            safepath.folder(final.parent(), create=True) as dst_fd,
        ):
            if policy == "overwrite":
                landed = _overwrite(tmp, final, src_fd, dst_fd)
            else:
                landed = _link_first_free(tmp, final, src_fd, dst_fd, policy)
            os.fsync(dst_fd)
    except OSError as exc:
        raise os_error(exc, f"cannot place {final.name}", ErrorCode.TeFinalization) from exc
    return landed


def _link(tmp: Beneath, name: str, src_fd: int, dst_fd: int) -> bool:
    """Link `tmp` as `name` (False: no hard links here, it was renamed instead)."""
    try:
        os.link(tmp.name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno not in _NO_LINKS:
            raise
        rename_noreplace(tmp.name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return False
    return True


def _overwrite(tmp: Beneath, final: Beneath, src_fd: int, dst_fd: int) -> Beneath:
    placing = _placing_name(tmp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(placing, dir_fd=dst_fd)  # an earlier attempt's
    _link(tmp, placing, src_fd, dst_fd)
    os.rename(placing, final.name, src_dir_fd=dst_fd, dst_dir_fd=dst_fd)
    return final


def _link_first_free(
    tmp: Beneath, final: Beneath, src_fd: int, dst_fd: int, policy: CollisionPolicy
) -> Beneath:
    for candidate in _candidates(final) if policy == "rename" else [final]:
        try:
            _link(tmp, candidate.name, src_fd, dst_fd)
            return candidate
        except FileExistsError:
            continue
    if policy == "fail":
        raise TransferError(ErrorCode.TeFinalization, f"{final.name} already exists")
    raise TransferError(ErrorCode.TeFinalization, f"no free name left for {final.name}")


def drop_temp(tmp: Beneath) -> bool:
    """Remove the temp name of a placed file, once where it landed is recorded. Only a
    second name is removed (a temp file that is the only name of its data is kept);
    True when it was removed."""
    info = safepath.lstat(tmp)
    if info is None or not stat.S_ISREG(info.st_mode) or info.st_nlink < 2:
        return False
    return safepath.unlink(tmp)


def find_placed(tmp: Beneath, final: Beneath, policy: CollisionPolicy) -> Beneath | None:
    """Where a crash left a file that `place` had placed before the placing could be
    recorded: the final name (or `name_N`) that is another link to the temp file, or
    None when the temp file was never placed. An overwrite interrupted between its two
    steps is finished here."""
    info = safepath.lstat(tmp)
    if info is None or not stat.S_ISREG(info.st_mode) or info.st_nlink < 2:
        return None
    same = (info.st_dev, info.st_ino)

    def is_it(where: Beneath) -> bool:
        st = safepath.regular_file(where)
        return st is not None and (st.st_dev, st.st_ino) == same

    if policy == "overwrite":
        placing = final.parent().child(_placing_name(tmp))
        if is_it(placing):
            safepath.rename(placing, final, replace=True)
            safepath.fsync_folder(final.parent())
        return final if is_it(final) else None
    for candidate in _candidates(final) if policy == "rename" else [final]:
        if is_it(candidate):
            return candidate
    return None


def set_times(where: Beneath, times: tuple[float, float]) -> None:
    """Set (atime, mtime) of the file `where` itself (never through a link)."""
    with safepath.folder(where.parent()) as dir_fd:
        os.utime(where.name, times, dir_fd=dir_fd, follow_symlinks=False)
