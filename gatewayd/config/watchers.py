"""Local folder watchers: one YAML file per watcher in the watchers folder, like rules.

A watcher names a send rule and one or more partners; each file that appears in its
folder (the rule's folder or a folder inside it) and stays unchanged for `settle`
seconds becomes a client transfer of that rule to each partner. The checks here work on
the parsed data, so that every mistake of a file is reported at once, with its line:
an unknown rule or partner, a rule that receives, a partner the rule does not allow, a
folder outside the rule's folder, missing or unreadable, a glob that cannot match.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator
from pydantic import Strict as StrictMode

from gatewayd.config.paths import Paths, absolute
from gatewayd.config.problems import Problem
from gatewayd.config.schema import FileName, Names, RuleConfig, Strict
from gatewayd.config.yamlfolder import Checked, Partners, check_file, partner_ref, rule_ref
from gatewayd.config.yamlsource import YamlSource
from gatewayd.model import Direction
from gatewayd.tasks.markers import unknown_markers

# Files still being written by the usual tools, and hidden files: never taken unless the
# watcher lists its own `exclude`.
DEFAULT_EXCLUDE = (".*", "*.part", "*.partial", "*.filepart", "*.tmp", "*.swp")


def _glob(value: str) -> str:
    problem = glob_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a usable glob (fnmatch syntax: `*`, `?`, `[...]`), or None.
    fnmatch takes anything, so the mistakes that make a pattern silently match nothing
    useful are refused here: empty, an unclosed `[`, a `..` or absolute path."""
    if not pattern:
        return "an empty glob matches nothing"
    if pattern.startswith("/") or ".." in pattern.split("/"):
        return f"glob {pattern!r}: must be relative to the watched folder, without '..'"
    depth = 0
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[" and depth == 0:
            close = pattern.find("]", index + 2)
            if close < 0:
                return f"glob {pattern!r}: '[' at {index + 1} is never closed"
            index = close
        index += 1
    return None


Glob = Annotated[str, AfterValidator(_glob)]


class WatcherConfig(Strict):
    """One watcher: `watchers/<name>.yaml`."""

    name: FileName
    comment: str = ""
    enabled: bool = True
    rule: str
    # One partner or several (each file goes to each of them).
    partner: str | None = None
    partners: Names = ()
    # The folder watched: relative to the rule's folder (default: the rule's folder
    # itself), or absolute inside it.
    folder: Annotated[Path, StrictMode(False)] = Path(".")
    recursive: bool = False
    # Globs on the file name, or on the path below `folder` when they hold a '/'.
    include: Annotated[tuple[Glob, ...], StrictMode(False)] = ("*",)
    exclude: Annotated[tuple[Glob, ...], StrictMode(False)] = DEFAULT_EXCLUDE
    min_size: Annotated[int, Field(ge=0)] = 0
    # Seconds a file's size and modification time must stay unchanged before it is
    # taken (the gateway's clock). No "still open for writing" detection: a writer
    # that pauses longer than this gets its file sent early (see the README).
    settle: Annotated[float, Field(ge=0)] = 5.0
    # Seconds between two scans of the folder.
    interval: Annotated[float, Field(gt=0)] = 2.0
    # Where the file goes on the partner: a path (markers allowed, e.g.
    # `in/#TRUEFILENAME#`); default: the same path as below the watched folder.
    output: str | None = None
    transfer_info: Mapping[str, Any] = Field(default_factory=dict)
    # A file that changes after it was taken (same path and inode, another size or
    # modification time) is sent again only when this is set.
    resend_changed: bool = False
    # Transfers made per scan at most (the rest wait for the next one).
    batch: Annotated[int, Field(ge=1)] = 500
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _one_partner_field(self) -> WatcherConfig:
        if self.partner is not None and self.partners:
            raise ValueError("give 'partner' or 'partners', not both")
        if self.partner is None and not self.partners:
            raise ValueError("missing field 'partner' (or 'partners')")
        return self

    @property
    def targets(self) -> tuple[str, ...]:
        """The partners each file goes to."""
        return (self.partner,) if self.partner is not None else tuple(self.partners)


def watched_folder(paths: Paths, rule: RuleConfig, watcher: WatcherConfig) -> Path:
    """The absolute folder `watcher` scans (lexically resolved, no link followed)."""
    return Path(os.path.normpath(absolute(watcher.folder, paths.rule_folder(rule))))


def check_watcher(
    source: YamlSource,
    rules: Mapping[str, RuleConfig],
    partners: Partners,
    paths: Paths,
    *,
    check_file_name: bool = True,
    invalid_rules: frozenset[str] = frozenset(),
) -> Checked[WatcherConfig]:
    """Validate one parsed watcher file against the rules and partners loaded."""

    def refs(data: dict[Any, Any], watcher: WatcherConfig | None) -> list[Problem]:
        rule, problems = rule_ref(
            source,
            ("rule",),
            data.get("rule"),
            rules,
            kind="watcher",
            direction=Direction.SEND,
            invalid_rules=invalid_rules,
        )
        problems += _check_partners(source, data, rule, partners)
        problems += _check_markers(source, data)
        if rule is not None and watcher is not None:
            problems += _check_folder(source, paths, rule, watcher)
        return problems

    return check_file("watcher", WatcherConfig, source, refs, check_file_name=check_file_name)


def _check_partners(
    source: YamlSource, data: dict[Any, Any], rule: RuleConfig | None, partners: Partners
) -> list[Problem]:
    named: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(data.get("partner"), str):
        named.append((("partner",), data["partner"]))
    if isinstance(data.get("partners"), list):
        named += [(("partners", i), p) for i, p in enumerate(data["partners"])]
    return [p for at, partner in named for p in partner_ref(source, at, partner, rule, partners)]


def _check_markers(source: YamlSource, data: dict[Any, Any]) -> list[Problem]:
    problems = []
    output = data.get("output")
    if isinstance(output, str):
        problems += [
            source.problem(("output",), f"'output': unknown marker {m}")
            for m in unknown_markers(output)
        ]
    info = data.get("transfer_info")
    if isinstance(info, dict):
        for key, value in info.items():
            if isinstance(value, str):
                problems += [
                    source.problem(
                        ("transfer_info", key), f"'transfer_info.{key}': unknown marker {m}"
                    )
                    for m in unknown_markers(value)
                ]
    return problems


def _check_folder(
    source: YamlSource, paths: Paths, rule: RuleConfig, watcher: WatcherConfig
) -> list[Problem]:
    root = Path(os.path.normpath(paths.rule_folder(rule)))
    folder = watched_folder(paths, rule, watcher)
    if folder != root and root not in folder.parents:
        return [
            source.problem(
                ("folder",),
                f"{folder} is not inside the folder of rule '{rule.name}' ({root})",
            )
        ]
    if folder == root / ".tmp" or root / ".tmp" in folder.parents:
        return [source.problem(("folder",), f"{folder} is the rule's temporary folder")]
    at = ("folder",) if "folder" in (source.data or {}) else ("rule",)
    if not folder.is_dir():
        # The rule's own folder is created at start; a folder inside it must exist.
        if folder == root:
            return []
        return [source.problem(at, f"folder {folder} does not exist (or is not a folder)")]
    if not os.access(folder, os.R_OK | os.X_OK):
        return [source.problem(at, f"folder {folder} cannot be read")]
    return []
