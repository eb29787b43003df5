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
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator
from pydantic import Strict as StrictMode

from gatewayd.config.problems import Problem
from gatewayd.config.schedules import checked_zone, cron_problem
from gatewayd.config.schema import FileName, RuleConfig, Strict
from gatewayd.config.yamlfolder import (
    Checked,
    Partners,
    by_name,
    check_file,
    load_folder,
    partner_ref,
    rule_ref,
)
from gatewayd.config.yamlsource import YamlSource
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


def check_poller(
    source: YamlSource, rules: Mapping[str, RuleConfig], partners: Partners
) -> Checked[PollerConfig]:
    """Validate one parsed poller file against the rules and partners declared."""

    def refs(data: dict[Any, Any], _: PollerConfig | None) -> list[Problem]:
        rule, problems = rule_ref(
            source, ("rule",), data.get("rule"), rules, kind="poller", direction=Direction.RECEIVE
        )
        return problems + partner_ref(source, ("partner",), data.get("partner"), rule, partners)

    return check_file("poller", PollerConfig, source, refs)


def load_pollers(
    folder: Path, rules: Mapping[str, RuleConfig], partners: Partners
) -> tuple[dict[str, PollerConfig], list[Problem]]:
    """Every poller of `folder` (missing: none), or the problems of its files."""
    checked, problems = load_folder(folder, lambda s: check_poller(s, rules, partners))
    return by_name(checked), problems
