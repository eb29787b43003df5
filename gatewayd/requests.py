"""Typed requests: what every front-end asks the core for, once parsed.

The admin API (and the CLI through it), R66's `/v2`, Tapis's `/v3`, the TRANSFER task
and, later, watchers each build a `TransferRequest` (or a `PreregisterRequest`) from
their own wire format; the transfer service checks it against the configuration.
Field names on the wire are the admin API's (`isSend`, `nbOfAttempts`, ...); a
front-end with names of its own translates `FieldError.field` back to them.

`parse` reports every problem at once: those of the shape here (unknown field, missing,
wrong type, out of range), and, through the partial request it returns alongside, lets
the service add its own (unknown rule, partner not allowed, ...) in the same answer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError


@dataclass(frozen=True)
class FieldError:
    """One problem of a request: the field it is about (its name on the admin API), a
    stable code, a message."""

    field: str
    code: str  # unknown_field, missing, bad_value, unknown_rule, unknown_partner, not_allowed
    message: str


class RequestError(Exception):
    """A request with problems; nothing was changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


def _when(value: Any) -> Any:
    """RFC 3339 text (a trailing `Z` too) or a datetime; anything else is refused."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an RFC 3339 date") from None
    if isinstance(value, datetime):
        return value
    raise ValueError("must be an RFC 3339 date")


When = Annotated[datetime, BeforeValidator(_when)]
Seconds = Annotated[float, Field(strict=False)]  # JSON integers are fine too


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class TransferRequest(_Request):
    """A client transfer: send `file` (in the rule's folder) to `partner`, or receive
    `file` (on the partner) into the rule's folder as `output`."""

    rule: str
    partner: str
    file: str
    account: str | None = None
    is_send: bool | None = Field(None, alias="isSend")
    output: str | None = None
    # Naive times are in the gateway's time zone (the service knows it).
    start: When | None = None
    transfer_info: dict[str, Any] = Field(default_factory=dict, alias="transferInfo")
    attempts: Annotated[int, Field(ge=0)] | None = Field(None, alias="nbOfAttempts")
    first_retry_delay: Annotated[Seconds, Field(ge=0)] | None = Field(None, alias="firstRetryDelay")
    retry_increment_factor: Annotated[Seconds, Field(ge=1)] | None = Field(
        None, alias="retryIncrementFactor"
    )


class PreregisterRequest(_Request):
    """A server transfer announced before its partner comes: `account` will upload (or
    download) `file` under `rule` before it expires."""

    rule: str
    account: str
    file: str
    valid_for: Annotated[Seconds, Field(gt=0)] | None = Field(None, alias="validFor")
    expires: When | None = None
    transfer_info: dict[str, Any] = Field(default_factory=dict, alias="transferInfo")


AREAS = ("transfers", "servers", "partners", "rules", "users", "administration")
Area = Literal["transfers", "servers", "partners", "rules", "users", "administration"]
Letters = Annotated[str, Field(pattern=r"^[rwd]*$")]
DEFAULT_TOKEN_LIFETIME = 86400  # seconds
MAX_TOKEN_LIFETIME = 366 * 86400


class TokenRequest(_Request):
    """A bearer token of the admin API, for the calling user: its lifetime, the part
    of the user's permissions it carries (all of them by default), a comment, and
    whether it may list and revoke tokens."""

    expires_in: Annotated[Seconds, Field(gt=0, le=MAX_TOKEN_LIFETIME)] = Field(
        DEFAULT_TOKEN_LIFETIME, alias="expiresIn"
    )
    permissions: dict[Area, Letters] | None = None
    comment: Annotated[str, Field(max_length=200)] = ""
    manage_tokens: bool = Field(False, alias="manageTokens")


R = TypeVar("R", bound=_Request)


@dataclass(frozen=True)
class Parsed(Generic[R]):
    """What `parse` found: the request (partial when there are errors: the fields in
    error are left at their defaults, required ones at None) and its problems."""

    request: R
    errors: list[FieldError]

    def check(self) -> R:
        """The request, or RequestError with every problem."""
        if self.errors:
            raise RequestError(self.errors)
        return self.request


def _wire_name(model: type[_Request], key: str) -> str:
    info = model.model_fields.get(key)
    return info.alias or key if info is not None else key


def _error(model: type[_Request], err: dict[str, Any]) -> FieldError:
    key = str(err["loc"][0]) if err["loc"] else ""
    field = _wire_name(model, key)
    kind = err["type"]
    if kind == "extra_forbidden":
        return FieldError(field, "unknown_field", f"unknown field '{field}'")
    if kind == "missing":
        return FieldError(field, "missing", f"missing field '{field}'")
    if kind.endswith("_type") or kind in ("bool_parsing", "int_parsing", "float_parsing"):
        return FieldError(field, "bad_value", f"'{field}' has the wrong type")
    message = str(err["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in err["loc"][1:] if part != "[key]")
    if where:  # inside a mapping: say which entry
        field_path = f"{field}.{where}"
        if kind == "literal_error":
            return FieldError(field, "bad_value", f"'{field_path}': unknown key ({message})")
        if kind == "string_pattern_mismatch":
            message = "must be made of the letters r, w and d"
        return FieldError(field, "bad_value", f"'{field_path}': {message}")
    if kind in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        bound = next(iter(err.get("ctx", {}).items()), ("", ""))
        sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}.get(bound[0], "")
        message = f"must be {sign} {bound[1]}"
    return FieldError(field, "bad_value", f"'{field}': {message}")


def parse(model: type[R], data: Any) -> Parsed[R]:
    """Validate `data` (a mapping, with the admin API's field names or the model's)
    into `model`; every problem is reported, with the field's API name."""
    if not isinstance(data, dict):
        # pydantic's mypy plugin types model_construct on `type[R]` as returning the bound
        # (_Request), not R: it builds a signature per class and loses the type variable.
        partial: R = model.model_construct()  # type: ignore[assignment]
        return Parsed(partial, [FieldError("", "bad_value", "the request must be a JSON object")])
    data = {k: v for k, v in data.items() if v is not None}  # JSON null: not given
    try:
        return Parsed(model.model_validate(data), [])
    except ValidationError as exc:
        found = exc.errors()
    errors = [_error(model, dict(e)) for e in found]
    bad = {str(e["loc"][0]) for e in found if e["loc"]}
    fields: dict[str, Any] = {}
    for key, value in data.items():
        name = next((n for n, f in model.model_fields.items() if key in (n, f.alias)), None)
        if name is not None and key not in bad:
            fields[name] = _field_adapter(model, name).validate_python(value)
    partial = model.model_construct(**fields)  # type: ignore[assignment]  # as above
    for name, info in model.model_fields.items():  # required fields missing or bad: None
        if name not in fields and info.is_required():
            object.__setattr__(partial, name, None)
    return Parsed(partial, errors)


@functools.cache
def _field_adapter(model: type[_Request], name: str) -> TypeAdapter[Any]:
    """A validator of one field alone (for the fields of a partial request)."""
    info = model.model_fields[name]
    kind: Any = info.annotation
    if info.metadata:
        kind = Annotated[(kind, *info.metadata)]
    return TypeAdapter(kind, config=ConfigDict(strict=True))
