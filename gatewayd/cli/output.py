"""How the CLI shows what the API answers: JSON, YAML, or for people (tables, key/value
lines, a progress bar)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

FORMATS = ("human", "json", "yaml")

Human = Callable[[Any], str]


def emit(data: Any, fmt: str, human: Human, out: TextIO | None = None) -> None:
    """Print `data` in `fmt`; `human` renders it for people."""
    out = out or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        import yaml

        out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        text = human(data)
        out.write(text if text.endswith("\n") or not text else text + "\n")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns; empty tables say so."""
    if not rows:
        return "(none)"
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {'' if v is None else v}" for k, v in pairs)


def size(n: float | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if n is None or n < 0:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or seconds != seconds:
        return "--:--"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def short_time(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def percent(progress: int, total: int) -> str:
    return f"{100 * progress / total:.0f}%" if total > 0 else "?"


def progress_bar(
    progress: int,
    total: int,
    rate: float | None,
    eta: float | None,
    label: str = "",
    width: int = 30,
) -> str:
    """One line: `[#########.........]  45%  12.0 MiB/27.0 MiB  5.2 MiB/s  ETA 00:03`."""
    if total > 0:
        filled = min(width, int(width * progress / total))
        bar = "#" * filled + "." * (width - filled)
        done = f"{percent(progress, total):>4}  {size(progress)}/{size(total)}"
    else:
        bar = "?" * width
        done = f"   ?  {size(progress)}"
    speed = f"{size(rate)}/s" if rate is not None else "-- B/s"
    line = f"[{bar}] {done}  {speed}  ETA {duration(eta)}"
    return f"{line}  {label}" if label else line


# ------------------------------------------------------------------------ human views


def transfer_line(t: dict[str, Any]) -> list[Any]:
    peer = t.get("partner") or t.get("account") or t.get("requester")
    name = t.get("srcFilename") if t.get("isSend") else t.get("destFilename")
    total = t.get("filesize", -1)
    progress = f"{size(t.get('progress', 0))}"
    if total and total > 0:
        progress += f" ({percent(t.get('progress', 0), total)})"
    return [
        t.get("id"),
        t.get("status"),
        t.get("step"),
        t.get("rule"),
        "send" if t.get("isSend") else "receive",
        peer,
        name,
        progress,
        short_time(t.get("start")),
    ]


TRANSFER_HEADERS = ("ID", "STATUS", "STEP", "RULE", "WAY", "PEER", "FILE", "PROGRESS", "START")


def transfer_list(data: dict[str, Any]) -> str:
    rows = [transfer_line(t) for t in data.get("transfers", [])]
    shown = len(rows)
    footer = f"\n{shown} of {data.get('total', shown)} (offset {data.get('offset', 0)})"
    return table(rows, TRANSFER_HEADERS) + (footer if rows else "")


def transfer_view(t: dict[str, Any]) -> str:
    pairs = [
        ("ID", t.get("id")),
        ("Status", t.get("status")),
        ("Step", t.get("step")),
        ("Rule", t.get("rule")),
        ("Way", "send" if t.get("isSend") else "receive"),
        ("Side", "server" if t.get("isServer") else "client"),
        ("Requester", t.get("requester")),
        ("Requested", t.get("requested")),
        ("Protocol", t.get("protocol")),
        ("Local file", t.get("localFilepath")),
        ("Remote file", t.get("remoteFilepath")),
        ("Size", size(t.get("filesize"))),
        ("Progress", size(t.get("progress"))),
        ("Start", t.get("start")),
        ("Stop", t.get("stop")),
        ("SHA-256", t.get("sha256") or None),
        ("Follow ID", t.get("followID")),
    ]
    if t.get("errorCode") not in (None, "TeOk"):
        pairs += [("Error", f"{t.get('errorCode')}: {t.get('errorMsg')}")]
    if t.get("expires"):
        pairs += [("Expires", t.get("expires"))]
    if t.get("nextAttempt"):
        pairs += [("Next attempt", t.get("nextAttempt"))]
    if t.get("transferInfo"):
        pairs += [("Info", json.dumps(t.get("transferInfo"), ensure_ascii=False))]
    return key_values(pairs)


def yaml_text(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
