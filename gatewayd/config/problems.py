"""What the loader reports: problems with a file and a line, raised all at once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One mistake (or warning) in a configuration file.

    `line` is 1-based; 0 means the problem concerns the whole file (e.g. it cannot be read).
    """

    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"

    def sort_key(self) -> tuple[str, int, str]:
        return (str(self.file), self.line, self.message)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in file and line order, each reported once."""
    return sorted(set(problems), key=Problem.sort_key)


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every mistake found, in order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sort_problems(problems)
        super().__init__("\n".join(str(p) for p in self.problems))
