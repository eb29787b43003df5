"""Typed task arguments: static checks for check-config and conversions at run time.

Rules are YAML (or JSON from Waarp, where every argument is a string), so the kinds are
lenient the way users expect: a flag is `true` or `"true"`, a number may be `"1000"`, a
list may be a comma-separated string. A string holding a marker passes the static check
of any kind, since only its substituted value can be judged.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any, ClassVar

from gatewayd.errors import TaskError
from gatewayd.tasks.base import Task, TaskContext
from gatewayd.tasks.markers import has_markers


class Kind(Enum):
    TEXT = "a non-empty string"
    FLAG = "true or false"
    NUMBER = "a number"
    TEXT_LIST = "a string or a list of strings"
    MAPPING = "a mapping"
    ANY = "any value"


_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_wrong_kind(kind: Kind, value: Any) -> bool:
    """Whether `value` cannot be of `kind` whatever the markers it holds become."""
    if isinstance(value, str) and has_markers(value):
        return False
    match kind:
        case Kind.TEXT:
            return not isinstance(value, str) or value == ""
        case Kind.FLAG:
            return not (
                isinstance(value, bool)
                or (isinstance(value, str) and value.lower() in _TRUE + _FALSE)
            )
        case Kind.NUMBER:
            if isinstance(value, bool):
                return True
            if isinstance(value, str):
                return not _is_number_text(value)
            return not isinstance(value, int | float)
        case Kind.TEXT_LIST:
            if isinstance(value, list):
                return not all(isinstance(item, str) for item in value)
            return not isinstance(value, str)
        case Kind.MAPPING:
            return not isinstance(value, dict)
        case Kind.ANY:
            return False


class ArgsTask(Task):
    """A task whose arguments have kinds, checked statically and converted at run time."""

    arg_kinds: ClassVar[dict[str, Kind]] = {}

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        for name, value in args.items():
            kind = cls.arg_kinds.get(name)
            if kind is not None and is_wrong_kind(kind, value):
                problems.append(f"argument '{name}' must be {kind.value}")
        return problems

    def fail(self, message: str) -> TaskError:
        """A TaskError whose message starts with the task type."""
        return TaskError(f"{self.type_name}: {message}")

    # Conversions of substituted arguments; they raise TaskError for bad values.

    def text(self, args: dict[str, Any], name: str, default: str | None = None) -> str:
        value = args.get(name, default)
        if value is None:
            raise self.fail(f"missing argument '{name}'")
        if not isinstance(value, str) or value == "":
            raise self.fail(f"argument '{name}' must be {Kind.TEXT.value}")
        return value

    def flag(self, args: dict[str, Any], name: str, default: bool = False) -> bool:
        value = args.get(name, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise self.fail(f"argument '{name}' must be {Kind.FLAG.value}, not {value!r}")

    def number(self, args: dict[str, Any], name: str) -> float | None:
        value = args.get(name)
        if value is None:
            return None
        if isinstance(value, str) and _is_number_text(value):
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self.fail(f"argument '{name}' must be {Kind.NUMBER.value}, not {value!r}")

    def path(self, ctx: TaskContext, value: str) -> str:
        """An absolute, normalised path; relative ones are taken from `ctx.home_path`."""
        if not os.path.isabs(value):
            if not ctx.home_path:
                raise self.fail(f"relative path {value!r} and no home path to resolve it")
            value = os.path.join(ctx.home_path, value)
        return os.path.normpath(value)
