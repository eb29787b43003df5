"""One listing of a watched folder, off the event loop: what is there, what is excluded.

Links are never followed (neither to files nor to folders, nor on the way from the
rule's folder to the watched one); the gateway's own `.tmp`
folder is never entered. Globs match the file name, or the path below the watched
folder when they hold a '/'.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import NamedTuple

from gatewayd import safepath
from gatewayd.safepath import Beneath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Entry(NamedTuple):
    """A regular file: its path below the watched folder ('/' separated) and identity."""

    path: str
    inode: int
    size: int
    mtime_ns: int

    @property
    def ident(self) -> tuple[int, int, int]:
        return (self.inode, self.size, self.mtime_ns)


@dataclass
class Listing:
    entries: list[Entry] = field(default_factory=list)
    excluded: int = 0
    # Every regular file's path, excluded ones too (a taken file still there).
    present: set[str] = field(default_factory=set)


def matches(path: str, patterns: tuple[str, ...]) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatchcase(path if "/" in p else name, p) for p in patterns)


def list_folder(
    where: Beneath, *, recursive: bool, include: tuple[str, ...], exclude: tuple[str, ...]
) -> Listing:
    """The regular files of folder `where` (and below it when `recursive`), reached
    through no link (each folder opened from its parent's descriptor, as the transfers
    open their files). Raises OSError (LinkRefused for a link) when `where` itself
    cannot be read; a subfolder that cannot be is skipped."""
    listing = Listing()
    with safepath.folder(where) as fd:
        _walk(fd, "", listing, recursive, include, exclude)
    listing.entries.sort(key=lambda e: e.path)
    return listing


def _walk(
    fd: int,
    prefix: str,
    listing: Listing,
    recursive: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> None:
    with os.scandir(fd) as it:
        items = list(it)
    for item in items:
        rel = f"{prefix}{item.name}"
        try:
            st = item.stat(follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile
        if stat.S_ISDIR(st.st_mode):
            if recursive and item.name != ".tmp" and not matches(rel, exclude):
                try:
                    child = os.open(item.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # unreadable, or swapped for a link meanwhile
                try:
                    _walk(child, f"{rel}/", listing, recursive, include, exclude)
                finally:
                    os.close(child)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # links, sockets, fifos: never taken
        listing.present.add(rel)
        if not matches(rel, include) or matches(rel, exclude):
            listing.excluded += 1
            continue
        listing.entries.append(Entry(rel, st.st_ino, st.st_size, st.st_mtime_ns))
