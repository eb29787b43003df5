"""Pre-registered server transfers: a transfer announced before its partner comes.

An admin (through the API) says "account A will upload (or download) file F under rule
R before time T". The row waits in AVAILABLE; when the partner opens that file, the
server context takes the row over instead of creating a new one (`claim_upload`,
`find_download`). One that nobody claims in time becomes ERROR with TeExpired (the
`Expirer`). While a row is AVAILABLE its `next_attempt` holds its expiry: the scheduler
only looks at PLANNED client rows, so the column is free for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from gatewayd import lifecycle
from gatewayd.clock import Clock
from gatewayd.config.schema import RuleConfig
from gatewayd.lifecycle import Event
from gatewayd.model import Direction, ErrorCode, Status, Transfer
from gatewayd.names import check_name
from gatewayd.pipeline.engine import Runtime
from gatewayd.requests import FieldError, PreregisterRequest, RequestError, parse
from gatewayd.store.base import Store, TransferFilter

log = structlog.get_logger("gatewayd.pipeline")

DEFAULT_VALIDITY = 86400.0  # seconds
EXPIRED_MESSAGE = "pre-registered transfer expired before its partner came"
# Longest sleep of the expiry loop without a wake-up (a guard, as in the scheduler).
_SAFETY_CAP = 60.0


def account_folder(rt: Runtime, rule: RuleConfig, account: str) -> str:
    folder = rt.loaded.paths.rule_folder(rule)
    return str(folder if rule.shared_folder else folder / account)


def build_preregistered(rt: Runtime, request: PreregisterRequest | Mapping[str, Any]) -> Transfer:
    """An AVAILABLE server transfer from `request` (a PreregisterRequest, or the API's
    body), or RequestError naming every problem."""
    if isinstance(request, PreregisterRequest):
        req, errors = request, []
    else:
        parsed = parse(PreregisterRequest, request)
        req, errors = parsed.request, list(parsed.errors)
    config = rt.loaded.config
    rule = config.rules.get(req.rule) if req.rule is not None else None
    if req.rule is not None and rule is None:
        errors.append(FieldError("rule", "unknown_rule", f"unknown rule '{req.rule}'"))
    if req.account is not None and req.account not in config.accounts:
        errors.append(FieldError("account", "unknown_account", f"unknown account '{req.account}'"))
    elif req.account is not None and rule is not None and not rule.allows_account(req.account):
        errors.append(
            FieldError(
                "account",
                "not_allowed",
                f"rule '{rule.name}' does not allow account '{req.account}'",
            )
        )
    if req.file is not None and (problem := check_name(req.file)):
        errors.append(FieldError("file", "bad_value", f"'file': {problem}"))
    expires = _expiry(rt, req, errors)
    if errors:
        raise RequestError(errors)
    assert rule is not None
    is_send = rule.direction == Direction.SEND
    t = Transfer(
        rule=rule.name,
        is_server=True,
        is_send=is_send,
        requester=req.account,
        requested="",  # whichever of our servers the partner uses
        protocol="",
        account=req.account,
        remote_id=uuid.uuid4().hex,
        src_filename=req.file,
        dest_filename=req.file,
        local_filepath=posixpath.join(account_folder(rt, rule, req.account), req.file),
        remote_filepath=posixpath.join(rule.path, req.file),
        transfer_info=dict(req.transfer_info),
        next_attempt=expires,
        pre_tasks=[x.spec() for x in rule.pre],
        post_tasks=[x.spec() for x in rule.post],
        error_tasks=[x.spec() for x in rule.error],
    )
    lifecycle.apply(t, Event.PREREGISTER, new=True)
    t.transfer_info.setdefault("followID", t.remote_id)
    t.follow_id = str(t.transfer_info["followID"])
    if not is_send:
        t.tmp_filepath = str(rt.loaded.paths.rule_tmp_folder(rule) / f"{t.remote_id}.part")
    return t


def _expiry(rt: Runtime, req: PreregisterRequest, errors: list[FieldError]) -> datetime:
    now = rt.clock.now()
    if req.valid_for is not None and req.expires is not None:
        errors.append(FieldError("expires", "bad_value", "give 'validFor' or 'expires', not both"))
        return now
    if req.valid_for is not None:
        try:
            return now + timedelta(seconds=req.valid_for)
        except OverflowError:
            errors.append(FieldError("validFor", "bad_value", "'validFor' is too large"))
            return now
    if req.expires is not None:
        expires = req.expires
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=rt.loaded.tz)
        if expires <= now:
            errors.append(FieldError("expires", "bad_value", "'expires' is in the past"))
        return expires
    return now + timedelta(seconds=DEFAULT_VALIDITY)


async def preregister(rt: Runtime, request: PreregisterRequest | Mapping[str, Any]) -> Transfer:
    """Validate and insert an AVAILABLE server transfer; returns it once committed."""
    t = build_preregistered(rt, request)
    await rt.store.insert_transfer(t)
    return t


# ---------------------------------------------------------------------- taken over


async def _take(rt: Runtime, t: Transfer, server: str, protocol: str) -> Transfer | None:
    """Ready `t` (AVAILABLE) for its partner, or expire it if its time has passed."""
    if t.next_attempt is not None and t.next_attempt <= rt.clock.now():
        await rt.store.expire_available(rt.clock.now(), EXPIRED_MESSAGE)
        return None
    t.next_attempt = None
    t.requested, t.protocol = server, protocol
    t.start = rt.clock.now()
    return t


async def claim_upload(rt: Runtime, t: Transfer, server: str, protocol: str) -> Transfer | None:
    """The AVAILABLE upload row `t` taken over by a partner's upload (None: expired)."""
    return await _take(rt, t, server, protocol)


async def find_download(
    rt: Runtime, account: str, rule: str, name: str, server: str, protocol: str
) -> Transfer | None:
    """The newest AVAILABLE download of `name` pre-registered for `account`, taken over
    (None when there is none, or it just expired)."""
    rows, _ = await rt.store.list_transfers(
        TransferFilter(
            statuses=(Status.AVAILABLE,),
            rule=rule,
            account=account,
            is_server=True,
            limit=1000,
            descending=True,
        )
    )
    for t in rows:
        if t.is_send and t.src_filename == name:
            return await _take(rt, t, server, protocol)
    return None


def is_expired(t: Transfer) -> bool:
    return t.status == lifecycle.after(Status.AVAILABLE, Event.EXPIRE) and (
        t.error_code == ErrorCode.TeExpired
    )


# ---------------------------------------------------------------------- expiry


class Expirer:
    """Ends AVAILABLE transfers whose expiry passed. Sleeps until the earliest expiry
    (on the gateway's clock) or until `wake()` (a new pre-registration)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="preregister-expiry")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> list[Transfer]:
        """Expire what is due now; returns the rows that expired."""
        expired = await self._store.expire_available(self._clock.now(), EXPIRED_MESSAGE)
        for t in expired:
            log.info("pre-registered transfer expired", transfer_id=t.id, rule=t.rule)
        return expired

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            timeout = _SAFETY_CAP
            try:
                await self.sweep()
                nxt = await self._store.next_expiry()
                if nxt is not None:
                    seconds = (nxt - self._clock.now()).total_seconds()
                    timeout = min(max(seconds, 0.0), _SAFETY_CAP)
            except Exception:
                log.exception("pre-registration expiry pass failed")
            if self._stopping:
                break
            await self._clock.wait(self._wake, timeout)
