"""Refused requests, reported without letting a flood of them fill the disk.

`ReportBound` decides which refusals are reported one by one (an audit entry, a log
line) and which are only counted: a token bucket per key (the caller's address) and one
for all keys together. A refusal that is only counted is not lost: the next report of
the same key says how many were left out since the previous one.

`RefusedWrites` records, in the audit log, the API's answers 4xx to requests that would
have changed something (POST, PUT, PATCH, DELETE): who (the user if known, else the
login tried, else "(anonymous)"), from where, the method and path, the status and the
reason. Never the body, whose secrets (passwords, tokens) it may carry.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from gatewayd.api.errors import REASON
from gatewayd.names import escaped

if TYPE_CHECKING:
    from gatewayd.store.base import Store

log = structlog.get_logger("gatewayd.api")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ACTION = "request.refused"
# Longest texts kept from outside (a login, a path, a reason), in characters.
MAX_TEXT = 200
MAX_REASON = 500


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class ReportBound:
    """Which events to report one by one: per key, `burst` at once then one every
    `interval` seconds; for all keys together, `total_burst` then one every
    `total_interval` seconds. At most `max_keys` keys are remembered (least recently
    seen forgotten first)."""

    def __init__(
        self,
        *,
        burst: int,
        interval: float,
        total_burst: int,
        total_interval: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst, self.interval = burst, interval
        self.total_burst, self.total_interval = total_burst, total_interval
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[str, _Bucket] = OrderedDict()
        self._total = _Bucket(float(total_burst), clock())
        self.suppressed_total = 0

    @staticmethod
    def _refill(bucket: _Bucket, now: float, burst: int, interval: float) -> None:
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) / interval)
        bucket.at = now

    def admit(self, key: str) -> int | None:
        """None: do not report this event (it is counted). Otherwise report it, with the
        number of events of `key` left out since its previous report."""
        now = self._clock()
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = self._keys[key] = _Bucket(float(self.burst), now)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
            self._refill(bucket, now, self.burst, self.interval)
        self._refill(self._total, now, self.total_burst, self.total_interval)
        if bucket.tokens < 1 or self._total.tokens < 1:
            bucket.suppressed += 1
            self.suppressed_total += 1
            return None
        bucket.tokens -= 1
        self._total.tokens -= 1
        left_out, bucket.suppressed = bucket.suppressed, 0
        return left_out


def clipped(text: str, limit: int = MAX_TEXT) -> str:
    """`text` escaped (no control characters) and cut to `limit` characters."""
    text = escaped(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Who the caller is, or says it is, as the authenticator learnt it (set before the
# credential is checked, so that a refusal can name the login tried).
CALLER = web.RequestKey("gatewayd_caller", str)


def _reason(response: web.StreamResponse) -> str:
    """Why `response` refused: the problems our errors carry, else the message of an
    envelope of the compatible APIs (Tapis), else the status's phrase."""
    found = response.get(REASON)  # aiohttp types only `[]` by key: `get` is Any
    if isinstance(found, str) and found:
        return found
    body = response.body if isinstance(response, web.Response) else None
    if isinstance(body, bytes) and len(body) <= 65536:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str) and data["message"]:
            return str(data["message"])
    return response.reason or ""


class RefusedWrites:
    """Audits refused writes, bounded: per address 10 at once then one a minute, and
    for all addresses together 100 at once then one a second (at most 86,400 entries
    a day, whatever the flood); the others are counted, and the next entry of that
    address says how many it stands for (`leftOut`)."""

    def __init__(self, store: Store, bound: ReportBound | None = None) -> None:
        self._store = store
        self.bound = bound or ReportBound(
            burst=10, interval=60.0, total_burst=100, total_interval=1.0
        )

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        """Audit `response` when it refuses a write (a 4xx to POST/PUT/PATCH/DELETE)."""
        if request.method not in WRITE_METHODS or not 400 <= response.status < 500:
            return
        address = request.remote or ""
        left_out = self.bound.admit(address)
        if left_out is None:
            return
        who = request.get(CALLER) or "(anonymous)"
        reason = _reason(response)
        details: dict[str, object] = {
            "status": response.status,
            "reason": clipped(reason, MAX_REASON),
            "address": address,
            "method": request.method,
        }
        if left_out:
            details["leftOut"] = left_out
        try:
            await self._store.audit(clipped(who), ACTION, clipped(request.path), details)
        except Exception:  # the refusal is answered whatever happens to its record
            log.exception("could not audit a refused request", address=address)
