"""Substitution markers: `#TRUEFULLPATH#`, `#DATE#`, `#TI_<key>#`, ... in task arguments.

The markers are Waarp's (shared/reference.md), with these choices where Waarp is vague
or buggy:

- `#ORIGINALFULLPATH#` is, for a send, the local file (`transfer.local_filepath`, as
  Waarp does); for a receive, the name the file had on the sending side:
  `transfer.remote_filepath`, else `src_filename`, else `dest_filename`.
  `#ORIGINALFILENAME#` is its last path component.
- `#FILESIZE#` is `transfer.filesize` (-1 when unknown); no file is looked at.
- `#REMOTEHOST#` is `ctx.remote_host`, or else the transfer's account (server transfers)
  or partner (client transfers); `#LOCALHOST#` is `ctx.local_host`;
  `#REQUESTERHOST#` / `#REQUESTEDHOST#` are the transfer's requester / requested.
- `#ERRORMSG#`, `#ERRORCODE#` (one R66 letter) and `#ERRORSTRCODE#` (the name, e.g.
  `TeDataTransfer`; Waarp wrongly gives the message) come from `ctx.error` while the error
  chain runs, else from the transfer row.
- `#DATE#`, `#HOUR#` and `#TIMESTAMP(format)#` read `ctx.now()` once per call, in
  `ctx.timezone` (a naive `now()` is taken as already in that zone). The format uses
  Waarp's tokens, matched longest first in one pass (Waarp replaces them one after the
  other, so that `MMMM` -> `January` can be mangled by later tokens); any other character
  is kept as is. Month and day names are English whatever the locale.
- `#TI_<key>#` is `transfer.transfer_info[key]`: strings as they are, other values as
  JSON, and the empty string when the key is missing.

Markers are case-sensitive; text that is not a marker (`a#b`, a lone `#`, `#foo#`) is
left unchanged. `unknown_markers` reports marker-looking text for check-config.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gatewayd.model import ErrorCode, Transfer
from gatewayd.tasks.base import TaskContext

__all__ = [
    "DEFAULT_TIMESTAMP_FORMAT",
    "ENV_PREFIX",
    "format_timestamp",
    "has_markers",
    "marker_env",
    "marker_names",
    "substitute",
    "substitute_args",
    "unknown_markers",
]

DEFAULT_TIMESTAMP_FORMAT = "YYYY-MM-DD_HHmmss"
ENV_PREFIX = "GATEWAYD_"

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _hour12(moment: datetime) -> int:
    return moment.hour % 12 or 12


def _offset(moment: datetime, colon: bool) -> str:
    delta = moment.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta is not None else 0
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{minutes:02d}" if colon else f"{sign}{hours:02d}{minutes:02d}"


_TIME_TOKENS: dict[str, Callable[[datetime], str]] = {
    "YYYY": lambda d: f"{d.year:04d}",
    "YY": lambda d: f"{d.year % 100:02d}",
    "MMMM": lambda d: _MONTHS[d.month - 1],
    "MMM": lambda d: _MONTHS[d.month - 1][:3],
    "MM": lambda d: f"{d.month:02d}",
    "M": lambda d: str(d.month),
    "DD": lambda d: f"{d.day:02d}",
    "D": lambda d: str(d.day),
    "dddd": lambda d: _DAYS[d.weekday()],
    "ddd": lambda d: _DAYS[d.weekday()][:3],
    "HH": lambda d: f"{d.hour:02d}",
    "hh": lambda d: f"{_hour12(d):02d}",
    "h": lambda d: str(_hour12(d)),
    "PM": lambda d: "PM" if d.hour >= 12 else "AM",
    "pm": lambda d: "pm" if d.hour >= 12 else "am",
    "mm": lambda d: f"{d.minute:02d}",
    "m": lambda d: str(d.minute),
    "ss": lambda d: f"{d.second:02d}",
    "s": lambda d: str(d.second),
    "tz": lambda d: d.tzname() or "",
    "zz": lambda d: _offset(d, colon=True),
    "z": lambda d: _offset(d, colon=False),
}
_TIME_TOKEN_RE = re.compile(
    "|".join(re.escape(token) for token in sorted(_TIME_TOKENS, key=len, reverse=True))
)


def format_timestamp(fmt: str, moment: datetime) -> str:
    """`moment` formatted with Waarp's timestamp tokens (empty format: the default)."""
    return _TIME_TOKEN_RE.sub(
        lambda match: _TIME_TOKENS[match.group(0)](moment), fmt or DEFAULT_TIMESTAMP_FORMAT
    )


def _local_now(ctx: TaskContext) -> datetime:
    now = ctx.now()
    if now.tzinfo is None:
        return now.replace(tzinfo=ctx.timezone)
    return now.astimezone(ctx.timezone)


def _original_path(transfer: Transfer) -> str:
    if transfer.is_send:
        return transfer.local_filepath
    return transfer.remote_filepath or transfer.src_filename or transfer.dest_filename


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def _stem_and_extension(path: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(_basename(path))
    return stem, ext


def _error_code(ctx: TaskContext) -> ErrorCode:
    return ctx.error.code if ctx.error is not None else ctx.transfer.error_code


def _error_msg(ctx: TaskContext) -> str:
    return ctx.error.message if ctx.error is not None else ctx.transfer.error_msg


def _remote_host(ctx: TaskContext) -> str:
    if ctx.remote_host:
        return ctx.remote_host
    transfer = ctx.transfer
    return (transfer.account if transfer.is_server else transfer.partner) or ""


# Marker name -> value. Each function gets the context and the time of the substitution.
_Getter = Callable[[TaskContext, datetime], str]
_SIMPLE: dict[str, _Getter] = {
    "TRUEFULLPATH": lambda c, _: c.transfer.local_filepath,
    "TRUEFILENAME": lambda c, _: _basename(c.transfer.local_filepath),
    "BASEFILENAME": lambda c, _: _stem_and_extension(c.transfer.local_filepath)[0],
    "FILEEXTENSION": lambda c, _: _stem_and_extension(c.transfer.local_filepath)[1],
    "ORIGINALFULLPATH": lambda c, _: _original_path(c.transfer),
    "ORIGINALFILENAME": lambda c, _: _basename(_original_path(c.transfer)),
    "FILESIZE": lambda c, _: str(c.transfer.filesize),
    "INPATH": lambda c, _: c.in_path,
    "OUTPATH": lambda c, _: c.out_path,
    "WORKPATH": lambda c, _: c.work_path,
    "HOMEPATH": lambda c, _: c.home_path,
    "RULE": lambda c, _: c.transfer.rule,
    "DATE": lambda _, now: format_timestamp("YYYYMMDD", now),
    "HOUR": lambda _, now: format_timestamp("HHmmss", now),
    "REMOTEHOST": lambda c, _: _remote_host(c),
    "LOCALHOST": lambda c, _: c.local_host,
    "TRANSFERID": lambda c, _: "" if c.transfer.id is None else str(c.transfer.id),
    "REQUESTERHOST": lambda c, _: c.transfer.requester,
    "REQUESTEDHOST": lambda c, _: c.transfer.requested,
    "ERRORMSG": lambda c, _: _error_msg(c),
    "ERRORCODE": lambda c, _: _error_code(c).r66,
    "ERRORSTRCODE": lambda c, _: str(_error_code(c)),
}

_MARKER_RE = re.compile(
    "#(?:"
    f"(?P<name>{'|'.join(sorted(_SIMPLE, key=len, reverse=True))})"
    r"|TIMESTAMP(?:\((?P<format>[^#]*)\))?"
    r"|TI_(?P<info>[^#\s]+)"
    ")#"
)
# Anything that looks like a marker, for check-config: a word between two hashes.
_CANDIDATE_RE = re.compile(r"#[A-Za-z][A-Za-z0-9_]*(?:\([^#]*\))?#")


def marker_names() -> list[str]:
    """Every marker, as written in a rule (`#TI_<key>#` shown with `<key>`)."""
    return sorted(
        [f"#{name}#" for name in _SIMPLE] + ["#TIMESTAMP#", "#TIMESTAMP(format)#", "#TI_<key>#"]
    )


def _info_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _replace(match: re.Match[str], ctx: TaskContext, now: datetime) -> str:
    name = match.group("name")
    if name is not None:
        return _SIMPLE[name](ctx, now)
    info_key = match.group("info")
    if info_key is not None:
        info = ctx.transfer.transfer_info
        return _info_text(info[info_key]) if info_key in info else ""
    return format_timestamp(match.group("format") or "", now)


def has_markers(text: str) -> bool:
    """Whether `text` holds at least one known marker."""
    return "#" in text and _MARKER_RE.search(text) is not None


def substitute(text: str, ctx: TaskContext) -> str:
    """`text` with every marker replaced by its value for this transfer."""
    if "#" not in text:
        return text
    now = _local_now(ctx)
    return _MARKER_RE.sub(lambda match: _replace(match, ctx, now), text)


def substitute_args(args: Any, ctx: TaskContext) -> Any:
    """A copy of `args` with markers substituted in every string, at any depth.

    Dict keys are kept as they are; values other than strings, lists, tuples and dicts
    are returned unchanged.
    """
    if isinstance(args, str):
        return substitute(args, ctx)
    if isinstance(args, dict):
        return {key: substitute_args(value, ctx) for key, value in args.items()}
    if isinstance(args, list | tuple):
        return type(args)(substitute_args(value, ctx) for value in args)
    return args


def _env_key(key: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", key.upper())


def marker_env(ctx: TaskContext) -> dict[str, str]:
    """The markers as environment variables for EXEC programs.

    - `GATEWAYD_<NAME>` for every marker without argument (`GATEWAYD_TRUEFULLPATH`,
      `GATEWAYD_DATE`, `GATEWAYD_ERRORCODE`, ...); `GATEWAYD_TIMESTAMP` in the default
      format;
    - `GATEWAYD_TI_<KEY>` for each transfer info entry, the key upper-cased and every
      character other than A-Z, 0-9 and `_` replaced by `_` (keys that then collide keep
      the value of the last one in sorted order);
    - `GATEWAYD_TRANSFERINFO`: the whole transfer info as a JSON object.
    """
    now = _local_now(ctx)
    env = {f"{ENV_PREFIX}{name}": getter(ctx, now) for name, getter in _SIMPLE.items()}
    env[f"{ENV_PREFIX}TIMESTAMP"] = format_timestamp(DEFAULT_TIMESTAMP_FORMAT, now)
    info = ctx.transfer.transfer_info
    for key in sorted(info, key=str):
        env[f"{ENV_PREFIX}TI_{_env_key(str(key))}"] = _info_text(info[key])
    env[f"{ENV_PREFIX}TRANSFERINFO"] = json.dumps(info, ensure_ascii=False, default=str)
    # NUL cannot travel in an environment variable.
    return {key: value.replace("\0", "") for key, value in env.items()}


def unknown_markers(text: str) -> list[str]:
    """Marker-looking words of `text` that are not markers, e.g. `#DAET#` or `#date#`.

    A marker-looking word is a letter then letters, digits or `_` between two `#`
    (optionally with a `(...)` argument). `a#b`, a lone `#` or `#1#` are plain text;
    `#TI_key#` and `#TIMESTAMP(YYYY)#` are markers. Each unknown word is listed once, in
    order of appearance.
    """
    found: list[str] = []
    position = text.find("#")
    while position != -1:
        known = _MARKER_RE.match(text, position)
        if known is not None:
            position = text.find("#", known.end())
            continue
        candidate = _CANDIDATE_RE.match(text, position)
        if candidate is not None and candidate.group(0) not in found:
            found.append(candidate.group(0))
        # The closing `#` of a non-marker may open a real one (`#foo#DATE#`), as it does
        # when substituting: look again from the next character.
        position = text.find("#", position + 1)
    return found
