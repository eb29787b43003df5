"""What the files of a rule's folder are, for requests that name them before any
transfer runs (the admin API, R66's `/v2`, Tapis's `/v3` folder elements).

The same rules as the pipeline's: nothing below the rule folder is reached through a
symbolic link, and the gateway's own folder (`.tmp`) is not a file of the rule.
"""

from __future__ import annotations

import asyncio
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd import safepath
from gatewayd.errors import TransferError
from gatewayd.names import RESERVED
from gatewayd.safepath import Beneath


@dataclass(frozen=True)
class Listing:
    """The regular files of a file or folder of a rule: (path relative to what was
    named, size); `skipped` are the links left out; `error` says why nothing could be
    listed."""

    files: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


def _problem(where: Beneath) -> str | None:
    try:
        info = safepath.lstat(where)
    except TransferError as exc:
        return exc.message
    except OSError as exc:
        return exc.strerror or str(exc)
    if info is None:
        return "no such file"
    if stat.S_ISLNK(info.st_mode):
        return f"{where.shown()} is a symbolic link: refused"
    if not stat.S_ISREG(info.st_mode):
        return f"{where.shown()} is not a regular file"
    return None


async def send_problem(rule_folder: Path, path: str) -> str | None:
    """Why the file `path` (absolute, normally below `rule_folder`) cannot be sent
    (missing, a link, not a regular file), or None."""
    return await asyncio.to_thread(_problem, Beneath.of(rule_folder, path))


def _list(rule_folder: Path, relative: str, cap: int) -> Listing:
    parts = tuple(p for p in relative.split("/") if p not in ("", "."))
    if parts and parts[0] in RESERVED:
        return Listing(error="no such file or folder")
    where = Beneath(rule_folder, parts)
    try:
        info = safepath.lstat(where)
    except TransferError as exc:
        return Listing(error=exc.message)
    if info is None:
        return Listing(error="no such file or folder")
    if stat.S_ISLNK(info.st_mode):
        return Listing(error=f"{where.shown()} is a symbolic link: refused")
    if stat.S_ISREG(info.st_mode):
        return Listing(files=[("", info.st_size)])
    if not stat.S_ISDIR(info.st_mode):
        return Listing(error=f"{where.shown()} is not a regular file or folder")
    # The rule's own temp folder is not one of its files.
    found, skipped = safepath.walk_files(where, cap, exclude=RESERVED if not parts else ())
    files = [("/".join(item.parts[len(parts) :]), st.st_size) for item, st in found]
    return Listing(files=files, skipped=skipped)


async def list_files(rule_folder: Path, relative: str, cap: int) -> Listing:
    """Every regular file of the file or folder `relative` of a rule (recursively, sorted,
    at most `cap + 1` so that the caller can report the excess); links are skipped and
    reported, never followed."""
    return await asyncio.to_thread(_list, rule_folder, relative, cap)
