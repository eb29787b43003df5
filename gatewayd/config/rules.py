"""Rules: one YAML file per rule, checked on their own and against the configuration.

Checks that need more than the rule's schema: the file name matches the rule name, the
accounts and partners it allows exist, its tasks are known task types with valid
arguments and known markers, and no two rules share a name or a path. They work on the
parsed data, so that a rule with a schema error still gets every other mistake reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.config.messages import field_name, validate
from gatewayd.config.problems import Problem
from gatewayd.config.schema import RuleConfig
from gatewayd.config.yamlsource import DataPath, YamlSource
from gatewayd.tasks.base import task_class, task_types
from gatewayd.tasks.markers import unknown_markers

RULE_SUFFIXES = (".yaml", ".yml")
CHAINS = ("pre", "post", "error")


@dataclass(frozen=True)
class RuleOrigin:
    """Where a rule was written, for messages that point at it from elsewhere."""

    file: Path
    name_line: int
    path_line: int

    def at(self, line: int) -> str:
        return f"{self.file}:{line}"


@dataclass
class CheckedRule:
    """One rule file after its checks: the rule when valid, and where things are."""

    source: YamlSource
    rule: RuleConfig | None
    problems: list[Problem]

    @property
    def origin(self) -> RuleOrigin:
        return RuleOrigin(
            self.source.file, self.source.line(("name",)), self.source.line(("path",))
        )

    @property
    def keys(self) -> RuleKeys:
        """Name and path as written (even when the rule is invalid otherwise)."""
        name = _get(self.source.data, "name")
        path = _get(self.source.data, "path")
        return RuleKeys(
            name if isinstance(name, str) else None,
            path if isinstance(path, str) else None,
            self.origin,
        )


def rule_files(rules_dir: Path) -> list[Path]:
    """The rule files of `rules_dir`, in name order (hidden files are skipped)."""
    return sorted(
        entry
        for entry in rules_dir.iterdir()
        if entry.suffix in RULE_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
    )


def check_rule(
    source: YamlSource,
    accounts: Iterable[str],
    partners: Iterable[str],
    *,
    check_file_name: bool = True,
) -> CheckedRule:
    """Validate one parsed rule file; `accounts` and `partners` are the names declared."""
    problems = list(source.problems)
    if not source.parsed:
        return CheckedRule(source, None, problems)
    rule, errors = validate(RuleConfig, source)
    problems += errors
    data = source.data
    if isinstance(data, dict):
        if check_file_name:
            problems += _check_file_name(source)
        problems += _check_allowed(source, set(accounts), set(partners))
        problems += _check_tasks(source)
    if rule is not None:
        rule = rule.model_copy(update={"source": source.file})
    return CheckedRule(source, rule if not problems else None, problems)


@dataclass(frozen=True)
class RuleKeys:
    """What must be unique among rules, and where it was written."""

    name: str | None
    path: str | None
    origin: RuleOrigin


def duplicate_problems(new: list[RuleKeys], existing: Iterable[RuleKeys] = ()) -> list[Problem]:
    """Rules sharing a name or a path. The first one (in `existing`, then `new`) keeps
    it; each later one of `new` is reported, naming where the first one is."""
    problems: list[Problem] = []
    names: dict[str, RuleOrigin] = {}
    paths: dict[str, RuleOrigin] = {}
    for keys in existing:
        if keys.name is not None:
            names.setdefault(keys.name, keys.origin)
        if keys.path is not None:
            paths.setdefault(keys.path, keys.origin)
    for keys in new:
        origin = keys.origin
        if keys.name is not None:
            first = names.setdefault(keys.name, origin)
            if first is not origin:
                problems.append(
                    Problem(
                        origin.file,
                        origin.name_line,
                        f"duplicate rule name '{keys.name}' (also at {first.at(first.name_line)})",
                    )
                )
        if keys.path is not None:
            first = paths.setdefault(keys.path, origin)
            if first is not origin:
                problems.append(
                    Problem(
                        origin.file,
                        origin.path_line,
                        f"duplicate path '{keys.path}' (also used at {first.at(first.path_line)})",
                    )
                )
    return problems


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _check_file_name(source: YamlSource) -> list[Problem]:
    name = source.data.get("name")
    if not isinstance(name, str) or source.file.stem == name:
        return []
    # The admin API writes a rule to <name>.yaml: another name would make two files.
    return [
        source.problem(
            ("name",),
            f"rule '{name}' must be in a file named {name}.yaml, not {source.file.name}",
        )
    ]


def _check_allowed(source: YamlSource, accounts: set[str], partners: set[str]) -> list[Problem]:
    allow = source.data.get("allow")
    if not isinstance(allow, dict):
        return []
    problems = []
    for kind, known in (("account", accounts), ("partner", partners)):
        names = allow.get(f"{kind}s")
        if not isinstance(names, list):
            continue
        for index, name in enumerate(names):
            if isinstance(name, str) and name not in known:
                path = ("allow", f"{kind}s", index)
                problems.append(source.problem(path, f"unknown {kind} '{name}'"))
    return problems


def _check_tasks(source: YamlSource) -> list[Problem]:
    problems = []
    seen: set[int] = set()  # arguments walked already (aliases share them)
    for chain in CHAINS:
        tasks = source.data.get(chain)
        if not isinstance(tasks, list):
            continue
        for index, task in enumerate(tasks):
            if isinstance(task, dict):
                problems += _check_task(source, (chain, index), task, seen)
    return problems


def _check_task(
    source: YamlSource, at: DataPath, task: dict[Any, Any], seen: set[int]
) -> list[Problem]:
    problems: list[Problem] = []
    args = task.get("args", {})
    if isinstance(args, dict):
        problems += _check_markers(source, (*at, "args"), args, seen)
    type_name = task.get("type")
    if not isinstance(type_name, str):
        return problems  # reported by the schema
    cls = task_class(type_name)
    if cls is None:
        known = ", ".join(task_types())
        message = f"unknown task type '{type_name}' (known: {known})"
        return [*problems, source.problem((*at, "type"), message)]
    if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
        return problems
    for message in cls.check_args(args):
        problems.append(
            source.problem(_argument_path(at, args, message), f"{type_name}: {message}")
        )
    return problems


def _argument_path(at: DataPath, args: dict[str, Any], message: str) -> DataPath:
    """The line to blame for a task's argument problem: the argument it names, if any."""
    for name in re.findall(r"'([^']+)'", message):
        if name in args:
            return (*at, "args", name)
    return (*at, "args") if args else at


def _check_markers(source: YamlSource, at: DataPath, value: Any, seen: set[int]) -> list[Problem]:
    """Unknown markers in the strings of `value`. A list or mapping that aliases share
    is walked once (its problems are reported where it was first written)."""
    if isinstance(value, str):
        return [
            source.problem(at, f"{field_name(at)}unknown marker {marker}")
            for marker in unknown_markers(value)
        ]
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return []
    if id(value) in seen:
        return []
    seen.add(id(value))
    return [
        problem for key, item in items for problem in _check_markers(source, (*at, key), item, seen)
    ]


def check_task_list(source: YamlSource, at: DataPath) -> list[Problem]:
    """Types, arguments and markers of the tasks listed at `at` of `source` (the daemon's
    gateway-wide `error_tasks`), reported as a rule's are."""
    value: Any = source.data
    for key in at:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, list):
        return []
    seen: set[int] = set()
    return [
        problem
        for index, task in enumerate(value)
        if isinstance(task, dict)
        for problem in _check_task(source, (*at, index), task, seen)
    ]
