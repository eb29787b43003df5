"""Remote pollers: one YAML file per poller in `daemon.pollers_dir`, each a partner's
folder looked at now and then; each new remote file becomes one receive transfer.

```yaml
name: acme-in                  # the file is acme-in.yaml
partner: acme
rule: inbox                    # a receive rule that allows the partner
remote_dir: outgoing           # on the partner
globs: ["*.csv", "*.xml"]      # default: every file
interval: 60                   # seconds between looks; or `cron` (+ `timezone`)
after: keep                    # keep | delete | move (then `move_to`, a remote folder)
```

The checks beyond the schema (rule, partner, direction, globs) point at file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic import Strict as StrictMode

from gatewayd.config.messages import validate
from gatewayd.config.problems import Problem
from gatewayd.config.schedules import checked_zone, cron_problem, schedule_files
from gatewayd.config.schema import FileName, RuleConfig, Strict
from gatewayd.config.yamlsource import YamlSource, read_yaml
from gatewayd.model import Direction


def _cron(value: str) -> str:
    problem = cron_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _glob(value: str) -> str:
    if not value or "/" in value or "\x00" in value:
        raise ValueError(f"invalid glob {value!r}: a file name pattern, without '/'")
    if value.count("[") != value.count("]"):
        raise ValueError(f"invalid glob {value!r}: unbalanced '['")
    return value


class PollerConfig(Strict):
    name: FileName
    partner: str
    rule: str
    remote_dir: str = ""
    globs: Annotated[tuple[Annotated[str, AfterValidator(_glob)], ...], StrictMode(False)] = ("*",)
    interval: Annotated[float, Field(gt=0, le=86400)] | None = None
    cron: Annotated[str, AfterValidator(_cron)] | None = None
    timezone: Annotated[str, AfterValidator(checked_zone)] | None = None
    after: Literal["keep", "delete", "move"] = "keep"
    move_to: str | None = None
    enabled: bool = True
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _when(self) -> PollerConfig:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of 'interval' (seconds) and 'cron'")
        if (self.after == "move") != (self.move_to is not None):
            raise ValueError("'move_to' (a remote folder) goes with 'after: move', and only")
        return self


@dataclass
class CheckedPoller:
    source: YamlSource
    poller: PollerConfig | None
    problems: list[Problem]


def check_poller(
    source: YamlSource, rules: Mapping[str, RuleConfig], partners: set[str]
) -> CheckedPoller:
    """Validate one parsed poller file against the rules and partners declared."""
    problems = list(source.problems)
    if not source.parsed:
        return CheckedPoller(source, None, problems)
    poller, errors = validate(PollerConfig, source)
    problems += errors
    data = source.data
    if isinstance(data, dict):
        problems += _check_refs(source, data, rules, partners)
    if poller is not None:
        poller = poller.model_copy(update={"source": source.file})
    return CheckedPoller(source, poller if not problems else None, problems)


def _check_refs(
    source: YamlSource, data: dict[Any, Any], rules: Mapping[str, RuleConfig], partners: set[str]
) -> list[Problem]:
    problems = []
    name = data.get("name")
    if isinstance(name, str) and source.file.stem != name:
        problems.append(
            source.problem(
                ("name",),
                f"poller '{name}' must be in a file named {name}.yaml, not {source.file.name}",
            )
        )
    rule_name, partner = data.get("rule"), data.get("partner")
    rule = rules.get(rule_name) if isinstance(rule_name, str) else None
    if isinstance(rule_name, str) and rule is None:
        problems.append(source.problem(("rule",), f"unknown rule '{rule_name}'"))
    elif rule is not None and rule.direction != Direction.RECEIVE:
        problems.append(
            source.problem(
                ("rule",),
                f"rule '{rule.name}' is a {rule.direction} rule: a poller needs a receive rule",
            )
        )
    if isinstance(partner, str):
        if partner not in partners:
            problems.append(source.problem(("partner",), f"unknown partner '{partner}'"))
        elif rule is not None and not rule.allows_partner(partner):
            problems.append(
                source.problem(
                    ("partner",), f"rule '{rule.name}' does not allow partner '{partner}'"
                )
            )
    return problems


def load_pollers(
    folder: Path, rules: Mapping[str, RuleConfig], partners: set[str]
) -> tuple[dict[str, PollerConfig], list[Problem]]:
    """Every poller of `folder` (missing: none), or the problems of its files."""
    if not folder.is_dir():
        return {}, []
    checked = [check_poller(read_yaml(file), rules, partners) for file in schedule_files(folder)]
    problems = [problem for item in checked for problem in item.problems]
    found = {item.poller.name: item.poller for item in checked if item.poller is not None}
    return found, problems
