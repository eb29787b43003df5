"""The `keys:` of gatewayd.yaml and the rules' OpenPGP tasks that name them.

Each key file is read (gatewayd.crypto.keys) and checked against its entry: a file
missing or holding no key, a private key declared public or the reverse, an expired
key, a passphrase that cannot be read are errors at the entry's line; a key expiring
within 30 days is a warning. Each OpenPGP task of a rule must name configured keys fit
for what it does (encrypt for a key that can encrypt, sign with one of our private keys
that can sign), and DECRYPT needs a private key: errors at the task's line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gatewayd.config.paths import absolute
from gatewayd.config.problems import Problem
from gatewayd.config.schema import KeyConfig
from gatewayd.config.task_lists import RULE_CHAINS, listed_tasks
from gatewayd.config.yamlsource import DataPath, YamlSource
from gatewayd.crypto.keys import EXPIRY_WARNING_DAYS, KeyFileError, KeyInfo, inspect_key_file
from gatewayd.tasks.base import task_class
from gatewayd.tasks.pgp import NEED_ENCRYPT, NEED_SIGN, PgpTask


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def check_keys(
    source: YamlSource, keys: Mapping[str, KeyConfig], home: Path, now: datetime | None = None
) -> tuple[dict[str, KeyInfo], list[Problem], list[Problem]]:
    """(what each key file holds, problems, warnings) of the `keys:` section."""
    now = now or datetime.now(UTC)
    infos: dict[str, KeyInfo] = {}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    for name, config in keys.items():
        at = ("keys", name)
        path = absolute(config.file, home)
        try:
            info = inspect_key_file(path)
        except KeyFileError as exc:
            problems.append(source.problem((*at, "file"), f"key '{name}': {exc}"))
            continue
        if config.kind == "private" and not info.secret:
            problems.append(
                source.problem(
                    (*at, "kind"),
                    f"key '{name}': {path} holds only a public key, not a private one",
                )
            )
        if config.kind == "public" and info.secret:
            problems.append(
                source.problem(
                    (*at, "kind"),
                    f"key '{name}': {path} holds a secret key: declare it 'kind: private' "
                    "with its passphrase, or give the public key only",
                )
            )
        if info.expired(now):
            assert info.expires is not None
            problems.append(
                source.problem(
                    (*at, "file"),
                    f"key '{name}' ({info.fingerprint}) expired on {_day(info.expires)}",
                )
            )
        elif info.expires is not None and info.expires - now < timedelta(EXPIRY_WARNING_DAYS):
            days = (info.expires - now).total_seconds() / 86400
            warnings.append(
                source.problem(
                    (*at, "file"),
                    f"key '{name}' ({info.fingerprint}) expires on {_day(info.expires)}, "
                    f"in {days:.1f} days",
                )
            )
        problems += _passphrase_problems(source, name, config, home)
        infos[name] = info
    return infos, problems, warnings


def _passphrase_problems(
    source: YamlSource, name: str, config: KeyConfig, home: Path
) -> list[Problem]:
    at = ("keys", name)
    if config.passphrase_env is not None and not os.environ.get(config.passphrase_env):
        message = f"key '{name}': environment variable {config.passphrase_env} is not set"
        return [source.problem((*at, "passphrase_env"), message)]
    if config.passphrase_file is not None:
        path = absolute(config.passphrase_file, home)
        try:
            with path.open("rb") as f:
                first = f.readline().strip()
        except OSError as exc:
            message = f"key '{name}': cannot read the passphrase file {path}: {exc.strerror}"
            return [source.problem((*at, "passphrase_file"), message)]
        if not first:
            message = f"key '{name}': the passphrase file {path} is empty"
            return [source.problem((*at, "passphrase_file"), message)]
    return []


def valid_entries(raw: Any) -> dict[str, KeyConfig]:
    """The entries of a `keys:` section that are valid on their own (the schema reports
    the others): their files are checked even when another part of the file is wrong."""
    if not isinstance(raw, dict):
        return {}
    found: dict[str, KeyConfig] = {}
    for name, entry in raw.items():
        try:
            found[name] = KeyConfig.model_validate(entry)
        except ValidationError:
            continue
    return found


def check_key_references(
    source: YamlSource,
    keys: Mapping[str, KeyConfig],
    infos: Mapping[str, KeyInfo],
    now: datetime | None = None,
    declared: Iterable[str] = (),
    chains: Iterable[DataPath] = RULE_CHAINS,
) -> list[Problem]:
    """Problems of the OpenPGP tasks listed at each of `chains` of `source` (a rule's
    chains by default; `("daemon", "error_tasks")` in gatewayd.yaml) with the keys they
    name."""
    now = now or datetime.now(UTC)
    problems: list[Problem] = []
    for where, task in listed_tasks(source, chains):
        cls = task_class(task["type"])
        if cls is None or not issubclass(cls, PgpTask):
            continue
        args = task.get("args", {})
        if not isinstance(args, dict):
            continue
        problems += _task_problems(source, where, cls, args, keys, infos, now, set(declared))
    return problems


def _task_problems(
    source: YamlSource,
    at: DataPath,
    cls: type[PgpTask],
    args: dict[str, Any],
    keys: Mapping[str, KeyConfig],
    infos: Mapping[str, KeyInfo],
    now: datetime,
    declared: set[str],
) -> list[Problem]:
    problems: list[Problem] = []
    type_name = cls.type_name
    if cls.decrypt and not any(k.kind == "private" for k in keys.values()):
        message = f"{type_name}: no private key is configured ('keys:' in gatewayd.yaml)"
        problems.append(source.problem((*at, "type"), message))
    for arg, name, need in cls.key_references(args):
        where = (*at, "args", arg)
        config = keys.get(name)
        if config is None and name in declared:
            continue  # declared with a mistake, reported at the key
        if config is None:
            known = ", ".join(sorted(keys)) or "none"
            message = f"{type_name}: unknown key '{name}' (configured keys: {known})"
            problems.append(source.problem(where, message))
            continue
        info = infos.get(name)
        if info is None:
            continue  # its file is reported at the key
        if need == NEED_SIGN and config.kind != "private":
            message = f"{type_name}: key '{name}' is a public key: signing needs a private key"
            problems.append(source.problem(where, message))
        elif need == NEED_ENCRYPT and not info.can("e", now) and not info.expired(now):
            message = f"{type_name}: key '{name}' ({info.fingerprint}) cannot encrypt"
            problems.append(source.problem(where, message))
        elif need == NEED_SIGN and not info.can("s", now) and not info.expired(now):
            message = f"{type_name}: key '{name}' ({info.fingerprint}) cannot sign"
            problems.append(source.problem(where, message))
    return problems


def all_reference_problems(
    sources: Iterable[YamlSource],
    keys: Mapping[str, KeyConfig],
    infos: Mapping[str, KeyInfo],
    declared: Iterable[str] = (),
) -> list[Problem]:
    names = set(declared)
    return [p for source in sources for p in check_key_references(source, keys, infos, None, names)]
