"""The tasks listed in a YAML file's chains, as written (before validation): what the
checks of tasks' arguments against other sections (keys, outbound servers) walk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gatewayd.config.yamlsource import DataPath, YamlSource

# A rule's chains.
RULE_CHAINS: tuple[DataPath, ...] = (("pre",), ("post",), ("error",))


def listed_tasks(
    source: YamlSource, chains: Iterable[DataPath]
) -> Iterator[tuple[DataPath, dict[str, Any]]]:
    """(where, task) for each task at `chains` of `source` that is a mapping with a
    text `type`; `where` is the task's own path (for `source.problem`)."""
    for at in chains:
        tasks: Any = source.data
        for key in at:
            tasks = tasks.get(key) if isinstance(tasks, dict) else None
        if not isinstance(tasks, list):
            continue
        for index, task in enumerate(tasks):
            if isinstance(task, dict) and isinstance(task.get("type"), str):
                yield (*at, index), task
