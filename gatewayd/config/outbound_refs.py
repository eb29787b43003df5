"""The names that ICAP, EMAIL and NOTIFY tasks give their servers (`server: av`,
`endpoint: ops`), checked against the `icap:`, `smtp:` and `notify:` settings, so that a
typo is a problem of check-config (file and line) rather than a failed transfer.

A name holding a marker is judged at run time only, as it depends on the transfer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gatewayd.config.problems import Problem
from gatewayd.config.task_lists import listed_tasks
from gatewayd.config.yamlsource import DataPath, YamlSource
from gatewayd.tasks.markers import has_markers

# Task type -> (its argument naming a server, the settings section of those names).
TASK_SETTINGS = {
    "ICAP": ("server", "icap"),
    "EMAIL": ("server", "smtp"),
    "NOTIFY": ("endpoint", "notify"),
}

# Where a rule file lists its tasks.


def declared_names(data: Any) -> dict[str, set[str]]:
    """The names of each section as written in gatewayd.yaml (whatever their values)."""
    found: dict[str, set[str]] = {}
    for _, section in TASK_SETTINGS.values():
        value = data.get(section) if isinstance(data, dict) else None
        found[section] = (
            {k for k in value if isinstance(k, str)} if isinstance(value, dict) else set()
        )
    return found


def unknown_server_names(
    source: YamlSource, chains: Iterable[DataPath], declared: Mapping[str, set[str]]
) -> list[Problem]:
    """Problems of the tasks listed at each of `chains` of `source` whose server is not
    declared (or, left out, is not the only one)."""
    problems = []
    for task_at, task in listed_tasks(source, chains):
        type_name = task["type"].upper()
        if type_name not in TASK_SETTINGS:
            continue
        arg, section = TASK_SETTINGS[type_name]
        names = declared.get(section, set())
        raw_args = task.get("args")
        args: dict[Any, Any] = raw_args if isinstance(raw_args, dict) else {}
        name = args.get(arg)
        where = (*task_at, "args", arg) if arg in args else task_at
        known = ", ".join(sorted(names)) or "none"
        if name is None and len(names) != 1:
            message = f"argument '{arg}' is needed: {len(names)} `{section}:` entries are declared"
        elif isinstance(name, str) and not has_markers(name) and name not in names:
            message = f"unknown `{section}:` entry '{name}' (declared: {known})"
        else:
            continue
        problems.append(source.problem(where, f"{task['type']}: {message}"))
    return problems
