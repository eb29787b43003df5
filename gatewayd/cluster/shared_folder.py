"""The check that every node sees the same data folder.

A transfer a node took over resumes from the bytes the dead node left in the data and
tmp folders (a rule's tmp folder is inside its folder, inside the data folder unless
the rule names another): a node that does not see them would start again from nothing,
or worse, find a partner's resumed upload short. So at start each node writes a marker
file, `<data_dir>/.gatewayd-nodes/<node>`, holding a random token it also records in its
`nodes` row, and reads the markers of the other live nodes in its own data folder: one
that is missing or holds another token means this node's folder is not theirs, and it
refuses to start. Blocking file functions: call them from a worker thread.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from gatewayd.fsutil import fsync_dir
from gatewayd.names import NODE_MARKERS

MARKERS = NODE_MARKERS


class NotShared(Exception):
    """This node's data folder is not the other nodes': the message says whose."""


def new_token() -> str:
    return secrets.token_hex(16)


def marker_path(data_dir: Path, node: str) -> Path:
    return data_dir / MARKERS / node


def write_marker(data_dir: Path, node: str, token: str) -> Path:
    """Write `token` as `node`'s marker, atomically and durably (a temporary file
    fsynced, renamed over the old marker, the folder fsynced): another node reading it
    over NFS sees the old token or the new one, never part of one."""
    folder = data_dir / MARKERS
    folder.mkdir(mode=0o750, exist_ok=True)
    target = folder / node
    temporary = folder / f".{node}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, f"{token}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, target)
    fsync_dir(folder)
    return target


def remove_marker(data_dir: Path, node: str, token: str) -> None:
    """Remove `node`'s marker if it still holds `token` (a start that was refused)."""
    path = marker_path(data_dir, node)
    try:
        if path.read_text(encoding="ascii").strip() == token:
            path.unlink()
    except (OSError, UnicodeDecodeError):
        pass


def check_markers(data_dir: Path, node: str, others: Iterable[tuple[str, str]]) -> None:
    """Raise `NotShared` unless every `(name, token)` of `others` (the other live nodes)
    has its marker, with its token, in this node's `data_dir`."""
    for name, token in others:
        path = marker_path(data_dir, name)
        try:
            found = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            problem = f"{path} is missing"
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"cannot read {path}: {exc}"
        else:
            if found == token:
                continue
            problem = f"{path} holds another token than the one node {name} wrote"
        raise NotShared(
            f"node {node} does not see the data folder of node {name}: {problem}; the data "
            f"and tmp folders must be on storage every node shares (daemon.data_dir is "
            f"{data_dir} here)"
        )


def outside(data_dir: Path, folders: dict[str, Path]) -> dict[str, Path]:
    """Those of `folders` (rule name -> folder) that are not inside `data_dir`: the
    markers do not cover them."""
    return {
        name: folder
        for name, folder in sorted(folders.items())
        if not folder.is_relative_to(data_dir)
    }
