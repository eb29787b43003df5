"""YAML into plain Python data that remembers where each value was written.

PyYAML's loaders forget positions and silently keep the last of two equal keys. Here the
safe composer builds nodes (which carry their start marks) and a small walk turns them into
dicts, lists and scalars, recording the line of every value under its path (the tuple of
keys and list indexes that leads to it) and reporting duplicate keys. Only plain YAML
types are accepted: mappings, sequences, strings, numbers, booleans, null and timestamps.

A few hundred bytes of anchors and aliases can stand for billions of values ("billion
laughs"), and deep nesting exhausts Python's stack: the composer here refuses a file
whose aliases would add more than `MAX_ALIAS_VALUES` values, or whose lists and mappings
(aliases expanded) nest deeper than `MAX_DEPTH`, before any data is built. Everything
that walks the data afterwards (validation, task checks, JSON for the store and the API)
then works on a bounded amount of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.error import Mark
from yaml.events import AliasEvent, CollectionStartEvent, Event
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode

from gatewayd.config.problems import Problem
from gatewayd.names import escaped

DataPath = tuple[Any, ...]

# Values (scalars, lists, mappings, keys) that the aliases of one file may add to it once
# expanded. Anchors have real uses, such as one list of tasks or of keys written once and
# used in a few places, which stay far below; ten thousand is also what the walks of a
# configuration (validation, task and marker checks, JSON for the store) get through in
# milliseconds, while the classic nine-level bomb asks for 387 million. A file without
# aliases is bounded by its size instead (MAX_FILE_BYTES).
MAX_ALIAS_VALUES = 10_000
# Levels of lists and mappings inside each other, aliases expanded. The deepest setting
# is four levels down; task arguments may nest some more. Python's stack (PyYAML's
# composer recurses, and so does every walk of the data) gives out near a thousand.
MAX_DEPTH = 64
# Configuration and rule files are text of a few kilobytes; this refuses a device or a
# huge binary named by mistake before reading all of it.
MAX_FILE_BYTES = 16 * 1024 * 1024

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
    """Parse one YAML document; syntax errors, duplicate keys, characters YAML does not
    allow and aliases or nesting beyond the limits become problems."""
    source = YamlSource(file=file, lines={(): 1})
    try:
        loader = _BoundedLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character: binary data?
        return _unparsed(source, _character_problem(file, text, exc))
    try:
        try:
            node = loader.get_single_node()
        except _Refused as exc:
            return _unparsed(source, Problem(file, _error_line(exc), str(exc.problem)))
        except yaml.MarkedYAMLError as exc:
            return _unparsed(source, Problem(file, _error_line(exc), _syntax_message(exc)))
        except yaml.YAMLError as exc:
            return _unparsed(source, Problem(file, 1, f"invalid YAML: {exc}"))
        if node is not None:
            source.lines[()] = node.start_mark.line + 1
            source.data = _Converter(loader, source).convert(node, ())
        return source
    finally:
        loader.dispose()


def read_yaml(file: Path) -> YamlSource:
    """Read and parse `file`; a file that cannot be read, is too large or is not UTF-8
    text is a problem too."""
    source = YamlSource(file=file)
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return _unparsed(source, Problem(file, 0, f"cannot read: {exc.strerror}"))
    if len(raw) > MAX_FILE_BYTES:
        message = f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a configuration file"
        return _unparsed(source, Problem(file, 0, message))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        message = (
            f"not UTF-8 text: byte 0x{byte:02x} cannot be decoded ({exc.reason}); "
            "is it a binary file, or text in another encoding?"
        )
        return _unparsed(source, Problem(file, line, message))
    return parse_yaml(text, file)


def _unparsed(source: YamlSource, problem: Problem) -> YamlSource:
    source.problems.append(problem)
    source.parsed = False
    return source


def _character_problem(file: Path, text: str, exc: yaml.reader.ReaderError) -> Problem:
    line = text.count("\n", 0, exc.position) + 1
    code = exc.character if isinstance(exc.character, int) else 0
    return Problem(
        file,
        line,
        f"the character U+{code:04X} is not allowed in YAML text: is it a binary file?",
    )


def describe_key(key: Any) -> str:
    """A key for messages, quoted; control characters escaped so that it cannot act on
    the terminal or break the line."""
    return f"'{escaped(key)}'" if isinstance(key, str) else str(key)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_CORE) if tag.startswith(_CORE) else tag


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that the gateway does not take: aliases or nesting beyond the limits."""


def _start(event: Event) -> Mark | None:
    """Where `event` starts. The pure-Python loader makes `yaml.error.Mark`s (the stubs
    also allow libyaml's, which only the C loader makes)."""
    mark = event.start_mark
    return mark if isinstance(mark, Mark) else None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with a budget for what aliases expand to and a limit on
    nesting, both enforced while composing (no value is built past them).

    An alias is a reference to its anchor's node: it costs the values of that node once
    expanded, counted without expanding anything (the size of each node is computed
    once, from the sizes of its children).
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._alias_values = 0
        self._measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, height)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # types-PyYAML leaves Parser.peek_event unannotated; there is always an event here.
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)
            assert node is not None  # an alias is composed to its anchor's node
            self._count_alias(event, node)
            return node
        if not isinstance(event, CollectionStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                None,
                None,
                f"lists and mappings nested more than {MAX_DEPTH} levels deep",
                _start(event),
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        return node

    def _count_alias(self, event: AliasEvent, node: Node) -> None:
        if isinstance(node, CollectionNode) and node.end_mark is None:
            return  # an alias inside its own anchor: the converter reports it
        values, height = self._measure(node, set())
        self._alias_values += values
        anchor = f"alias *{event.anchor} (anchor &{event.anchor} at line "
        anchor += f"{node.start_mark.line + 1})"
        if self._alias_values > MAX_ALIAS_VALUES:
            raise _Refused(
                None,
                None,
                f"{anchor} expands to {values} values: this file's aliases would add more "
                f"than {MAX_ALIAS_VALUES} in all, the limit (an alias bomb?)",
                _start(event),
            )
        if self._depth + height > MAX_DEPTH:
            raise _Refused(
                None,
                None,
                f"{anchor} nests lists and mappings more than {MAX_DEPTH} levels deep",
                _start(event),
            )

    def _measure(self, node: Node, active: set[int]) -> tuple[int, int]:
        """(values, levels of lists and mappings) of `node`, its aliases expanded."""
        if not isinstance(node, CollectionNode):
            return 1, 0
        key = id(node)
        known = self._measured.get(key)
        if known is not None:
            return known
        if key in active or node.end_mark is None:
            return 1, 1  # recursive, or still being composed: the converter reports it
        children: list[Node] = node.value
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        active.add(key)
        values, height = 1, 0
        for child in children:
            child_values, child_height = self._measure(child, active)
            values += child_values
            height = max(height, child_height)
        active.discard(key)
        self._measured[key] = (values, height + 1)
        return values, height + 1


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
