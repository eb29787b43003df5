"""What an OpenPGP key file holds, as GnuPG reads it (`gpg --show-keys --with-colons`).

The configuration's `keys:` name key files; `inspect_key_file` reads one (in a throwaway
GnuPG home, so nothing is imported anywhere) into a `KeyInfo`: fingerprint, user ids,
creation and expiry, whether it holds a secret key and what it can do (encrypt, sign).
Blocking: it runs a program and waits; the loader calls it (before the event loop, or in
a thread on reload).
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# A key expiring within this many days is a warning of check-config (and a metric).
EXPIRY_WARNING_DAYS = 30
_INSPECT_TIMEOUT = 20.0
# Read the keys of the input and list them, importing nothing.
_SHOW = ("--import-options", "show-only", "--import")


@dataclass(frozen=True)
class SubKey:
    """The primary key or one of its subkeys."""

    fingerprint: str
    capabilities: str  # lower-case letters of gpg: e (encrypt), s (sign), c, a
    created: datetime
    expires: datetime | None
    revoked: bool = False

    def usable(self, capability: str, now: datetime) -> bool:
        return (
            capability in self.capabilities
            and not self.revoked
            and (self.expires is None or self.expires > now)
        )


@dataclass(frozen=True)
class KeyInfo:
    """One OpenPGP key (a primary key and its subkeys) as read from its file."""

    fingerprint: str  # of the primary key, 40 upper-case hex digits
    user_ids: tuple[str, ...]
    secret: bool  # the file holds the secret key
    primary: SubKey
    subkeys: tuple[SubKey, ...] = field(default=())

    @property
    def created(self) -> datetime:
        return self.primary.created

    @property
    def expires(self) -> datetime | None:
        return self.primary.expires

    @property
    def key_id(self) -> str:
        return self.fingerprint[-16:]

    def all_keys(self) -> tuple[SubKey, ...]:
        return (self.primary, *self.subkeys)

    def ids(self) -> set[str]:
        """Every fingerprint and long key id of the key and its subkeys."""
        found: set[str] = set()
        for key in self.all_keys():
            found |= {key.fingerprint, key.fingerprint[-16:]}
        return found

    def can(self, capability: str, now: datetime) -> bool:
        """Whether the primary key is valid and some (sub)key can `e`ncrypt or `s`ign."""
        if self.primary.revoked or (self.expires is not None and self.expires <= now):
            return False
        return any(key.usable(capability, now) for key in self.all_keys())

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires <= now


class KeyFileError(Exception):
    """The file cannot be read as exactly one OpenPGP key."""


def _time(text: str) -> datetime | None:
    if not text:
        return None
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    return datetime.fromisoformat(text).astimezone(UTC)  # ISO form with --fixed-list-mode


def parse_colons(text: str) -> list[KeyInfo]:
    """The keys of `gpg --with-colons` listing output (pub/sec, sub/ssb, fpr, uid)."""
    keys: list[KeyInfo] = []
    primary: dict[str, str] | None = None
    subs: list[dict[str, str]] = []
    uids: list[str] = []
    current: dict[str, str] | None = None

    def flush() -> None:
        if primary is None:
            return
        keys.append(
            KeyInfo(
                fingerprint=primary["fpr"],
                user_ids=tuple(uids),
                secret=primary["type"] == "sec",
                primary=_subkey(primary),
                subkeys=tuple(_subkey(s) for s in subs),
            )
        )

    for line in text.splitlines():
        fields = line.split(":")
        kind = fields[0]
        if kind in ("pub", "sec"):
            flush()
            primary = _record(fields)
            current, subs, uids = primary, [], []
        elif kind in ("sub", "ssb") and primary is not None:
            current = _record(fields)
            subs.append(current)
        elif kind == "fpr" and current is not None and "fpr" not in current:
            current["fpr"] = fields[9]
        elif kind == "uid" and primary is not None:
            uids.append(fields[9])
    flush()
    return keys


def _record(fields: list[str]) -> dict[str, str]:
    fields = fields + [""] * 12
    return {
        "type": fields[0],
        "validity": fields[1],
        "created": fields[5],
        "expires": fields[6],
        "caps": fields[11],
    }


def _subkey(record: dict[str, str]) -> SubKey:
    created = _time(record["created"]) or datetime.fromtimestamp(0, UTC)
    return SubKey(
        fingerprint=record.get("fpr", ""),
        capabilities="".join(c for c in record["caps"] if c.islower()),
        created=created,
        expires=_time(record["expires"]),
        revoked=record["validity"] == "r",
    )


def inspect_key_file(path: Path, gpg: str = "gpg") -> KeyInfo:
    """The one key in file `path`; KeyFileError when it holds none or several."""
    try:
        with path.open("rb") as f:
            data = f.read(1 << 20)  # a key file is small: anything larger is not one
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if not data:
        raise KeyFileError(f"{path} is empty")
    with tempfile.TemporaryDirectory(prefix="gatewayd-gpg-") as home:
        try:
            result = subprocess.run(
                [gpg, "--homedir", home, "--batch", "--no-tty", "--with-colons", *_SHOW],
                input=data,
                capture_output=True,
                timeout=_INSPECT_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise KeyFileError(f"cannot read OpenPGP keys: program {gpg!r} not found") from None
        except subprocess.TimeoutExpired:
            raise KeyFileError(
                f"gpg took more than {_INSPECT_TIMEOUT:.0f} s to read {path}"
            ) from None
    keys = parse_colons(result.stdout.decode("utf-8", "replace"))
    if not keys:
        raise KeyFileError(f"{path} holds no OpenPGP key")
    if len(keys) > 1:
        raise KeyFileError(f"{path} holds {len(keys)} keys: one key per file")
    return keys[0]
