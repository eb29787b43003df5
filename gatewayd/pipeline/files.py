"""File-system primitives of the pipeline: name checks, durable writes, atomic placing.

Everything here blocks; callers run it in a worker thread.
"""

from __future__ import annotations

import os
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


def place(tmp: Beneath, final: Beneath, policy: CollisionPolicy) -> Beneath:
    """Move the complete file `tmp` to `final` atomically; returns where it landed.

    `rename` picks `name_1.ext`, `name_2.ext`... when the name is taken; `overwrite`
    replaces; `fail` raises TeFinalization. Without overwrite, the move never replaces a
    file that appeared under the name meanwhile. No link is followed on either path.
    The destination folder is fsynced: one journal commit makes the new name durable
    (the temp name's removal rides along).
    """
    try:
        with (
            safepath.folder(tmp.parent()) as src_fd,
            safepath.folder(final.parent(), create=True) as dst_fd,
        ):
            if policy == "overwrite":
                os.rename(tmp.name, final.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                landed = final
            else:
                landed = _move_to_first_free(tmp.name, src_fd, final, dst_fd, policy)
            os.fsync(dst_fd)
    except OSError as exc:
        raise os_error(exc, f"cannot place {final.name}", ErrorCode.TeFinalization) from exc
    return landed


def _move_to_first_free(
    name: str, src_fd: int, final: Beneath, dst_fd: int, policy: CollisionPolicy
) -> Beneath:
    for candidate in _candidates(final) if policy == "rename" else [final]:
        try:
            rename_noreplace(name, candidate.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            return candidate
        except FileExistsError:
            continue
    if policy == "fail":
        raise TransferError(ErrorCode.TeFinalization, f"{final.name} already exists")
    raise TransferError(ErrorCode.TeFinalization, f"no free name left for {final.name}")
