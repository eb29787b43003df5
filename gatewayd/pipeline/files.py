"""File-system primitives of the pipeline: name checks, durable writes, atomic placing.

Everything here blocks; callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from gatewayd.errors import TransferError
from gatewayd.fsutil import fsync_dir, rename_noreplace
from gatewayd.model import ErrorCode
from gatewayd.names import check_name, escaped

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


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def os_error(
    exc: OSError, what: str, default: ErrorCode = ErrorCode.TeDataTransfer
) -> TransferError:
    """The transfer error an OSError means: a full disk or quota is TeBadSize."""
    if is_disk_full(exc):
        return TransferError(ErrorCode.TeBadSize, f"{what}: {exc.strerror} (disk full or quota)")
    if exc.errno == errno.ENOENT:
        return TransferError(ErrorCode.TeFileNotFound, f"{what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TransferError(ErrorCode.TeForbidden, f"{what}: {exc.strerror}")
    return TransferError(default, f"{what}: {exc.strerror or exc}")


def _candidates(final: Path) -> Iterator[Path]:
    """The name itself, then `name_1.ext`, `name_2.ext`, ... (made as needed)."""
    yield final
    stem, suffix = final.stem, final.suffix
    if final.name.startswith(".") and final.suffix == final.name:
        stem, suffix = final.name, ""
    for n in range(1, 1000):
        yield final.with_name(f"{stem}_{n}{suffix}")


def place(tmp: Path, final: Path, policy: CollisionPolicy) -> Path:
    """Move the complete file `tmp` to `final` atomically; returns where it landed.

    `rename` picks `name_1.ext`, `name_2.ext`... when the name is taken; `overwrite`
    replaces; `fail` raises TeFinalization. Without overwrite, the move never replaces a
    file that appeared under the name meanwhile. The destination folder is fsynced: one
    journal commit makes the new name durable (the temp name's removal rides along).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        if policy == "overwrite":
            os.replace(tmp, final)
            landed = final
        else:
            landed = _move_to_first_free(tmp, final, policy)
        fsync_dir(final.parent)
    except OSError as exc:
        raise os_error(exc, f"cannot place {final.name}", ErrorCode.TeFinalization) from exc
    return landed


def _move_to_first_free(tmp: Path, final: Path, policy: CollisionPolicy) -> Path:
    for candidate in _candidates(final) if policy == "rename" else [final]:
        try:
            rename_noreplace(tmp, candidate)
            return candidate
        except FileExistsError:
            continue
    if policy == "fail":
        raise TransferError(ErrorCode.TeFinalization, f"{final.name} already exists")
    raise TransferError(ErrorCode.TeFinalization, f"no free name left for {final.name}")


def inside(root: Path, path: Path) -> bool:
    """Whether `path` (resolved, symlinks followed) stays under `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
