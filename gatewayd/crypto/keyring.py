"""The gateway's own GnuPG keyring, built from the configuration's `keys:`.

The configuration is the source of truth: at start and on each reload, a fresh GnuPG
home is made under `<state>/gpg/<node>/` and every configured key imported into it; only then
does it replace the one in use (a reload that fails keeps the previous keyring). A key
removed from the configuration is thus gone from the keyring at once. Runs in flight
keep the home they started with; a replaced home is removed (and its gpg-agent stopped)
when its last run ends.

Private keys are checked at load: each must sign with its passphrase, so that a wrong
passphrase is reported when the gateway starts, not by the first transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from gatewayd.config.paths import absolute
from gatewayd.config.schema import KeyConfig
from gatewayd.crypto.gpg import GpgResult, GpgUnavailable, base_args, run_gpg
from gatewayd.crypto.keys import KeyInfo

log = structlog.get_logger("gatewayd.crypto")

_LOAD_TIMEOUT = 60.0


class KeyringError(Exception):
    """A key cannot be imported or unlocked: the message names it."""


@dataclass(frozen=True)
class Key:
    """A configured key as the tasks use it. `passphrase` is never shown."""

    name: str
    kind: str  # public | private
    info: KeyInfo
    passphrase: str | None = field(default=None, repr=False)


@dataclass
class Ring:
    """One GnuPG home and the keys imported into it."""

    home: Path
    keys: dict[str, Key]
    users: int = 0
    retired: bool = False

    def by_id(self, key_id: str) -> Key | None:
        """The configured key that has this fingerprint or key id (of any subkey)."""
        wanted = key_id.upper()
        return next((k for k in self.keys.values() if wanted in k.info.ids()), None)


def read_passphrase(config: KeyConfig, home: Path) -> str:
    """The passphrase of a private key from its file (first line) or its variable."""
    if config.passphrase_env is not None:
        value = os.environ.get(config.passphrase_env)
        if not value:
            raise KeyringError(f"environment variable {config.passphrase_env} is not set")
        return value
    assert config.passphrase_file is not None
    path = absolute(config.passphrase_file, home)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringError(f"cannot read the passphrase file {path}: {exc}") from None
    value = text.splitlines()[0] if text else ""
    if not value:
        raise KeyringError(f"the passphrase file {path} is empty")
    return value


class Keyring:
    """The keyring in use, swapped whole by `load`."""

    def __init__(self, state_dir: Path, node: str = "", program: str = "gpg") -> None:
        # Nodes may share a state folder: each has a folder of its own (a short name:
        # the agent's socket path must stay within the 108 bytes of a Unix socket).
        self.root = (
            state_dir / "gpg" / (hashlib.sha256(node.encode()).hexdigest()[:8] if node else "0")
        )
        self.program = program
        self.current: Ring | None = None
        self._generation = 0
        self._lock = asyncio.Lock()

    def keys(self) -> dict[str, Key]:
        return dict(self.current.keys) if self.current is not None else {}

    async def load(
        self, configs: Mapping[str, KeyConfig], infos: Mapping[str, KeyInfo], home: Path
    ) -> None:
        """Build a new keyring of `configs` (their files read as `infos` by the loader)
        and put it in use; KeyringError (the old keyring kept) when a key fails."""
        async with self._lock:
            if self.current is None:
                await self._clear_leftovers()
            self._generation += 1
            ring_home = self.root / str(self._generation)
            await asyncio.to_thread(_fresh_folder, ring_home)
            try:
                keys = await self._import_all(ring_home, configs, infos, home)
            except BaseException:
                await self._remove(ring_home)
                raise
            old, self.current = self.current, Ring(ring_home, keys)
            log.info("keyring loaded", keys=len(keys), home=str(ring_home))
            if old is not None:
                old.retired = True
                if old.users == 0:
                    await self._remove(old.home)

    async def _import_all(
        self,
        ring_home: Path,
        configs: Mapping[str, KeyConfig],
        infos: Mapping[str, KeyInfo],
        home: Path,
    ) -> dict[str, Key]:
        keys: dict[str, Key] = {}
        for name, config in configs.items():
            info = infos.get(name)
            if info is None:
                raise KeyringError(f"key '{name}': its file was not read")
            path = absolute(config.file, home)
            passphrase = None
            if config.kind == "private":
                try:
                    passphrase = await asyncio.to_thread(read_passphrase, config, home)
                except KeyringError as exc:
                    raise KeyringError(f"key '{name}': {exc}") from None
            await self._import(ring_home, name, path)
            key = Key(name, config.kind, info, passphrase)
            if passphrase is not None:
                await self._check_unlocks(ring_home, key)
            keys[name] = key
        return keys

    async def _import(self, ring_home: Path, name: str, path: Path) -> None:
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            result = await self._gpg(ring_home, ["--import"], stdin=fd)
        finally:
            os.close(fd)
        if result.returncode != 0 or not result.has("IMPORT_OK"):
            raise KeyringError(f"key '{name}': gpg cannot import {path}: {result.message()}")

    async def _check_unlocks(self, ring_home: Path, key: Key) -> None:
        """Sign nothing with the key: proves the passphrase before any transfer needs it."""
        result = await self._gpg(
            ring_home,
            ["--local-user", f"{key.info.fingerprint}!", "--detach-sign"],
            passphrase=key.passphrase,
        )
        if result.returncode == 0 and result.has("SIG_CREATED"):
            return
        if result.bad_passphrase() or result.has("MISSING_PASSPHRASE"):
            raise KeyringError(f"key '{key.name}': wrong passphrase")
        raise KeyringError(f"key '{key.name}': cannot sign with it: {result.message()}")

    async def _gpg(
        self,
        ring_home: Path,
        args: list[str],
        *,
        stdin: int | None = None,
        passphrase: str | None = None,
    ) -> GpgResult:
        try:
            return await run_gpg(
                self.program,
                [*base_args(ring_home), *args],
                stdin=stdin,
                passphrase=passphrase,
                timeout=_LOAD_TIMEOUT,
            )
        except GpgUnavailable as exc:
            raise KeyringError(f"cannot use OpenPGP keys: {exc}") from None
        except TimeoutError:
            raise KeyringError(f"gpg took more than {_LOAD_TIMEOUT:.0f} s") from None

    @contextlib.asynccontextmanager
    async def using(self) -> AsyncIterator[Ring]:
        """The keyring in use, kept (not removed by a reload) until the block ends."""
        ring = self.current
        if ring is None:
            raise KeyringError("no OpenPGP keys are configured")
        ring.users += 1
        try:
            yield ring
        finally:
            ring.users -= 1
            if ring.retired and ring.users == 0:
                await self._remove(ring.home)

    async def close(self) -> None:
        """Stop the keyring's gpg-agent and remove its home (the gateway stops)."""
        async with self._lock:
            ring, self.current = self.current, None
            if ring is not None:
                await self._remove(ring.home)

    async def _remove(self, ring_home: Path) -> None:
        await self._kill_agent(ring_home)
        await asyncio.to_thread(shutil.rmtree, ring_home, True)

    async def _kill_agent(self, ring_home: Path) -> None:
        # Asked even when no socket is in the home: with /run/user/<uid>/gnupg, gpg keeps
        # the agent's sockets there. gpgconf starts no agent to stop one.
        with contextlib.suppress(OSError):
            process = await asyncio.create_subprocess_exec(
                "gpgconf",
                "--homedir",
                str(ring_home),
                "--kill",
                "gpg-agent",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()

    async def _clear_leftovers(self) -> None:
        """Homes a previous process left (it was killed): their agents stopped, removed."""
        names = await asyncio.to_thread(_list_folder, self.root)
        for name in names:
            await self._remove(self.root / name)


# The agent re-protects each imported private key with an iteration count it calibrates
# (100 ms of hashing by default, seconds on a busy machine), then pays it again on every
# use: every file signed or decrypted. The passphrase sits next to the keyring anyway
# (its file, or the daemon's environment), so a slow derivation protects little here.
# Nothing cached: each run unlocks its key with the passphrase it gives, so what a task
# does never depends on what an earlier one unlocked.
_AGENT_CONF = "s2k-calibration 10\ndefault-cache-ttl 0\nmax-cache-ttl 0\n"


def _fresh_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    path.parent.chmod(0o700)
    (path / "gpg-agent.conf").write_text(_AGENT_CONF)


def _list_folder(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
