"""The gateway's time zone: the configured IANA zone, or the system's."""

from __future__ import annotations

import os
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def gateway_timezone(name: str | None) -> tzinfo:
    """`ZoneInfo(name)` when set (the schema checked it), else the system's zone."""
    return ZoneInfo(name) if name else system_timezone()


def system_timezone() -> tzinfo:
    """The system's zone, by name when it can be found (so that daylight saving time
    follows the rules of that zone, which a fixed UTC offset would not)."""
    candidates = [os.environ.get("TZ", "").removeprefix(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.partition("zoneinfo/")[2])
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    try:
        with open("/etc/localtime", "rb") as file:
            return ZoneInfo.from_file(file, key="localtime")
    except (OSError, ValueError):
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
