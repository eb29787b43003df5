"""YAML into plain Python data that remembers where each value was written.

PyYAML's loaders forget positions and silently keep the last of two equal keys. Here the
safe composer builds nodes (which carry their start marks) and a small walk turns them into
dicts, lists and scalars, recording the line of every value under its path (the tuple of
keys and list indexes that leads to it) and reporting duplicate keys. Only plain YAML
types are accepted: mappings, sequences, strings, numbers, booleans, null and timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gatewayd.config.problems import Problem

DataPath = tuple[Any, ...]

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _CORE + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_MERGE_TAG = _CORE + "merge"
_FAILED: Any = object()  # a scalar that could not be constructed (already reported)


@dataclass
class YamlSource:
    """One parsed file: its data, the line of each value, and what was wrong with it."""

    file: Path
    data: Any = None
    lines: dict[DataPath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # Values dropped (made None) because of a problem already reported: a schema error
    # about them would only repeat it.
    dropped: set[DataPath] = field(default_factory=set)
    # False when the file could not be read or parsed at all (then `data` is None).
    parsed: bool = True

    def line(self, path: DataPath) -> int:
        """The line of the value at `path`, or of its nearest enclosing value."""
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def problem(self, path: DataPath, message: str) -> Problem:
        return Problem(self.file, self.line(path), message)


def parse_yaml(text: str, file: Path) -> YamlSource:
    """Parse one YAML document; syntax errors and duplicate keys become problems."""
    source = YamlSource(file=file, lines={(): 1})
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            source.problems.append(Problem(file, _error_line(exc), _syntax_message(exc)))
            source.parsed = False
            return source
        except yaml.YAMLError as exc:  # reader errors (e.g. a control character)
            source.problems.append(Problem(file, 0, f"invalid YAML: {exc}"))
            source.parsed = False
            return source
        if node is not None:
            source.lines[()] = node.start_mark.line + 1
            source.data = _Converter(loader, source).convert(node, ())
        return source
    finally:
        loader.dispose()


def read_yaml(file: Path) -> YamlSource:
    """Read and parse `file`; a file that cannot be read is a problem too."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return YamlSource(
            file=file, problems=[Problem(file, 0, f"not UTF-8 text: {exc.reason}")], parsed=False
        )
    except OSError as exc:
        return YamlSource(
            file=file, problems=[Problem(file, 0, f"cannot read: {exc.strerror}")], parsed=False
        )
    return parse_yaml(text, file)


def describe_key(key: Any) -> str:
    return f"'{key}'" if isinstance(key, str) else str(key)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


def _error_line(exc: yaml.MarkedYAMLError) -> int:
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark is not None else 0


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    if exc.context == "expected a single document in the stream":
        return "invalid YAML: a second document starts here (a file holds only one)"
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.problem and exc.context:
        message += f" ({exc.context}"
        started = exc.context_mark
        if started is not None and exc.problem_mark and started.line != exc.problem_mark.line:
            message += f" started at line {started.line + 1}"
        message += ")"
    return message


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, source: YamlSource) -> None:
        self.loader = loader
        self.source = source
        # Aliases share nodes: convert each node once (no exponential "billion laughs"
        # expansion), and detect an alias that contains itself.
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def report(self, node: Node, message: str) -> None:
        self.source.problems.append(Problem(self.source.file, node.start_mark.line + 1, message))

    def convert(self, node: Node, path: DataPath) -> Any:
        self.source.lines.setdefault(path, node.start_mark.line + 1)
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            self.drop(node, path, "an alias refers to the value that contains it")
            return None
        self.active.add(key)
        try:
            if isinstance(node, ScalarNode):
                value = self.scalar(node, path)
                if value is _FAILED:
                    value = None
            elif isinstance(node, SequenceNode):
                value = self.sequence(node, path)
            else:
                assert isinstance(node, MappingNode)
                value = self.mapping(node, path)
        finally:
            self.active.discard(key)
        self.done[key] = value
        return value

    def drop(self, node: Node, path: DataPath | None, message: str) -> None:
        self.report(node, message)
        if path is not None:
            self.source.dropped.add(path)

    def scalar(self, node: ScalarNode, path: DataPath | None) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.drop(node, path, f"unsupported YAML tag '{_short_tag(node.tag)}'")
            return _FAILED
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            self.drop(node, path, f"invalid value: {exc.problem}")
            return _FAILED

    def sequence(self, node: SequenceNode, path: DataPath) -> list[Any] | None:
        if node.tag != _CORE + "seq":
            self.drop(node, path, f"unsupported YAML tag '{_short_tag(node.tag)}'")
            return None
        return [self.convert(child, (*path, index)) for index, child in enumerate(node.value)]

    def mapping(self, node: MappingNode, path: DataPath) -> dict[Any, Any] | None:
        if node.tag != _CORE + "map":
            self.drop(node, path, f"unsupported YAML tag '{_short_tag(node.tag)}'")
            return None
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.report(key_node, "merge keys (<<) are not supported")
                continue
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, "a key must be a plain value, not a list or a mapping")
                continue
            key = self.scalar(key_node, None)
            if key is _FAILED:
                continue
            line = key_node.start_mark.line + 1
            child = (*path, key)
            if key in result:
                first = self.source.lines.get(child, line)
                self.report(key_node, f"duplicate key {describe_key(key)} (first at line {first})")
            # Like PyYAML, the last one wins; its line is the one to point at.
            self.source.lines[child] = line
            result[key] = self.convert(value_node, child)
        return result
