"""Temp names that a crash left beside placed files of finished transfers.

A received file is placed by a hard link from its temp name, and the temp name goes
once the row records where the file landed. When a transfer has no post task, one
commit records the placing and DONE together (`Run._record_placed`), and the temp name
goes right after it: a crash in between leaves the temp name as a second name of a
DONE transfer's file. Nothing would ever look at it again, and it would keep the
file's blocks in use after the file itself is deleted downstream.

So at start, before any partner can connect, every receive rule's temp folder is swept:
a regular file with more than one name that no unfinished transfer owns is such a
leftover, and its temp name is removed (the placed name is untouched). A temp file with
one name is never removed: it is the only copy of its bytes. On a database shared by
several nodes, other nodes may be placing files at this very moment (a name placed but
not yet recorded has two names too): there only names whose last change is older than
`grace` seconds are taken.

On a database of one node (SQLite), a partner's open is answered before its new row is
committed (`Store.insert_soon`): a crash in between may leave a temp file that no row
names, whose bytes were never recorded as durable and that no partner can resume. With
`unrecorded`, such files (a temp name of ours, `<32 hex digits>.part`, one name, named
by no unfinished transfer) are removed too. A shared database commits every row before
the open is answered: there an unnamed temp file is never taken for one.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gatewayd import safepath
from gatewayd.safepath import Beneath

if TYPE_CHECKING:
    from gatewayd.config import LoadedConfig
    from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.pipeline")

# The temp names the core gives (a transfer's remote id, a uuid4 in hex).
_TEMP_NAME = re.compile(r"[0-9a-f]{32}\.part")


async def sweep_placed_temps(
    loaded: LoadedConfig, store: Store, *, grace: float = 0.0, unrecorded: bool = False
) -> int:
    """Remove the leftover temp names of finished transfers (and, with `unrecorded`,
    the temp files of transfers never recorded); how many were removed."""
    in_use = await store.temp_paths_in_use()
    folders = [
        loaded.paths.rule_tmp_folder(rule)
        for rule in loaded.config.rules.values()
        if rule.direction == "receive"
    ]
    removed = await asyncio.to_thread(_sweep, folders, in_use, time.time() - grace, unrecorded)
    if removed:
        log.info("temp names of finished or unrecorded transfers removed", count=removed)
    return removed


def _sweep(folders: list[Path], in_use: set[str], changed_before: float, unrecorded: bool) -> int:
    # By name: temp names are unique (the transfer's remote id), whatever spelling of
    # the folder's path a row holds.
    names_in_use = {os.path.basename(path) for path in in_use}
    removed = 0
    for folder in dict.fromkeys(folders):
        where = Beneath.of(folder.parent, folder)
        for name, info in safepath.list_files(where):
            if (
                name in names_in_use
                or not stat.S_ISREG(info.st_mode)
                or info.st_ctime >= changed_before
            ):
                continue
            if info.st_nlink < 2 and not (unrecorded and _TEMP_NAME.fullmatch(name)):
                continue
            if safepath.unlink(where.child(name)):
                removed += 1
    return removed
