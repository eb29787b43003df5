"""Schedules: one YAML file per schedule in `daemon.schedules_dir`, each a cron
expression and the client transfer it plans at each of its times.

```yaml
name: daily-reports            # the file is daily-reports.yaml
cron: "0 2 * * mon-fri"        # 5 fields, or 6 with seconds first
timezone: Europe/Paris         # default: the gateway's zone
catch_up: once                 # firings missed while the daemon was down: once | skip
transfer: {rule: reports-out, partner: acme, file: daily.csv, output: daily.csv}
```

Checks beyond the schema (the rule and the partner exist, the rule allows the partner)
work on the parsed data, like gatewayd.config.rules, and point at file and line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AfterValidator, Field

from gatewayd.config.problems import Problem
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


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a cron expression the gateway takes, or None."""
    fields = expression.split()
    if not fields:
        return "empty cron expression"
    if not (fields[0].startswith("@") and len(fields) == 1) and len(fields) not in (5, 6):
        return (
            f"cron expression '{expression}' has {len(fields)} fields: "
            "expected 5 (minute hour day month weekday) or 6 (second first)"
        )
    if not croniter.is_valid(expression, second_at_beginning=len(fields) == 6):
        return f"invalid cron expression '{expression}'"
    return None


def _cron(value: str) -> str:
    problem = cron_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def checked_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r} (use an IANA name such as Europe/Paris or UTC)"
        ) from None
    return value


class ScheduledTransfer(Strict):
    """The client transfer a schedule plans (the fields of the API's create body)."""

    rule: str
    partner: str
    # Send: the file in the rule's folder; receive: the partner's file.
    file: Annotated[str, Field(min_length=1)]
    output: str | None = None
    transfer_info: dict[str, Any] = Field(default_factory=dict)

    def request(self) -> dict[str, Any]:
        """The body TransferService.build takes."""
        body: dict[str, Any] = {"rule": self.rule, "partner": self.partner, "file": self.file}
        if self.output is not None:
            body["output"] = self.output
        if self.transfer_info:
            body["transferInfo"] = dict(self.transfer_info)
        return body


class ScheduleConfig(Strict):
    name: FileName
    cron: Annotated[str, AfterValidator(_cron)]
    timezone: Annotated[str, AfterValidator(checked_zone)] | None = None
    catch_up: Literal["once", "skip"] = "once"
    enabled: bool = True
    transfer: ScheduledTransfer
    source: Path | None = Field(default=None, exclude=True)


def check_schedule(
    source: YamlSource, rules: Mapping[str, RuleConfig], partners: Partners
) -> Checked[ScheduleConfig]:
    """Validate one parsed schedule file against the rules and partners declared."""

    def transfer(data: dict[Any, Any], _: ScheduleConfig | None) -> list[Problem]:
        found = data.get("transfer")
        return _check_transfer(source, found, rules, partners) if isinstance(found, dict) else []

    return check_file("schedule", ScheduleConfig, source, transfer)


def _check_transfer(
    source: YamlSource,
    transfer: dict[Any, Any],
    rules: Mapping[str, RuleConfig],
    partners: Partners,
) -> list[Problem]:
    rule, problems = rule_ref(
        source, ("transfer", "rule"), transfer.get("rule"), rules, kind="schedule"
    )
    problems += partner_ref(
        source, ("transfer", "partner"), transfer.get("partner"), rule, partners
    )
    file = transfer.get("file")
    if isinstance(file, str) and (file.startswith("/") or ".." in file.split("/")):
        problems.append(
            source.problem(("transfer", "file"), "'file' must be a relative path without '..'")
        )
    return problems


def load_schedules(
    folder: Path, rules: Mapping[str, RuleConfig], partners: Partners
) -> tuple[dict[str, ScheduleConfig], list[Problem]]:
    """Every schedule of `folder` (missing: none), or the problems of its files. Two
    files cannot hold one name: the file name is the schedule's name."""
    checked, problems = load_folder(folder, lambda s: check_schedule(s, rules, partners))
    return by_name(checked), problems
