"""Parsing and formatting of the HTTP headers gatewayd speaks: ranges, digests, and the
Waarp headers (rule name, transfer info, final status). Pure functions, no I/O."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Waarp Gateway's header names, so that its HTTP clients and servers work with ours.
RULE_NAME = "Waarp-Rule-Name"
RULE_STRING = "Waarp-Rule-String"
TRANSFER_ID = "Waarp-Transfer-ID"
TRANSFER_INFO = "Waarp-Transfer-Info"
TRANSFER_STATUS = "Waarp-Transfer-Status"
ERROR_CODE = "Waarp-Error-Code"
ERROR_MESSAGE = "Waarp-Error-Message"
# The IETF resumable-uploads draft: how many bytes of an unfinished upload the server holds.
UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_COMPLETE = "Upload-Complete"
REPR_DIGEST = "Repr-Digest"
CONTENT_DIGEST = "Content-Digest"
DIGEST = "Digest"

MAX_INFO_BYTES = 16 * 1024


class HeaderError(ValueError):
    """A header that cannot be understood; the message says which and why."""


@dataclass(frozen=True)
class ContentRange:
    """`Content-Range: bytes START-END/TOTAL` (END inclusive; TOTAL None for `*`)."""

    start: int
    end: int
    total: int | None

    @property
    def length(self) -> int:
        return self.end - self.start + 1


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_EMPTY_END = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


def parse_content_range(value: str) -> ContentRange:
    """`bytes START-END/TOTAL`; also `bytes */TOTAL` on an empty body, which gatewayd's
    client sends to complete an upload whose every byte the server already holds."""
    empty = _EMPTY_END.fullmatch(value.strip())
    if empty is not None:
        size = int(empty[1])
        return ContentRange(size, size - 1, size)
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise HeaderError(f"Content-Range {value!r}: expected 'bytes START-END/TOTAL'")
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if end < start or (total is not None and end >= total):
        raise HeaderError(f"Content-Range {value!r}: the range does not fit the total")
    return ContentRange(start, end, total)


def format_content_range(start: int, end: int, total: int) -> str:
    return f"bytes {start}-{end}/{total}"


class RangeNotSatisfiable(Exception):
    """A Range header that asks for bytes the file does not have (HTTP 416)."""


_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)", re.IGNORECASE)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end inclusive) of a single-range `Range` header on a file of `size`
    bytes; None to send the whole file (no header, or one we may ignore, such as a
    multi-range request). Raises RangeNotSatisfiable."""
    if not value:
        return None
    match = _RANGE.fullmatch(value.strip())
    if match is None:
        return None  # RFC 9110: an unsupported or invalid Range is ignored
    first, last = match[1], match[2]
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return start, end


def parse_sha256(headers: Iterable[tuple[str, str]], *, whole_body: bool) -> str | None:
    """The SHA-256 (hex) a request announces for the whole file, None when it gives none.

    `Repr-Digest: sha-256=:B64:` (RFC 9530) and `Digest: SHA-256=B64` (RFC 3230) are
    about the whole representation; `Content-Digest` only about this body, so it counts
    only when the body is the whole file (`whole_body`). Other algorithms are ignored.
    """
    found: dict[str, str] = {}
    for name, value in headers:
        kind = name.lower()
        if kind in ("repr-digest", "content-digest"):
            if kind == "content-digest" and not whole_body:
                continue
            for algorithm, raw in _items(value):
                if algorithm == "sha-256":
                    if not (raw.startswith(":") and raw.endswith(":") and len(raw) >= 2):
                        raise HeaderError(f"{name}: sha-256 must be a :base64: byte sequence")
                    found[kind] = _sha_hex(name, raw[1:-1])
        elif kind == "digest":
            for algorithm, raw in _items(value):
                if algorithm == "sha-256":
                    found[kind] = _sha_hex(name, raw)
    values = set(found.values())
    if len(values) > 1:
        raise HeaderError("the digest headers disagree")
    return values.pop() if values else None


def _items(value: str) -> Iterable[tuple[str, str]]:
    for item in value.split(","):
        key, sep, raw = item.strip().partition("=")
        if sep:
            yield key.strip().lower(), raw.strip()


def _sha_hex(name: str, b64: str) -> str:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise HeaderError(f"{name}: sha-256 is not valid base64") from None
    if len(raw) != 32:
        raise HeaderError(f"{name}: sha-256 must be 32 bytes, got {len(raw)}")
    return raw.hex()


def basic_credentials(value: str) -> tuple[str, str]:
    """(login, password) of an `Authorization: Basic` value. UTF-8 as RFC 7617 asks
    (and curl sends), Latin-1 for older clients whose bytes are not UTF-8."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        raise HeaderError(f"Authorization: {scheme or 'empty'} is not Basic")
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise HeaderError("Authorization: not valid base64") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    login, sep, password = text.partition(":")
    if not sep:
        raise HeaderError("Authorization: expected login:password")
    return login, password


def basic_authorization(login: str, password: str) -> str:
    """The `Authorization` value for Basic credentials (UTF-8)."""
    if ":" in login:
        raise HeaderError("a login cannot contain ':' with HTTP Basic")
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def repr_digest(sha256_hex: str) -> str:
    """The `Repr-Digest` value for a SHA-256 given in hex."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


def parse_transfer_info(values: Iterable[str]) -> dict[str, object]:
    """`Waarp-Transfer-Info` headers: `key=<JSON value>` pairs, separated by commas or
    given in repeated headers (Waarp Gateway's format). A value that is not JSON is kept
    as a string."""
    info: dict[str, object] = {}
    decoder = json.JSONDecoder()
    total = 0
    for value in values:
        total += len(value)
        if total > MAX_INFO_BYTES:
            raise HeaderError(f"{TRANSFER_INFO}: more than {MAX_INFO_BYTES} bytes")
        pos = 0
        while pos < len(value):
            key_end = value.find("=", pos)
            if key_end < 0:
                raise HeaderError(f"{TRANSFER_INFO}: expected key=value pairs")
            key = value[pos:key_end].strip()
            if not key or not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
                raise HeaderError(f"{TRANSFER_INFO}: invalid key {key!r}")
            start = key_end + 1
            while start < len(value) and value[start] == " ":
                start += 1
            try:
                item, end = decoder.raw_decode(value, start)
            except json.JSONDecodeError:
                end = value.find(",", start)
                end = len(value) if end < 0 else end
                item = value[start:end].strip()
            info[key] = item
            comma = value.find(",", end)
            if value[end : comma if comma >= 0 else len(value)].strip():
                raise HeaderError(f"{TRANSFER_INFO}: unexpected text after {key}'s value")
            pos = len(value) if comma < 0 else comma + 1
    return info


def format_transfer_info(info: dict[str, object]) -> str:
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in info.items())
