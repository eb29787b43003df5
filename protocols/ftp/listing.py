"""Folder listings both ways: the server formats `LIST` (ls -l style), `NLST` and
`MLSD`/`MLST` (RFC 3659) lines; the client parses MLSD facts, or LIST lines from servers
that have no MLSD."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime

from gatewayd.ports import Entry

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# ls shows the year instead of the time for files older than about six months.
_HALF_YEAR = 182 * 24 * 3600


def mlsx_time(when: datetime) -> str:
    """YYYYMMDDHHMMSS in UTC (MLSx `modify`, MDTM)."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def facts(entry: Entry, when: datetime, *, kind: str | None = None) -> str:
    """The MLSx facts of an entry, `type=file;size=...;modify=...;` (no name)."""
    kind = kind or ("dir" if entry.is_dir else "file")
    parts = [f"type={kind}"]
    if not entry.is_dir:
        parts.append(f"size={entry.size}")
    parts.append(f"modify={mlsx_time(entry.mtime or when)}")
    return "".join(p + ";" for p in parts)


def mlsx_line(entry: Entry, when: datetime, name: str | None = None) -> str:
    return f"{facts(entry, when)} {name if name is not None else entry.name}"


def list_line(entry: Entry, account: str, now: datetime) -> str:
    """One `ls -l` style line, times in UTC (as vsftpd does by default)."""
    mode = stat.filemode((stat.S_IFDIR | 0o750) if entry.is_dir else (stat.S_IFREG | 0o640))
    when = (entry.mtime or now).astimezone(UTC)
    if abs((now - when).total_seconds()) > _HALF_YEAR:
        date = f"{_MONTHS[when.month - 1]} {when.day:2d} {when.year:5d}"
    else:
        date = f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}"
    owner = account[:8] or "gatewayd"
    size = 0 if entry.is_dir else entry.size
    return f"{mode} 1 {owner:<8} {owner:<8} {size:>12} {date} {entry.name}"


# ------------------------------------------------------------------ client side


@dataclass(frozen=True)
class Listed:
    name: str
    is_dir: bool
    size: int
    mtime: datetime | None


def parse_mlsx(line: str) -> Listed | None:
    """An MLSD/MLST line (`fact=value;... name`); None for `cdir`/`pdir` entries."""
    head, sep, name = line.partition(" ")
    if not sep:
        return None
    found: dict[str, str] = {}
    for fact in head.split(";"):
        key, eq, value = fact.partition("=")
        if eq:
            found[key.strip().lower()] = value
    kind = found.get("type", "").lower()
    if kind in ("cdir", "pdir"):
        return None
    size = found.get("size", "")
    return Listed(
        name=name.rsplit("/", 1)[-1] if "/" in name else name,
        is_dir=kind == "dir",
        size=int(size) if size.isdigit() else 0,
        mtime=parse_mlsx_time(found.get("modify", "")),
    )


def parse_mlsx_time(value: str) -> datetime | None:
    """YYYYMMDDHHMMSS[.sss] (UTC) as a datetime; None if it is not one."""
    m = re.fullmatch(r"(\d{14})(?:\.\d+)?", value.strip())
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


_LS = re.compile(
    r"^(?P<mode>[-dlbcps][-rwxsStTl]{9})[+@.]?\s+\d+\s+\S+\s+\S+\s+(?P<size>\d+)\s+"
    r"(?P<month>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<when>\d{1,2}:\d{2}|\d{4})\s(?P<name>.+)$"
)


def parse_list_line(line: str, now: datetime | None = None) -> Listed | None:
    """A Unix `ls -l` line (what most servers answer LIST with); None when it is not
    one, or for `.` and `..`. Times without a year are this year's, or last year's when
    that would be in the future; they are taken as UTC."""
    m = _LS.match(line.rstrip("\r\n"))
    if m is None:
        return None
    name = m.group("name")
    mode = m.group("mode")
    if mode[0] == "l" and " -> " in name:
        name = name.split(" -> ", 1)[0]
    if name in (".", ".."):
        return None
    now = now or datetime.now(UTC)
    month = (
        _MONTHS.index(m.group("month").title()) + 1 if m.group("month").title() in _MONTHS else 1
    )
    day = int(m.group("day"))
    when_text = m.group("when")
    mtime: datetime | None
    try:
        if ":" in when_text:
            hour, minute = (int(x) for x in when_text.split(":"))
            mtime = datetime(now.year, month, day, hour, minute, tzinfo=UTC)
            if (mtime - now).total_seconds() > 86400:
                mtime = mtime.replace(year=now.year - 1)
        else:
            mtime = datetime(int(when_text), month, day, tzinfo=UTC)
    except ValueError:
        mtime = None
    return Listed(name=name, is_dir=mode[0] == "d", size=int(m.group("size")), mtime=mtime)
