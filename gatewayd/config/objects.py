"""Accounts, partners and API users kept one YAML file each in folders of their own
(`daemon.accounts_dir`, `daemon.partners_dir`, `daemon.api_users_dir`), besides those of
the main file: the admin API writes there, so that it never rewrites the admin's
commented gatewayd.yaml.

A file `<name>.yaml` holds one object: `name: <name>` and the fields it would have under
`accounts:`, `partners:` or `api.users:` of the main file. Every file is checked like
the main file (each mistake at its file and line); a name defined both in the main file
and in a folder is a mistake (reported at the folder's file, naming the main file's
line). A missing folder holds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gatewayd import ports as protocol_registry
from gatewayd.config.messages import describe_value, validate
from gatewayd.config.paths import absolute
from gatewayd.config.problems import Problem
from gatewayd.config.schema import (
    AccountConfig,
    AdminUserConfig,
    DaemonConfig,
    PartnerConfig,
    ServerConfig,
    name_problem,
)
from gatewayd.config.yamlsource import DataPath, YamlSource, read_yaml
from gatewayd.names import check_name

OBJECT_SUFFIXES = (".yaml", ".yml")
# How a partner's model is chosen: by its protocol (the loader's `_endpoint_model`).
ModelFor = Callable[[dict[Any, Any]], tuple[type[BaseModel] | None, str | None]]


@dataclass(frozen=True)
class Kind:
    """One kind of object kept in a folder."""

    key: str  # accounts, partners, users
    label: str  # how messages name one
    dir_field: str  # its folder's field in `daemon`
    main_path: DataPath  # where the main file keeps them


ACCOUNTS = Kind("accounts", "account", "accounts_dir", ("accounts",))
PARTNERS = Kind("partners", "partner", "partners_dir", ("partners",))
USERS = Kind("users", "API user", "api_users_dir", ("api", "users"))
KINDS = (ACCOUNTS, PARTNERS, USERS)


def kind_folder(kind: Kind, daemon: DaemonConfig, home: Path) -> Path:
    """The absolute folder of `kind`."""
    folder: Path = getattr(daemon, kind.dir_field)
    return absolute(folder, home)


@dataclass
class FolderObjects:
    """What the folders hold: valid objects by kind and name, the file of each, the
    names declared (even with mistakes: rules that name them are not told they are
    unknown), and the problems."""

    objects: dict[str, dict[str, Any]] = field(default_factory=lambda: {k.key: {} for k in KINDS})
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    declared: dict[str, set[str]] = field(default_factory=lambda: {k.key: set() for k in KINDS})
    sources: dict[tuple[str, str], YamlSource] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def object_files(folder: Path) -> list[Path]:
    """The object files of `folder`, in name order (hidden files are skipped)."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.suffix in OBJECT_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
    )


def _main_names(data: Mapping[Any, Any], path: DataPath) -> set[str]:
    value: Any = data
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return {n for n in value if isinstance(n, str)} if isinstance(value, dict) else set()


def check_object(
    kind: Kind, source: YamlSource, model_for: ModelFor, *, check_file_name: bool = True
) -> tuple[str | None, BaseModel | None, list[Problem]]:
    """One parsed object file: its name, its object (None with mistakes), its problems."""
    problems = list(source.problems)
    if not source.parsed:
        return None, None, problems
    data = source.data
    if not isinstance(data, dict):
        message = f"top level: expected a mapping, got {describe_value(data)}"
        return None, None, [*problems, source.problem((), message)]
    name = data.get("name")
    if not isinstance(name, str):
        message = "missing field 'name'" if name is None else "'name': expected a string"
        problems.append(source.problem(("name",) if "name" in data else (), message))
        name = None
    else:
        refused = check_name(name)
        if refused is not None:
            problems.append(source.problem(("name",), f"'name': {name_problem(refused)}"))
            name = None
        elif check_file_name and source.file.stem != name:
            problems.append(
                source.problem(
                    ("name",),
                    f"{kind.label} '{name}' must be in a file named {name}.yaml, "
                    f"not {source.file.name}",
                )
            )
    body = {k: v for k, v in data.items() if k != "name"}
    model: type[BaseModel] | None
    if kind is PARTNERS:
        model, error = model_for(body)
        if error is not None:
            problems.append(source.problem(("protocol",) if "protocol" in body else (), error))
    else:
        model = AccountConfig if kind is ACCOUNTS else AdminUserConfig
    obj = None
    if model is not None:
        obj, errors = validate(model, source, (), data=body)
        problems += errors
    return name, obj if not problems else None, problems


def load_objects(
    daemon: DaemonConfig,
    home: Path,
    main: YamlSource,
    main_data: Mapping[Any, Any],
    model_for: ModelFor,
) -> FolderObjects:
    """Read the three folders (blocking)."""
    found = FolderObjects()
    for kind in KINDS:
        folder = kind_folder(kind, daemon, home)
        if not folder.is_dir():
            continue
        try:
            files = object_files(folder)
        except OSError as exc:
            message = f"cannot read the {kind.key} folder {folder}: {exc.strerror}"
            found.problems.append(main.problem(("daemon", kind.dir_field), message))
            continue
        in_main = _main_names(main_data, kind.main_path)
        for file in files:
            source = read_yaml(file)
            name, obj, problems = check_object(kind, source, model_for)
            if name is not None:
                if name in in_main:
                    line = main.line((*kind.main_path, name))
                    problems.append(
                        source.problem(
                            ("name",),
                            f"{kind.label} '{name}' is also defined in {main.file}:{line}",
                        )
                    )
                    obj = None
                elif (kind.key, name) in found.sources:
                    other = found.sources[(kind.key, name)].file
                    problems.append(
                        source.problem(("name",), f"{kind.label} '{name}' is also in {other}")
                    )
                    obj = None
                found.declared[kind.key].add(name)
                found.sources.setdefault((kind.key, name), source)
            found.problems += problems
            if name is not None and obj is not None:
                found.objects[kind.key][name] = obj
                found.files[(kind.key, name)] = file
    return found


def protocol_problems(
    found: FolderObjects,
    servers: Mapping[str, ServerConfig],
    context: protocol_registry.CheckContext,
) -> list[Problem]:
    """The checks of each protocol (a partner's files, accounts' keys for SFTP...) on
    the folders' objects, at their own files' lines."""
    problems: list[Problem] = []
    partners: dict[str, PartnerConfig] = found.objects[PARTNERS.key]
    for name, partner in partners.items():
        spec = protocol_registry.get(partner.protocol)
        if spec is not None and spec.check_partner is not None:
            source = found.sources[(PARTNERS.key, name)]
            for at, message in spec.check_partner(name, partner, context):
                problems.append(source.problem(tuple(at), message))
    serving = {
        spec.name: spec
        for server in servers.values()
        if server.enabled and (spec := protocol_registry.get(server.protocol)) is not None
    }
    accounts: dict[str, AccountConfig] = found.objects[ACCOUNTS.key]
    for spec in serving.values():
        if spec.check_accounts is None:
            continue
        for at, message in spec.check_accounts(accounts):
            account, *rest = at
            source = found.sources[(ACCOUNTS.key, str(account))]
            problems.append(source.problem(tuple(rest), message))
    return problems
