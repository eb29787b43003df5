"""`check-config` for `sftp`: the keys the options name are read with asyncssh, the
library that will use them (imported only when an SFTP server or partner is configured).

Servers: each host key file holds a private key without a passphrase, or is missing and
can be generated. Partners: the private key file can be read (with its passphrase), the
pinned host keys parse. Accounts: their public keys parse (SFTP servers use them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import asyncssh

from gatewayd.config.files import FileError, read_bytes
from gatewayd.config.paths import folder_problem
from gatewayd.config.schema import AccountConfig, PartnerConfig, ServerConfig
from gatewayd.ports import CheckContext, FieldProblem
from protocols.sftp import hostkeys
from protocols.sftp.config import SftpPartnerConfig, SftpServerConfig


def host_key_problem(path: Path) -> str | None:
    """Why the host key file `path` cannot be used, or None (a missing file is fine
    when its folder can be created: the server generates it)."""
    if not path.exists() and not path.is_symlink():
        found = folder_problem(path.parent)
        if found is None:
            return None
        return f"host key {path} is missing and cannot be generated: {found[1]}"
    try:
        data = read_bytes(path)
    except FileError as exc:
        return f"host key: {exc.message}"
    try:
        asyncssh.import_private_key(data)
    except asyncssh.KeyImportError as exc:
        if "assphrase" in str(exc):
            return f"host key {path} is encrypted: a server's host key has no passphrase"
        return f"host key {path} is not a private key asyncssh can read ({exc})"
    return None


def check_server(name: str, config: ServerConfig, context: CheckContext) -> list[FieldProblem]:
    assert isinstance(config, SftpServerConfig)
    named: list[tuple[tuple[str | int, ...], Path]]
    if config.host_keys:
        named = [(("host_keys", index), path) for index, path in enumerate(config.host_keys)]
    else:  # the generated ones, once they exist: reported on the server's entry
        named = [((), path) for path in hostkeys.default_paths(context.state_dir, name)]
    problems: list[FieldProblem] = []
    for at, path in named:
        message = host_key_problem(path)
        if message is not None:
            problems.append((at, message))
    return problems


def check_partner(name: str, config: PartnerConfig, context: CheckContext) -> list[FieldProblem]:
    assert isinstance(config, SftpPartnerConfig)
    problems: list[FieldProblem] = []
    for index, line in enumerate(config.host_keys):
        try:
            asyncssh.import_public_key(line)
        except asyncssh.KeyImportError as exc:
            message = f"not an OpenSSH public key line ('ssh-ed25519 AAAA...'): {exc}"
            problems.append((("host_keys", index), message))
    if config.private_key is not None:
        problems += _private_key_problems(config.private_key, config.private_key_passphrase)
    return problems


def _private_key_problems(path: Path, passphrase: str | None) -> list[FieldProblem]:
    try:
        data = read_bytes(path)
    except FileError as exc:
        return [(("private_key",), exc.message)]
    try:
        asyncssh.import_private_key(data, passphrase)
    except asyncssh.KeyEncryptionError:
        return [(("private_key_passphrase",), f"this passphrase does not decrypt {path}")]
    except asyncssh.KeyImportError as exc:
        if passphrase is None and "assphrase" in str(exc):
            return [(("private_key",), f"{path} is encrypted: give 'private_key_passphrase'")]
        return [(("private_key",), f"{path} is not a private key asyncssh can read ({exc})")]
    return []


def check_accounts(accounts: Mapping[str, AccountConfig]) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    for name, account in accounts.items():
        for index, line in enumerate(account.public_keys):
            try:
                asyncssh.import_public_key(line)
            except asyncssh.KeyImportError as exc:
                problems.append(
                    (
                        (name, "public_keys", index),
                        f"not an OpenSSH public key line ('ssh-ed25519 AAAA...'): {exc}",
                    )
                )
    return problems
