"""Pointing a transfer at another file (MOVE, RENAME, EXECMOVE, EXECOUTPUT, ...)."""

from __future__ import annotations

import asyncio
import os
import posixpath

from gatewayd.tasks._fsops import require_file
from gatewayd.tasks.base import TaskContext


def follow(ctx: TaskContext, new_path: str) -> None:
    """Make the transfer follow its file to `new_path`.

    For a send, the name given to the partner follows too (as in Waarp: a pre task that
    renames the file renames what the partner gets); for a receive, `remote_filepath`
    keeps the name the file was sent under.
    """
    transfer = ctx.transfer
    old_name = os.path.basename(transfer.local_filepath)
    transfer.local_filepath = new_path
    new_name = os.path.basename(new_path)
    if transfer.is_send and transfer.remote_filepath and new_name != old_name:
        transfer.remote_filepath = posixpath.join(
            posixpath.dirname(transfer.remote_filepath), new_name
        )


async def retarget(ctx: TaskContext, new_path: str) -> None:
    """Point the transfer at the existing file `new_path` and record its size."""
    info = await asyncio.to_thread(require_file, new_path, ctx.rule_folder)
    follow(ctx, new_path)
    ctx.transfer.filesize = info.st_size
