"""Folder listings the HTTP client understands: a gatewayd server's JSON
(`{"path": ..., "entries": [{"name", "isDir", "size", "mtime"}]}`) and nginx's
`autoindex_format json` (`[{"name", "type", "mtime", "size"}]`, mtime in RFC 1123)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from gatewayd.ports import RemoteStat


class ListingError(ValueError):
    """The body is not a listing of a known shape."""


def parse_listing(body: bytes) -> list[RemoteStat]:
    """The entries of a JSON folder listing; ListingError for anything else."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ListingError(f"not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        return [_gatewayd(item) for item in data["entries"] if _named(item)]
    if isinstance(data, list):
        return [_nginx(item) for item in data if _named(item)]
    raise ListingError("neither a gatewayd nor an nginx JSON listing")


def _named(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("name"), str)
        and item["name"]
        not in (
            "",
            ".",
            "..",
        )
    )


def _size(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _gatewayd(item: dict[str, Any]) -> RemoteStat:
    mtime = None
    if isinstance(item.get("mtime"), str):
        try:
            mtime = datetime.fromisoformat(item["mtime"]).astimezone(UTC)
        except ValueError:
            mtime = None
    return RemoteStat(_size(item.get("size")), bool(item.get("isDir")), mtime, item["name"])


def _nginx(item: dict[str, Any]) -> RemoteStat:
    mtime = None
    if isinstance(item.get("mtime"), str):
        try:
            mtime = parsedate_to_datetime(item["mtime"]).astimezone(UTC)
        except (TypeError, ValueError):
            mtime = None
    is_dir = item.get("type") == "directory"
    return RemoteStat(_size(item.get("size")), is_dir, mtime, item["name"])
