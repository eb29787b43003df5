"""What the YAML-folder kinds (watchers, schedules, pollers: one file per object, named
after it) share: the listing of a folder, the checks every file goes through (the
schema, the file's name, the rule and partners it names) and the loading of a whole
folder. Each kind adds its own checks (`extra`) on the parsed data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from gatewayd.config.messages import validate
from gatewayd.config.problems import Problem
from gatewayd.config.schema import PartnerConfig, RuleConfig
from gatewayd.config.yamlsource import YamlSource, read_yaml
from gatewayd.model import Direction

SUFFIXES = (".yaml", ".yml")
DataPath = tuple[Any, ...]
Partners = Mapping[str, PartnerConfig] | set[str]


class Named(Protocol):
    @property
    def name(self) -> str: ...


M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
N = TypeVar("N", bound=Named)


@dataclass
class Checked(Generic[T]):
    """One file after its checks: the object when valid, and the file's problems."""

    source: YamlSource
    item: T | None
    problems: list[Problem]


def yaml_files(folder: Path) -> list[Path]:
    """The YAML files of `folder`, in name order (hidden files are skipped). Blocking;
    raises OSError when the folder cannot be read."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.suffix in SUFFIXES and not entry.name.startswith(".") and entry.is_file()
    )


def check_file(
    kind: str,
    model: type[M],
    source: YamlSource,
    extra: Callable[[dict[Any, Any], M | None], list[Problem]],
    *,
    check_file_name: bool = True,
) -> Checked[M]:
    """Validate one parsed file with `model`, check that it is named after the object
    (`check_file_name`), then `extra(data, object or None)`; the object (its `source`
    set to the file) only when no problem was found."""
    problems = list(source.problems)
    if not source.parsed:
        return Checked(source, None, problems)
    found, errors = validate(model, source)
    problems += errors
    data = source.data if isinstance(source.data, dict) else {}
    name = data.get("name")
    if check_file_name and isinstance(name, str) and source.file.stem != name:
        problems.append(
            source.problem(
                ("name",),
                f"{kind} '{name}' must be in a file named {name}.yaml, not {source.file.name}",
            )
        )
    problems += extra(data, found)
    if found is not None:
        found = found.model_copy(update={"source": source.file})
    return Checked(source, found if not problems else None, problems)


def load_folder(
    folder: Path, check: Callable[[YamlSource], Checked[M]]
) -> tuple[list[Checked[M]], list[Problem]]:
    """Every file of `folder` checked (a missing folder: none), and all their problems.
    Raises OSError when the folder cannot be read."""
    if not folder.is_dir():
        return [], []
    checked = [check(read_yaml(file)) for file in yaml_files(folder)]
    return checked, [problem for item in checked for problem in item.problems]


def by_name(checked: list[Checked[N]]) -> dict[str, N]:
    """The valid objects, by name (the file name is the name: no two share one)."""
    return {item.item.name: item.item for item in checked if item.item is not None}


def rule_ref(
    source: YamlSource,
    at: DataPath,
    name: Any,
    rules: Mapping[str, RuleConfig],
    *,
    kind: str,
    direction: Direction | None = None,
    invalid_rules: frozenset[str] = frozenset(),
) -> tuple[RuleConfig | None, list[Problem]]:
    """The rule `name` at `at`, or why not: unknown (unless its own file has mistakes,
    reported there: `invalid_rules`), or of the wrong `direction` for a `kind`."""
    rule = rules.get(name) if isinstance(name, str) else None
    if isinstance(name, str) and rule is None and name not in invalid_rules:
        return None, [source.problem(at, f"unknown rule '{name}'")]
    if rule is not None and direction is not None and rule.direction != direction:
        message = (
            f"rule '{rule.name}' is a {rule.direction} rule: a {kind} needs a {direction} rule"
        )
        return rule, [source.problem(at, message)]
    return rule, []


def partner_ref(
    source: YamlSource, at: DataPath, partner: Any, rule: RuleConfig | None, partners: Partners
) -> list[Problem]:
    """Whether `partner` (at `at`) is declared, and allowed by `rule`."""
    if not isinstance(partner, str):
        return []
    if partner not in partners:
        return [source.problem(at, f"unknown partner '{partner}'")]
    if rule is not None and not rule.allows_partner(partner):
        return [source.problem(at, f"rule '{rule.name}' does not allow partner '{partner}'")]
    return []
