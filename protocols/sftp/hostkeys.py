"""Host keys of our SFTP servers: loaded from their files, generated when missing.

A generated key is written with mode 0600 under a temporary name, fsynced, then renamed
into place, so a crash never leaves half a key; its public half goes next to it
(`<name>.pub`) for partners to pin. The type comes from the file name (`*rsa*` makes
an RSA key, for old clients; anything else an Ed25519 key).
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import asyncssh
import structlog

from gatewayd.fsutil import fsync_dir

log = structlog.get_logger("gatewayd.sftp")

DEFAULT_NAMES = ("ssh_host_ed25519_key", "ssh_host_rsa_key")
RSA_BITS = 3072


def default_paths(state_dir: Path, server_name: str) -> list[Path]:
    folder = state_dir / "sftp" / server_name
    return [folder / name for name in DEFAULT_NAMES]


def _algorithm(path: Path) -> str:
    return "ssh-rsa" if "rsa" in path.name.lower() else "ssh-ed25519"


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create(path: Path) -> asyncssh.SSHKey:
    """The private key in `path`, generated first when the file does not exist.
    Blocking (RSA generation takes a while): run it in a thread."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("host key readable by others: chmod 600 it", path=str(path), mode=oct(mode))
        return asyncssh.read_private_key(path)
    algorithm = _algorithm(path)
    key = (
        asyncssh.generate_private_key(algorithm, key_size=RSA_BITS)
        if algorithm == "ssh-rsa"
        else asyncssh.generate_private_key(algorithm)
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(path, key.export_private_key("openssh"), 0o600)
    public = key.export_public_key("openssh")
    _write_private(path.with_name(path.name + ".pub"), public, 0o644)
    fsync_dir(path.parent)
    log.info(
        "host key generated",
        path=str(path),
        fingerprint=key.get_fingerprint("sha256"),
    )
    return key


async def load_host_keys(paths: list[Path]) -> list[asyncssh.SSHKey]:
    """Every key of `paths`, in order, generating the missing ones."""
    keys = []
    for path in paths:
        try:
            keys.append(await asyncio.to_thread(load_or_create, path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise RuntimeError(f"cannot use host key {path}: {exc}") from exc
    return keys
