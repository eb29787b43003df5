"""The FTP control connection's text: command lines in, replies out (RFC 959).

Both roles use it: the server parses commands and formats replies, the client formats
commands and parses replies. Lines are UTF-8 (RFC 2640); Telnet commands that clients
send around ABOR (IAC IP, IAC DM, as urgent data) are removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Longest command line accepted (a path of 4 KiB, with room to spare).
MAX_LINE = 8192

_IAC = 0xFF
_TELNET = re.compile(rb"\xff[\xf0-\xfe]")  # IAC + a Telnet command (IP, DM, ...)


class LineError(ValueError):
    """A command line that cannot be read (not UTF-8, control characters)."""


@dataclass(frozen=True)
class Command:
    verb: str  # upper case
    arg: str


def parse_command(raw: bytes) -> Command:
    """A command from one line (CRLF or LF ended). Telnet sequences are dropped."""
    line = raw.rstrip(b"\r\n")
    if _IAC in line:
        line = _TELNET.sub(b"", line).replace(b"\xff\xff", b"\xff")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise LineError("commands and file names must be UTF-8") from None
    if any(c in text for c in "\x00\r\n"):
        raise LineError("control characters in the command")
    verb, _, arg = text.lstrip().partition(" ")
    return Command(verb.upper(), arg)


def reply(code: int, text: str, lines: list[str] | tuple[str, ...] = ()) -> bytes:
    """A reply: one line, or a multi-line one (`code-first`, ` line`..., `code end`).
    Line breaks in `text` never reach the wire (a file name cannot inject a reply)."""
    text = _one_line(text)
    if not lines:
        return f"{code} {text}\r\n".encode()
    body = "".join(f" {_one_line(line)}\r\n" for line in lines)
    return f"{code}-{text}\r\n{body}{code} End\r\n".encode()


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def quote_path(path: str) -> str:
    """A path as PWD/MKD replies give it (RFC 959: `"` doubled)."""
    return '"' + path.replace('"', '""') + '"'


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # the text of each line, without the code

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines).strip()

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class ReplyParser:
    """Collects reply lines until a reply is complete (`feed` returns it)."""

    def __init__(self) -> None:
        self._code: str | None = None
        self._lines: list[str] = []

    def feed(self, raw: bytes) -> Reply | None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if self._code is None:
            if len(text) < 3 or not text[:3].isdigit():
                raise LineError(f"not an FTP reply: {text[:80]!r}")
            if text[3:4] == "-":
                self._code = text[:3]
                self._lines = [text[4:]]
                return None
            return Reply(int(text[:3]), (text[4:],))
        if text.startswith(self._code + " "):
            lines = (*self._lines, text[4:])
            code, self._code, self._lines = int(self._code), None, []
            return Reply(code, lines)
        self._lines.append(text[1:] if text.startswith(" ") else text)
        return None
