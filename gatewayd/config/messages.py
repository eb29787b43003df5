"""Pydantic validation errors turned into plain-English problems at file:line.

Pydantic reports a location (`loc`) that mixes the keys of the input with the names of
union members it tried (`('allow', 'AllowConfig', 'accounts')`). Walking that location
through the parsed data tells them apart: a part that is a key (or index) of the data is
followed, any other part names a union member. For each union only the member that got
furthest into the data is kept; when every member failed on the value itself, the errors
become one "expected X or Y" message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gatewayd.config.problems import Problem
from gatewayd.config.yamlsource import DataPath, YamlSource, describe_key

M = TypeVar("M", bound=BaseModel)

# Values under these keys are never echoed back in messages.
_SENSITIVE = re.compile(r"password|secret|passphrase|token|private", re.IGNORECASE)

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "path_type": "a path",
    "none_required": "nothing",
    "date_type": "a date",
    "datetime_type": "a date and time",
}
_CHOICE_TYPES = frozenset({"literal_error", "enum"})
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be greater than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
}


_AT_PREFIX: Any = object()


def validate(
    model: type[M], source: YamlSource, prefix: DataPath = (), data: Any = _AT_PREFIX
) -> tuple[M | None, list[Problem]]:
    """Validate the value at `prefix` in `source` with `model`.

    `data` replaces that value when given (e.g. a mapping with some keys taken out).
    Returns the object, or None and the problems, each at the line of the offending key.
    """
    if data is _AT_PREFIX:
        data = value_at(source.data, prefix)
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, explain(exc.errors(include_url=False), source, prefix)


def explain(errors: Sequence[ErrorDetails], source: YamlSource, prefix: DataPath) -> list[Problem]:
    """Problems for pydantic `errors` raised while validating the value at `prefix`."""
    located = [_locate(error, source.data, prefix) for error in errors]
    located = [item for item in located if not _within(item.path, source.dropped)]
    plain, combined = _resolve(located)
    problems = [source.problem(item.line_path, _message(item)) for item in plain]
    problems += [source.problem(path, message) for path, message in combined]
    return problems


def value_at(data: Any, path: DataPath) -> Any:
    for part in path:
        data = data[part]
    return data


@dataclass(frozen=True)
class _Located:
    path: DataPath  # keys and indexes of the data; ends with the missing key for "missing"
    branches: tuple[tuple[int, str], ...]  # (length of `path` where it was taken, member)
    error: ErrorDetails
    is_key: bool = False  # the error is about the mapping key at `path`, not its value

    @property
    def line_path(self) -> DataPath:
        # A missing field is reported on the line of the mapping that lacks it.
        return self.path[:-1] if self.error["type"] == "missing" else self.path


def _locate(error: ErrorDetails, root: Any, prefix: DataPath) -> _Located:
    loc = (*prefix, *error["loc"])
    current = root
    path: list[Any] = []
    branches: list[tuple[int, str]] = []
    is_key = False
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if _is_child(current, part):
            path.append(part)
            current = current[part]
        elif last and error["type"] == "missing":
            path.append(part)
        elif last and part == "[key]":
            is_key = True
        else:
            branches.append((len(path), str(part)))
    return _Located(tuple(path), tuple(branches), error, is_key)


def _within(path: DataPath, dropped: set[DataPath]) -> bool:
    return any(path[:length] in dropped for length in range(len(path) + 1))


def _is_child(data: Any, part: Any) -> bool:
    if isinstance(data, dict):
        try:
            return part in data
        except TypeError:  # unhashable
            return False
    if isinstance(data, list):
        return isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(data)
    return False


def _score(item: _Located, depth: int) -> int:
    """How far a union member got: 0 when it rejected the value's type outright."""
    if len(item.path) > depth:
        return 1 + len(item.path) - depth
    kind = item.error["type"]
    if kind in _EXPECTED or kind in _CHOICE_TYPES or kind.endswith("_type"):
        return 0
    return 1


def _resolve(items: list[_Located]) -> tuple[list[_Located], list[tuple[DataPath, str]]]:
    """Keep, for each union, the errors of the member that fitted best (recursively).

    Returns the errors to report one by one, and one (path, message) for each union
    where no member fitted the value at all.
    """
    plain = [item for item in items if not item.branches]
    combined: list[tuple[DataPath, str]] = []
    unions: dict[DataPath, list[_Located]] = {}
    for item in items:
        if item.branches:
            unions.setdefault(item.path[: item.branches[0][0]], []).append(item)
    for point, group in unions.items():
        depth = len(point)
        members: dict[str, list[_Located]] = {}
        for item in group:
            members.setdefault(item.branches[0][1], []).append(item)
        # max() keeps the first of equals: the member declared first.
        best = max(members.values(), key=lambda errs: max(_score(e, depth) for e in errs))
        if max(_score(e, depth) for e in best) == 0:
            combined.append((point, _union_message(point, group)))
            continue
        more_plain, more_combined = _resolve(
            [_Located(e.path, e.branches[1:], e.error, e.is_key) for e in best]
        )
        plain += more_plain
        combined += more_combined
    return plain, combined


def _union_message(point: DataPath, group: list[_Located]) -> str:
    expected: list[str] = []
    for item in group:
        for option in _expectations(item.error):
            if option not in expected:
                expected.append(option)
    value = describe_value(group[0].error["input"], _is_sensitive(point))
    return f"{field_name(point)}expected {_join(expected, 'or')}, got {value}"


def _message(item: _Located) -> str:
    error = item.error
    kind = error["type"]
    if kind == "missing":
        return f"missing field {describe_key(item.path[-1])}"
    if kind == "extra_forbidden":
        return f"unknown key {describe_key(item.path[-1])}"
    sensitive = _is_sensitive(item.path)
    if item.is_key:
        key = describe_key(item.path[-1])
        return f"{field_name(item.path[:-1])}invalid key {key}: {_phrase(error, False)}"
    return f"{field_name(item.path)}{_phrase(error, sensitive)}"


def _phrase(error: ErrorDetails, sensitive: bool) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _CHOICE_TYPES:
        choices = _choices(str(ctx.get("expected", "")))
        if len(choices) == 1:
            return f"must be {choices[0]}"
        return f"must be one of {', '.join(choices)}"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe_value(error['input'], sensitive)}"
    if kind in _BOUNDS:
        key, template = _BOUNDS[kind]
        return template.format(ctx.get(key))
    if kind == "string_too_short":
        length = ctx.get("min_length", 1)
        return "must not be empty" if length == 1 else f"must be at least {length} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])


def _expectations(error: ErrorDetails) -> list[str]:
    kind = error["type"]
    if kind in _CHOICE_TYPES:
        return _choices(str((error.get("ctx") or {}).get("expected", "")))
    if kind in _EXPECTED:
        return [_EXPECTED[kind]]
    return [_phrase(error, True)]


def _choices(expected: str) -> list[str]:
    """`'send' or 'receive'` (pydantic's wording) -> ['send', 'receive']."""
    found = re.findall(r"'((?:[^'\\]|\\.)*)'|([^\s,']+)", expected)
    return [quoted or bare for quoted, bare in found if (quoted or bare) != "or"]


def _join(options: list[str], word: str) -> str:
    if len(options) <= 1:
        return "".join(options)
    return f"{', '.join(options[:-1])} {word} {options[-1]}"


def field_name(path: DataPath) -> str:
    """`'port': `, `'pre' item 2: `, or nothing for the top level."""
    items: list[int] = []
    rest = list(path)
    while rest and isinstance(rest[-1], int) and not isinstance(rest[-1], bool):
        items.insert(0, rest.pop())
    if not rest:
        return "top level: " if not items else f"item {items[0] + 1}: "
    name = describe_key(rest[-1])
    return name + "".join(f" item {i + 1}" for i in items) + ": "


def _is_sensitive(path: DataPath) -> bool:
    return any(isinstance(part, str) and _SENSITIVE.search(part) for part in path)


def describe_value(value: Any, sensitive: bool = False) -> str:
    """`string 'x'`, `integer 3`, `a list`, ...: what was found, for messages."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean" if sensitive else f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return "an integer" if sensitive else f"integer {value}"
    if isinstance(value, float):
        return "a number" if sensitive else f"number {value}"
    if isinstance(value, str):
        if sensitive:
            return "a string"
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, date):
        return "a date" if sensitive else f"date {value.isoformat()}"
    return f"a {type(value).__name__}"
