"""Logging set-up: structlog in front, the standard library's logging routed through it.

Every line carries an ISO 8601 UTC timestamp, the level and the logger name, plus whatever
the caller bound with `structlog.contextvars.bind_contextvars(transfer_id=..., rule=...)`.
The output is either a human-readable console line or one JSON object per line.

Secrets are redacted by a processor that every line passes through, whichever API logged
it: values of keys that look secret (`password`, `token`, `authorization`, ...), at any
depth, and password hashes or private keys wherever they appear in a string. It is a last
line of defence, not a licence to log secrets.

Every text in an event may come from outside (logins, file names, paths, user agents,
an exception's message), so every one is escaped once, here, whichever renderer writes
it: control characters (C0, DEL, C1 such as NEL and CSI), line and paragraph separators
and bidi controls become visible escapes (`gatewayd.names.escaped`), so that no value
can act on a terminal, reorder a line, or start a fake log line. Tracebacks keep their
line breaks; the console renderer indents their lines, which therefore never look like
the start of a log line.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from gatewayd.config.schema import LoggingConfig
from gatewayd.names import escaped

__all__ = [
    "REDACTED",
    "configure_logging",
    "escape_text",
    "escape_values",
    "is_secret_key",
    "redact",
    "redact_secrets",
]

REDACTED = "[REDACTED]"

# Matched against a key lower-cased, anywhere in it: `db_password`, `X-Auth-Token`,
# `private_key_pem` and `Authorization` are all caught.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?"
    r"|pwd|secret|token|authori[sz]ation|cookie|credential|session[_-]?id"
    r"|private[_-]?key|api[_-]?key|ssh[_-]?key|key[_-]?(data|material)|signing[_-]?key"
)
# Whole keys that are secret on their own but too short to match inside other words.
_SECRET_EXACT = frozenset({"key", "auth", "pw", "pin", "otp"})

# Secrets that are recognisable by their shape, wherever they land (a message, an
# exception text, a list): password hashes and PEM private keys.
_SECRET_VALUE = re.compile(
    r"\$argon2(id|i|d)\$[^\s'\"]+"
    r"|\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}"
    r"|-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)",
    re.DOTALL,
)

_MAX_DEPTH = 8
# Values with no text inside, passed as they are (most of a line's values).
_SCALARS = frozenset({int, float, bool, type(None)})


def is_secret_key(key: object) -> bool:
    """Whether a value stored under `key` must never be logged."""
    return isinstance(key, str) and _is_secret_name(key)


# Keys are the code's own few names, met on every line: asked of the pattern once each.
@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SECRET_EXACT or _SECRET_KEY.search(lowered) is not None


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` with secret-looking keys and secret-shaped strings redacted.

    Walks dicts, lists, tuples and sets; leaves other objects alone except strings.
    """
    if type(value) in _SCALARS:
        return value
    if _depth > _MAX_DEPTH:
        return value
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value) if "$" in value or "-----" in value else value
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_key(k) else redact(v, _depth + 1)) for k, v in value.items()
        }
    # Exact types only: a namedtuple or another subclass may not rebuild from an iterable.
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(redact(item, _depth + 1) for item in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: `redact` applied to the whole event."""
    redacted: EventDict = redact(event_dict)
    return redacted


# Fields holding multi-line text made by Python itself (tracebacks, stacks): their line
# breaks are kept, every other control is escaped.
_MULTILINE = frozenset({"exception", "stack"})
# The ProcessorFormatter's own entries (the LogRecord...), not text to show.
_META = frozenset({"_record", "_from_structlog"})
# What the console renderer puts before each line of a traceback.
TRACEBACK_INDENT = "  "


def escape_text(value: Any, _depth: int = 0) -> Any:
    """A copy of `value` in which every string (and string key), at any depth, is
    `escaped`; other objects are left to the renderer (which shows them by `repr`,
    itself free of raw controls)."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, str):
        # Fast path: nothing to escape in most texts (a non-printable character is a
        # superset of what `escaped` rewrites).
        return value if value.isprintable() and "\\" not in value else escaped(value)
    if _depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {escape_text(k, _depth + 1): escape_text(v, _depth + 1) for k, v in value.items()}
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(escape_text(item, _depth + 1) for item in value)
    return value


def _escape_lines(text: str) -> str:
    return "\n".join(escape_text(line) for line in text.split("\n"))


def escape_values(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: every text of the event escaped (the event's text itself,
    every value, keys too); tracebacks keep their line breaks."""
    out: EventDict = {}
    for key, value in event_dict.items():
        if key in _META:
            out[key] = value
        elif key in _MULTILINE and isinstance(value, str):
            out[key] = _escape_lines(value)
        else:
            out[escape_text(key)] = escape_text(value)
    return out


def _indent_tracebacks(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Console only: every line of a traceback or stack starts indented, so that a line
    break inside an exception's message never starts what looks like a log line."""
    for key in _MULTILINE:
        value = event_dict.get(key)
        if isinstance(value, str):
            event_dict[key] = "\n".join(TRACEBACK_INDENT + line for line in value.split("\n"))
    return event_dict


class _GatewaydHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler we install, so that configuring again replaces only ours."""


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> None:
    """Send structlog and standard-library logging to `stream` (default: stderr).

    May be called again (a reload, a test): the previous gatewayd handler is replaced,
    handlers installed by others (pytest's) are kept.
    """
    stream = stream if stream is not None else sys.stderr
    level = getattr(logging, config.level.upper())

    # Run for every event, from structlog or from a plain `logging` call.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become a string field before redaction, so that a secret quoted in
        # an exception message is caught too.
        structlog.processors.format_exc_info,
        redact_secrets,
        # Last: what redaction left, escaped once for every renderer.
        escape_values,
    ]
    rendering: list[Processor]
    if config.format == "json":
        rendering = [structlog.processors.JSONRenderer()]
    else:
        rendering = [
            _indent_tracebacks,
            structlog.dev.ConsoleRenderer(colors=_is_tty(stream)),
        ]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = _GatewaydHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    # What no line of ours shows, and what the logging HOWTO ("Optimization") says to
    # turn off then: each record would ask for its thread, process and caller (two
    # records a line: the formatter copies it).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GatewaydHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries chatty at debug level stay at info unless asked.
    for name in ("aiosqlite", "asyncio", "asyncssh"):
        logging.getLogger(name).setLevel(max(level, logging.INFO))


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
