"""Conversion between `Transfer` objects and row tuples (both backends store the same
values: text, integers, reals).

Every value is checked and converted when a row is encoded, in the caller's task: a bad
value (a naive datetime, a lone surrogate in a file name, a non-JSON transfer info) then
fails the one call that carries it instead of the whole batch it would have joined.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gatewayd.model import ErrorCode, Status, Step, TaskSpec, Transfer

Encoder = Callable[[str, Any], Any]
Decoder = Callable[[Any], Any]


def encode_time(value: datetime) -> str:
    """UTC, fixed width, microseconds always present: text order is time order."""
    if value.tzinfo is not UTC:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes aware datetimes")
        value = value.astimezone(UTC)
    # isoformat of a UTC datetime ends in "+00:00"; years before 1000 do not occur.
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# Built once: json.dumps with options builds a new encoder on every call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_json(value: Any) -> str:
    """Compact JSON text; raises TypeError for values JSON cannot carry."""
    return _text("json", _JSON.encode(value))


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected str, got {type(value).__name__}")
    if value.isascii():  # most values: valid UTF-8 without encoding them to see
        return value
    # SQLite only stores valid UTF-8; a lone surrogate would fail the whole batch later.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name}: not valid Unicode text ({exc.reason})") from None
    return value


def _opt_text(name: str, value: Any) -> str | None:
    return None if value is None else _text(name, value)


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, got {type(value).__name__}")
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{name}: {value} does not fit in 64 bits")
    return value


def _opt_int(name: str, value: Any) -> int | None:
    return None if value is None else _int(name, value)


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def _bool(name: str, value: Any) -> int:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected bool, got {type(value).__name__}")
    return int(value)


def _time(name: str, value: Any) -> str:
    if not isinstance(value, datetime):
        raise TypeError(f"{name}: expected datetime, got {type(value).__name__}")
    return encode_time(value)


def _opt_time(name: str, value: Any) -> str | None:
    return None if value is None else _time(name, value)


def _enum(cls: type[StrEnum]) -> Encoder:
    def encode(name: str, value: Any) -> str:
        if type(value) is cls:
            return value.value
        # Accepts the plain string too, as long as it names a member.
        return cls(value).value

    return encode


def _info(name: str, value: Any) -> str:
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected dict, got {type(value).__name__}")
    return encode_json(value) if value else "{}"


def _chain(name: str, value: Any) -> str:
    if not value:
        return "[]"
    if not all(isinstance(task, TaskSpec) for task in value):
        raise TypeError(f"{name}: expected a list of TaskSpec")
    return encode_json([task.to_json() for task in value])


def _same(value: Any) -> Any:
    return value


def _opt_decode_time(value: str | None) -> datetime | None:
    return None if value is None else decode_time(value)


def _decode_chain(value: str) -> list[TaskSpec]:
    return [TaskSpec.from_json(item) for item in json.loads(value)]


_PLAIN_TEXT = (_text, _same)

# One entry per field of `Transfer`, in the dataclass's order (checked below).
_FIELDS: dict[str, tuple[Encoder, Decoder]] = {
    "rule": _PLAIN_TEXT,
    "is_server": (_bool, bool),
    "is_send": (_bool, bool),
    "requester": _PLAIN_TEXT,
    "requested": _PLAIN_TEXT,
    "protocol": _PLAIN_TEXT,
    "id": (_opt_int, _same),
    "remote_id": _PLAIN_TEXT,
    "follow_id": _PLAIN_TEXT,
    "parent_id": (_opt_int, _same),
    "account": (_opt_text, _same),
    "partner": (_opt_text, _same),
    "src_filename": _PLAIN_TEXT,
    "dest_filename": _PLAIN_TEXT,
    "local_filepath": _PLAIN_TEXT,
    "remote_filepath": _PLAIN_TEXT,
    "tmp_filepath": _PLAIN_TEXT,
    "filesize": (_int, _same),
    "start": (_opt_time, _opt_decode_time),
    "stop": (_opt_time, _opt_decode_time),
    "status": (_enum(Status), Status),
    "step": (_enum(Step), Step),
    "progress": (_int, _same),
    "task_number": (_int, _same),
    "error_code": (_enum(ErrorCode), ErrorCode),
    "error_msg": _PLAIN_TEXT,
    "error_step": (_enum(Step), Step),
    "transfer_info": (_info, json.loads),
    "remaining_attempts": (_int, _same),
    "next_attempt": (_opt_time, _opt_decode_time),
    "next_retry_delay": (_int, _same),
    "retry_increment_factor": (_float, float),
    "pre_tasks": (_chain, _decode_chain),
    "post_tasks": (_chain, _decode_chain),
    "error_tasks": (_chain, _decode_chain),
    "sha256": _PLAIN_TEXT,
    "created": (_opt_time, _opt_decode_time),
    "updated": (_opt_time, _opt_decode_time),
    "owner": (_opt_text, _same),
    "taken_over_by": (_opt_text, _same),
    "taken_over_at": (_opt_time, _opt_decode_time),
}

_DATACLASS_FIELDS = tuple(f.name for f in dataclasses.fields(Transfer))
if tuple(_FIELDS) != _DATACLASS_FIELDS:  # pragma: no cover - caught by any import
    raise RuntimeError(
        "gatewayd.store.codec is out of date with Transfer: "
        f"missing {sorted(set(_DATACLASS_FIELDS) - set(_FIELDS))}, "
        f"extra {sorted(set(_FIELDS) - set(_DATACLASS_FIELDS))}"
    )

# Column names equal field names; a migration adding a field adds the column too.
COLUMNS: tuple[str, ...] = _DATACLASS_FIELDS
# What a transfer is from its insertion on: who asked what, under which rule, with
# which chains. A save never rewrites them: fewer values to encode (the chains are
# JSON) and fewer columns for the database to compare, three saves per small file.
INSERT_ONLY_COLUMNS: frozenset[str] = frozenset(
    {
        "id", "created", "rule", "is_server", "is_send", "requester", "account",
        "partner", "parent_id", "pre_tasks", "post_tasks", "error_tasks",
    }
)  # fmt: skip
# What a save rewrites.
UPDATE_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in INSERT_ONLY_COLUMNS)

_ENCODERS = tuple(_FIELDS[c][0] for c in COLUMNS)
_DECODERS = tuple(_FIELDS[c][1] for c in COLUMNS)
_UPDATE_ENCODERS = tuple((c, _FIELDS[c][0]) for c in UPDATE_COLUMNS)
_ROW_ENCODERS = tuple(zip(COLUMNS, _ENCODERS, strict=True))


def encode_row(transfer: Transfer) -> tuple[Any, ...]:
    """All columns of `transfer`, in `COLUMNS` order."""
    return tuple([encode(name, getattr(transfer, name)) for name, encode in _ROW_ENCODERS])


def encode_update(transfer: Transfer) -> tuple[Any, ...]:
    """The `UPDATE_COLUMNS` values of `transfer` followed by its id."""
    if transfer.id is None:
        raise ValueError("cannot save a transfer that was never inserted (id is None)")
    values = [encode(name, getattr(transfer, name)) for name, encode in _UPDATE_ENCODERS]
    values.append(transfer.id)
    return tuple(values)


def decode_row(row: Iterable[Any]) -> Transfer:
    """A `Transfer` from a row selected as `COLUMNS`."""
    return Transfer(
        **{name: decode(value) for name, decode, value in zip(COLUMNS, _DECODERS, row, strict=True)}
    )


AUDIT_COLUMNS = ("id", "at", "who", "action", "target", "details")


def encode_audit(
    at: datetime, who: str, action: str, target: str, details: Any
) -> tuple[str, str, str, str, str]:
    """An audit entry without its id, in `AUDIT_COLUMNS[1:]` order. Details that JSON
    cannot carry as such (datetimes, paths) are written as their text."""
    text = json.dumps(details, ensure_ascii=False, separators=(",", ":"), default=str)
    return (
        encode_time(at),
        _text("who", who),
        _text("action", action),
        _text("target", target),
        _text("details", text),
    )


def decode_audit(row: Iterable[Any]) -> dict[str, Any]:
    """An audit entry selected as `AUDIT_COLUMNS`."""
    entry = dict(zip(AUDIT_COLUMNS, row, strict=True))
    entry["at"] = decode_time(entry["at"])
    entry["details"] = json.loads(entry["details"])
    return entry
