"""Load `gatewayd.yaml` and the rules folder into typed objects, or report every mistake.

`load_config` collects all problems (YAML syntax, duplicate keys, schema errors, names
that cannot be file names, unknown protocols, task types and markers, rules that clash,
folders that cannot be created, files named that do not hold what they should) and
raises them together as a `ConfigError`, each pointing at a file and line. It is
synchronous: it runs before the event loop starts, and in a thread on SIGHUP.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

# `gatewayd.ports` imports the schema from this package: import the module (not names
# from it) so that either package may be imported first.
from gatewayd import ports as protocol_registry
from gatewayd.config.demo import demo_secret_warnings
from gatewayd.config.files import cert_and_key_problem, certificates_problem
from gatewayd.config.keys import (
    all_reference_problems,
    check_key_references,
    check_keys,
    valid_entries,
)
from gatewayd.config.messages import describe_value, field_name, validate
from gatewayd.config.objects import load_objects, protocol_problems
from gatewayd.config.outbound_refs import declared_names, unknown_server_names
from gatewayd.config.paths import Paths, absolute, create_folders, folder_problem
from gatewayd.config.pollers import PollerConfig, load_pollers
from gatewayd.config.problems import ConfigError, Problem, sort_problems
from gatewayd.config.rules import (
    CheckedRule,
    RuleKeys,
    RuleOrigin,
    check_rule,
    check_task_list,
    duplicate_problems,
    rule_files,
)
from gatewayd.config.schedules import ScheduleConfig, load_schedules
from gatewayd.config.schema import (
    Config,
    DaemonConfig,
    DatabaseConfig,
    PartnerConfig,
    RuleConfig,
    ServerConfig,
    name_problem,
)
from gatewayd.config.task_lists import RULE_CHAINS
from gatewayd.config.timezones import gateway_timezone
from gatewayd.config.watchers import WatcherConfig, check_watcher
from gatewayd.config.yamlfolder import Checked, by_name, yaml_files
from gatewayd.config.yamlsource import DataPath, YamlSource, describe_key, parse_yaml, read_yaml
from gatewayd.crypto.keys import KeyInfo
from gatewayd.names import check_name

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class LoadedConfig:
    """A valid configuration with its rules, resolved paths and time zone."""

    config: Config
    paths: Paths
    tz: tzinfo
    # Not mistakes, but worth saying (e.g. demo passwords in use).
    warnings: list[Problem] = field(default_factory=list)
    # Who still uses a demo password: "account 'demo'", "API user 'admin'".
    demo_secrets: tuple[str, ...] = ()
    rule_origins: dict[str, RuleOrigin] = field(default_factory=dict, repr=False)
    # The local folder watchers (gatewayd.config.watchers), by name.
    watchers: dict[str, WatcherConfig] = field(default_factory=dict)
    # The schedules of `daemon.schedules_dir` (gatewayd.config.schedules).
    schedules: dict[str, ScheduleConfig] = field(default_factory=dict)
    # The remote pollers of `daemon.pollers_dir` (gatewayd.config.pollers).
    pollers: dict[str, PollerConfig] = field(default_factory=dict)
    # What the files of `config.keys` hold (gatewayd.config.keys), by key name.
    key_infos: dict[str, KeyInfo] = field(default_factory=dict)
    # The file of each account, partner and API user kept in its folder, by (kind, name)
    # (gatewayd.config.objects); those of the main file are not here.
    object_files: dict[tuple[str, str], Path] = field(default_factory=dict)

    def rule_folder(self, rule: RuleConfig) -> Path:
        """The rule's local folder (its `folder`, or data_dir/<name>)."""
        return self.paths.rule_folder(rule)

    def rule_tmp_folder(self, rule: RuleConfig) -> Path:
        """`<rule folder>/.tmp`: incoming data before its atomic rename."""
        return self.paths.rule_tmp_folder(rule)

    def rule_file(self, name: str) -> Path:
        """Where rule `name` is (or would be) written: its file, or rules_dir/<name>.yaml."""
        rule = self.config.rules.get(name)
        if rule is not None and rule.source is not None:
            return rule.source
        return self.paths.rules_dir / f"{name}.yaml"

    def watcher_file(self, name: str) -> Path:
        """Where watcher `name` is (or would be) written."""
        watcher = self.watchers.get(name)
        if watcher is not None and watcher.source is not None:
            return watcher.source
        return self.paths.watchers_dir / f"{name}.yaml"


def load_config(path: Path | str) -> LoadedConfig:
    """Read and check `path` and the rules folder it names.

    Raises ConfigError with every problem found, sorted by file and line.
    """
    source = read_yaml(Path(path))
    problems = list(source.problems)
    if not source.parsed:
        raise ConfigError(problems)
    data = {} if source.data is None else source.data
    if not isinstance(data, dict):
        problems.append(
            source.problem((), f"top level: expected a mapping, got {describe_value(data)}")
        )
        raise ConfigError(problems)

    # Servers and partners are validated by the model of their protocol, not Config's.
    config, errors = validate(
        Config, source, data={k: v for k, v in data.items() if k not in ("servers", "partners")}
    )
    problems += errors
    problems += check_task_list(source, ("daemon", "error_tasks"))
    outbound_names = declared_names(data)
    problems += unknown_server_names(source, [("daemon", "error_tasks")], outbound_names)
    servers, errors = _endpoints(source, data, "servers")
    problems += errors
    partners, errors = _endpoints(source, data, "partners")
    problems += errors
    if config is not None:
        problems += _listen_conflicts(source, config, servers)

    # Even when `daemon` has mistakes, find the rules with what is usable of it.
    daemon = config.daemon if config else _best_effort(DaemonConfig, data.get("daemon"))
    database = config.database if config else _best_effort(DatabaseConfig, data.get("database"))
    paths = Paths.resolve(source.file, daemon, database)
    folders = _FolderCheck()
    folders.check(paths.state_dir, source, ("daemon", "state_dir"))
    folders.check(paths.data_dir, source, ("daemon", "data_dir"))
    folders.check(paths.rules_dir, source, ("daemon", "rules_dir"), writable=False)
    folders.check(paths.database.parent, source, ("database", "path"))
    if paths.database.is_dir():
        problems.append(
            source.problem(("database", "path"), f"{paths.database} is a folder, not a file")
        )
    problems += _file_problems(source, config, servers, partners, paths)
    objects = load_objects(
        daemon, paths.home, source, data, lambda entry: _endpoint_model(entry, "partners")
    )
    problems += objects.problems
    problems += protocol_problems(
        objects, servers, protocol_registry.CheckContext(paths.home, paths.state_dir)
    )
    declared_accounts = _declared(data, "accounts") | objects.declared["accounts"]
    declared_partners = _declared(data, "partners") | objects.declared["partners"]

    checked, errors = _load_rules(
        paths, source, accounts=declared_accounts, partners=declared_partners
    )
    problems += errors
    for item in checked:
        problems += item.problems
        problems += unknown_server_names(item.source, RULE_CHAINS, outbound_names)
        _check_rule_folders(folders, paths, item)
    problems += duplicate_problems([item.keys for item in checked])
    problems += folders.problems
    valid_rules = {item.rule.name: item.rule for item in checked if item.rule is not None}
    folders.check(paths.watchers_dir, source, ("daemon", "watchers_dir"), writable=False)
    invalid = frozenset(i.keys.name for i in checked if i.rule is None and i.keys.name)
    watchers, errors = _load_watchers(paths, source, valid_rules, declared_partners, invalid)
    problems += errors
    for watcher in watchers:
        problems += watcher.problems
    rules = {item.rule.name: item.rule for item in checked if item.rule is not None}
    schedules, errors = _load_schedules(paths, source, rules, declared_partners)
    problems += errors
    pollers, errors = _load_pollers(paths, source, rules, declared_partners)
    problems += errors
    key_configs = config.keys if config is not None else valid_entries(data.get("keys"))
    key_infos, errors, key_warnings = check_keys(source, key_configs, paths.home)
    problems += errors
    declared_keys = _declared(data, "keys")
    problems += all_reference_problems(
        (i.source for i in checked), key_configs, key_infos, declared_keys
    )
    problems += check_key_references(
        source, key_configs, key_infos, None, declared_keys, [("daemon", "error_tasks")]
    )
    if problems or config is None:
        raise ConfigError(problems)

    config = config.model_copy(
        update={
            "servers": servers,
            "partners": {**partners, **objects.objects["partners"]},
            "accounts": {**config.accounts, **objects.objects["accounts"]},
            "api": config.api.model_copy(
                update={"users": {**config.api.users, **objects.objects["users"]}}
            ),
            "rules": rules,
            "source": paths.config_file,
        }
    )
    warnings, demo = demo_secret_warnings(config, source, paths.state_dir)
    warnings = sort_problems([*warnings, *key_warnings])
    return LoadedConfig(
        config=config,
        paths=paths,
        tz=gateway_timezone(config.daemon.timezone),
        warnings=warnings,
        demo_secrets=tuple(demo),
        rule_origins={item.rule.name: item.origin for item in checked if item.rule is not None},
        watchers=by_name(watchers),
        schedules=schedules,
        pollers=pollers,
        key_infos=key_infos,
        object_files=objects.files,
    )


def load_rule_text(loaded: LoadedConfig, text: str, source_name: str) -> RuleConfig:
    """Check one rule given as YAML text against a loaded configuration, as the admin API
    does before writing it to `loaded.rule_file(name)`.

    A rule of the same name is the one being replaced, not a duplicate. Raises
    ConfigError; problems are reported against `source_name`. The rule returned has
    `source` set to the file it belongs in.
    """
    source = parse_yaml(text, Path(source_name))
    checked = check_rule(
        source, loaded.config.accounts, loaded.config.partners, check_file_name=False
    )
    problems = list(checked.problems)
    problems += check_key_references(source, loaded.config.keys, loaded.key_infos)
    config = loaded.config
    declared = {"icap": set(config.icap), "smtp": set(config.smtp), "notify": set(config.notify)}
    problems += unknown_server_names(source, RULE_CHAINS, declared)
    name = checked.keys.name
    existing = [
        RuleKeys(
            rule.name,
            rule.path,
            loaded.rule_origins.get(rule.name) or RuleOrigin(loaded.rule_file(rule.name), 0, 0),
        )
        for rule in loaded.config.rules.values()
        if rule.name != name
    ]
    problems += duplicate_problems([checked.keys], existing)
    folders = _FolderCheck()
    _check_rule_folders(folders, loaded.paths, checked)
    problems += folders.problems
    if problems or checked.rule is None:
        raise ConfigError(problems)
    return checked.rule.model_copy(update={"source": loaded.rule_file(checked.rule.name)})


def load_watcher_text(loaded: LoadedConfig, text: str, source_name: str) -> WatcherConfig:
    """Check one watcher given as YAML text against a loaded configuration, as the admin
    API does before writing it to `loaded.watcher_file(name)`. Raises ConfigError."""
    source = parse_yaml(text, Path(source_name))
    checked = check_watcher(
        source,
        loaded.config.rules,
        loaded.config.partners,
        loaded.paths,
        check_file_name=False,
    )
    if checked.problems or checked.item is None:
        raise ConfigError(checked.problems)
    watcher = checked.item
    return watcher.model_copy(update={"source": loaded.watcher_file(watcher.name)})


def demo_secrets_in_use(loaded: LoadedConfig) -> list[str]:
    """Accounts and API users whose password is a demo one (`demo`, `admin`) or their own
    name, e.g. `["account 'demo'", "API user 'admin'"]`. `serve` refuses to listen
    beyond loopback while this is not empty."""
    return list(loaded.demo_secrets)


def ensure_folders(loaded: LoadedConfig) -> None:
    """Create the state, data and rules folders, the database's folder and every rule's
    folder and tmp folder (mode 0o750). For `serve`, after a successful `load_config`."""
    folders = loaded.paths.daemon_folders()
    for rule in loaded.config.rules.values():
        folders += [loaded.rule_folder(rule), loaded.rule_tmp_folder(rule)]
    create_folders(folders)


# ------------------------------------------------------------------------------ helpers


class _FolderCheck:
    """Folder problems, each culprit (the file in the way, the read-only parent)
    reported once even when many folders lie beneath it."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._blamed: set[Path] = set()

    def check(
        self, folder: Path, source: YamlSource, at: DataPath, *, writable: bool = True
    ) -> None:
        found = folder_problem(folder, writable=writable)
        if found is None:
            return
        culprit, message = found
        if culprit not in self._blamed:
            self._blamed.add(culprit)
            self.problems.append(source.problem(at, message))


def _check_rule_folders(folders: _FolderCheck, paths: Paths, item: CheckedRule) -> None:
    rule = item.rule
    if rule is None:
        # An invalid rule still gets its explicit folder checked (the default one needs
        # a valid name).
        data = item.source.data
        folder = data.get("folder") if isinstance(data, dict) else None
        if not isinstance(folder, str):
            return
        # A partial rule on purpose (rule_folder reads name and folder only): pydantic's
        # mypy plugin types model_construct like __init__, every required field required.
        rule = RuleConfig.model_construct(name="", folder=Path(folder))  # type: ignore[call-arg]
    for folder in (paths.rule_folder(rule), paths.rule_tmp_folder(rule)):
        folders.check(folder, item.source, ("folder",))


def _file_problems(
    source: YamlSource,
    config: Config | None,
    servers: dict[str, ServerConfig],
    partners: dict[str, PartnerConfig],
    paths: Paths,
) -> list[Problem]:
    """The files the configuration names: the API's certificate and key here, the rest
    by the checks of each protocol in use (see `ProtocolSpec`)."""
    problems: list[Problem] = []
    accounts = config.accounts if config is not None else {}
    if config is not None and config.api.enabled:
        api = config.api
        if api.tls_cert is not None and api.tls_key is not None:
            cert, key = absolute(api.tls_cert, paths.home), absolute(api.tls_key, paths.home)
            found = cert_and_key_problem(cert, key)
            if found is not None:
                which = "tls_cert" if found.path == cert else "tls_key"
                problems.append(source.problem(("api", which), found.message))
    database = config.database if config is not None else None
    if database is not None and database.ssl_root_cert is not None:
        found = certificates_problem(absolute(database.ssl_root_cert, paths.home))
        if found is not None:
            problems.append(source.problem(("database", "ssl_root_cert"), found.message))
    context = protocol_registry.CheckContext(paths.home, paths.state_dir)
    serving: dict[str, protocol_registry.ProtocolSpec] = {}
    for name, server in servers.items():
        spec = protocol_registry.get(server.protocol)
        if spec is None or not server.enabled:
            continue
        serving.setdefault(spec.name, spec)
        if spec.check_server is not None:
            for field, message in spec.check_server(name, server, context):
                problems.append(source.problem(("servers", name, *field), message))
    for name, partner in partners.items():
        spec = protocol_registry.get(partner.protocol)
        if spec is not None and spec.check_partner is not None:
            for field, message in spec.check_partner(name, partner, context):
                problems.append(source.problem(("partners", name, *field), message))
    if config is not None:
        for spec in serving.values():
            if spec.check_accounts is not None:
                for field, message in spec.check_accounts(accounts):
                    problems.append(source.problem(("accounts", *field), message))
    return problems


def _endpoints(
    source: YamlSource, data: dict[Any, Any], section: str
) -> tuple[dict[str, Any], list[Problem]]:
    """Validate `servers` or `partners`: each entry with its protocol's model."""
    raw = data.get(section, {})
    if not isinstance(raw, dict):
        return {}, [
            source.problem(
                (section,), f"'{section}': expected a mapping, got {describe_value(raw)}"
            )
        ]
    found: dict[str, Any] = {}
    problems: list[Problem] = []
    for name, entry in raw.items():
        at = (section, name)
        if not isinstance(name, str):
            problems.append(
                source.problem(
                    at,
                    f"'{section}': invalid key {describe_key(name)}: "
                    f"expected a string, got {describe_value(name)}",
                )
            )
            continue
        refused = check_name(name)
        if refused is not None:
            message = f"'{section}': invalid key {describe_key(name)}: {name_problem(refused)}"
            problems.append(source.problem(at, message))
            continue
        if not isinstance(entry, dict):
            message = f"{field_name(at)}expected a mapping, got {describe_value(entry)}"
            problems.append(source.problem(at, message))
            continue
        model, error = _endpoint_model(entry, section)
        if error is not None:
            where = (*at, "protocol") if "protocol" in entry else at
            problems.append(source.problem(where, error))
            continue
        assert model is not None
        endpoint, errors = validate(model, source, at)
        problems += errors
        if endpoint is not None:
            found[name] = endpoint
    return found, problems


def partner_model(
    entry: dict[Any, Any],
) -> tuple[type[ServerConfig] | type[PartnerConfig] | None, str | None]:
    """The model of a partner entry, by its protocol (or why there is none)."""
    return _endpoint_model(entry, "partners")


def _endpoint_model(
    entry: dict[Any, Any], section: str
) -> tuple[type[ServerConfig] | type[PartnerConfig] | None, str | None]:
    if "protocol" not in entry:
        return None, "missing field 'protocol'"
    protocol = entry["protocol"]
    if not isinstance(protocol, str):
        return None, f"'protocol': expected a string, got {describe_value(protocol)}"
    spec = protocol_registry.get(protocol)
    if spec is None:
        known = ", ".join(protocol_registry.names()) or "none"
        return None, f"unknown protocol '{protocol}' (known: {known})"
    if section == "servers":
        if spec.server_config is None:
            return None, f"protocol '{protocol}' has no server side: it cannot be used in servers"
        return spec.server_config, None
    if spec.partner_config is None:
        return None, f"protocol '{protocol}' has no client side: it cannot be used in partners"
    return spec.partner_config, None


def _listen_conflicts(
    source: YamlSource, config: Config, servers: dict[str, ServerConfig]
) -> list[Problem]:
    """Two listeners of ours on the same address and (fixed) port."""
    listeners: list[tuple[str, str, int, DataPath]] = []
    if config.api.enabled:
        listeners.append(("the API", config.api.address, config.api.port, ("api", "port")))
    listeners += [
        (f"server '{name}'", server.address, server.port, ("servers", name, "port"))
        for name, server in servers.items()
        if server.enabled
    ]
    seen: dict[tuple[str, int], tuple[str, DataPath]] = {}
    problems: list[Problem] = []
    for who, address, port, at in listeners:
        if port == 0:
            continue
        first = seen.setdefault((address, port), (who, at))
        if first[0] != who:
            problems.append(
                source.problem(
                    at,
                    f"{address}:{port} is already used by {first[0]} "
                    f"(line {source.line(first[1])})",
                )
            )
    return problems


def _best_effort(model: type[M], raw: Any) -> M:
    """`model` from the keys of `raw` that are valid on their own (defaults for the rest)."""
    if not isinstance(raw, dict):
        return model()
    try:
        return model.model_validate(raw)
    except ValidationError:
        pass
    usable = {}
    for key, value in raw.items():
        try:
            model.model_validate({key: value})
        except ValidationError:
            continue
        usable[key] = value
    return model.model_validate(usable)


def _declared(data: dict[Any, Any], section: str) -> set[str]:
    """Names declared in a section, even if their entries have mistakes."""
    raw = data.get(section)
    return {name for name in raw if isinstance(name, str)} if isinstance(raw, dict) else set()


def _load_rules(
    paths: Paths, source: YamlSource, accounts: Iterable[str], partners: Iterable[str]
) -> tuple[list[CheckedRule], list[Problem]]:
    if not paths.rules_dir.is_dir():
        return [], []  # a missing folder means no rules; one in the way is reported
    try:
        files = rule_files(paths.rules_dir)
    except OSError as exc:
        message = f"cannot read the rules folder {paths.rules_dir}: {exc.strerror}"
        return [], [source.problem(("daemon", "rules_dir"), message)]
    accounts, partners = set(accounts), set(partners)
    return [check_rule(read_yaml(file), accounts, partners) for file in files], []


def _load_watchers(
    paths: Paths,
    source: YamlSource,
    rules: dict[str, RuleConfig],
    partners: set[str],
    invalid_rules: frozenset[str],
) -> tuple[list[Checked[WatcherConfig]], list[Problem]]:
    if not paths.watchers_dir.is_dir():
        return [], []  # no folder, no watchers
    try:
        files = yaml_files(paths.watchers_dir)
    except OSError as exc:
        message = f"cannot read the watchers folder {paths.watchers_dir}: {exc.strerror}"
        return [], [source.problem(("daemon", "watchers_dir"), message)]
    checked = [
        check_watcher(read_yaml(file), rules, partners, paths, invalid_rules=invalid_rules)
        for file in files
    ]
    return checked, []


def _load_schedules(
    paths: Paths, source: YamlSource, rules: dict[str, RuleConfig], partners: set[str]
) -> tuple[dict[str, ScheduleConfig], list[Problem]]:
    if paths.schedules_dir is None:
        return {}, []
    try:
        return load_schedules(paths.schedules_dir, rules, partners)
    except OSError as exc:
        message = f"cannot read the schedules folder {paths.schedules_dir}: {exc.strerror}"
        return {}, [source.problem(("daemon", "schedules_dir"), message)]


def _load_pollers(
    paths: Paths, source: YamlSource, rules: dict[str, RuleConfig], partners: set[str]
) -> tuple[dict[str, PollerConfig], list[Problem]]:
    if paths.pollers_dir is None:
        return {}, []
    try:
        return load_pollers(paths.pollers_dir, rules, partners)
    except OSError as exc:
        message = f"cannot read the pollers folder {paths.pollers_dir}: {exc.strerror}"
        return {}, [source.problem(("daemon", "pollers_dir"), message)]
