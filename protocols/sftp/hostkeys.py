"""Host keys of our SFTP servers: loaded from their files, generated when missing.

A generated key is written with mode 0600 under a temporary name, fsynced, then renamed
into place without replacing (`create_exclusive`), so a crash never leaves half a key
and of several nodes starting at once on a shared state folder the first one's key is
every node's; its public half goes next to it (`<name>.pub`) for partners to pin.
The type comes from the file name (`*rsa*` makes an RSA key, for old clients; anything
else an Ed25519 key).
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import asyncssh
import structlog

from gatewayd.fsutil import create_exclusive

log = structlog.get_logger("gatewayd.sftp")

DEFAULT_NAMES = ("ssh_host_ed25519_key", "ssh_host_rsa_key")
RSA_BITS = 3072


def default_paths(state_dir: Path, server_name: str) -> list[Path]:
    folder = state_dir / "sftp" / server_name
    return [folder / name for name in DEFAULT_NAMES]


def _algorithm(path: Path) -> str:
    return "ssh-rsa" if "rsa" in path.name.lower() else "ssh-ed25519"


def load_or_create(path: Path) -> asyncssh.SSHKey:
    """The private key in `path`, generated first when the file does not exist.
    Blocking (RSA generation takes a while): run it in a thread.

    Several nodes may share the state folder and start at once: each generates a key,
    the first to put it in place wins and the others load that one, so that every node
    presents the same host key."""
    if not path.exists():
        _generate(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("host key readable by others: chmod 600 it", path=str(path), mode=oct(mode))
    key = asyncssh.read_private_key(path)
    public = path.with_name(path.name + ".pub")
    if not public.exists():
        # Made after the private key: the node that made that one may have died since.
        create_exclusive(public, key.export_public_key("openssh"), 0o644)
    return key


def _generate(path: Path) -> None:
    algorithm = _algorithm(path)
    key = (
        asyncssh.generate_private_key(algorithm, key_size=RSA_BITS)
        if algorithm == "ssh-rsa"
        else asyncssh.generate_private_key(algorithm)
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if create_exclusive(path, key.export_private_key("openssh"), 0o600):
        log.info("host key generated", path=str(path), fingerprint=key.get_fingerprint("sha256"))


async def load_host_keys(paths: list[Path]) -> list[asyncssh.SSHKey]:
    """Every key of `paths`, in order, generating the missing ones."""
    keys = []
    for path in paths:
        try:
            keys.append(await asyncio.to_thread(load_or_create, path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise RuntimeError(f"cannot use host key {path}: {exc}") from exc
    return keys
