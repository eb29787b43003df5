"""The transfer service: the one place that creates client transfers and changes their
state on request. The admin API, the CLI (through the API) and the TRANSFER task all use
it, so a request is validated the same way whoever makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gatewayd import lifecycle, safepath
from gatewayd.config.schema import RuleConfig
from gatewayd.lifecycle import Event
from gatewayd.model import Direction, Status, Step, Transfer
from gatewayd.names import check_name
from gatewayd.pipeline import localfiles
from gatewayd.pipeline.engine import Engine, StopReason
from gatewayd.safepath import Beneath

CREATE_FIELDS = (
    "rule", "partner", "account", "isSend", "file", "output", "start", "transferInfo",
    "nbOfAttempts", "firstRetryDelay", "retryIncrementFactor",
)  # fmt: skip


@dataclass(frozen=True)
class FieldError:
    """One problem of a request: the field it is about, a stable code, a message."""

    field: str
    code: str  # unknown_field, missing, bad_value, unknown_rule, unknown_partner, not_allowed
    message: str


class RequestError(Exception):
    """A request with problems; nothing was changed."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors


class NotFoundError(Exception):
    """No transfer with that id."""


class StateError(Exception):
    """The operation is not allowed from the transfer's current status."""


def _relative_parts(value: str, field: str, errors: list[FieldError]) -> list[str]:
    parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
    if value.startswith("/") or not parts:
        errors.append(FieldError(field, "bad_value", f"'{field}' must be a relative path"))
        return []
    for part in parts:
        problem = "'..' is not allowed" if part == ".." else check_name(part)
        if problem:
            errors.append(FieldError(field, "bad_value", f"'{field}': {problem}"))
            return []
    return parts


class TransferService:
    """Creates client transfers and pauses, resumes, cancels and retries transfers."""

    def __init__(self, engine: Engine, wake: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.rt = engine.rt
        self.wake = wake

    # ------------------------------------------------------------------ create

    async def create(
        self, request: Any, *, parent: Transfer | None = None, trusted: bool = False
    ) -> Transfer:
        """Validate `request` (the API's create body) and insert a PLANNED transfer.

        `trusted` callers (the TRANSFER task, retries) may name an absolute local file;
        requests from the API may only name files inside the rule's folder.
        Raises RequestError listing every problem at once.
        """
        t = self._build(request, parent=parent, trusted=trusted)
        if t.is_send and not trusted:
            # A file that exists must be one the transfer may send: a link is refused
            # now (and again, atomically, when the file is opened). A missing one may
            # still appear before the transfer starts.
            problem = await self.source_problem(t)
            if problem is not None and problem != "no such file":
                raise RequestError([FieldError("file", "bad_value", f"'file': {problem}")])
        await self.rt.store.insert_transfer(t)
        if not t.transfer_info.get("followID"):
            t.transfer_info["followID"] = t.follow_id
            await self.rt.store.save_transfer(t)
        self.wake()
        return t

    async def source_problem(self, t: Transfer) -> str | None:
        """Why the local file of send `t` cannot be sent now ("no such file", a link,
        not a regular file), or None."""
        rule = self.rt.loaded.config.rules.get(t.rule)
        root = self.rt.loaded.paths.rule_folder(rule) if rule else self.rt.loaded.paths.data_dir
        return await localfiles.send_problem(root, t.local_filepath)

    def check(self, request: Any) -> Transfer:
        """Validate `request` as `create` would (untrusted) and return the transfer it
        would make, without inserting anything. Raises RequestError."""
        return self._build(request, parent=None, trusted=False)

    def _build(self, request: Any, *, parent: Transfer | None, trusted: bool) -> Transfer:
        errors: list[FieldError] = []
        if not isinstance(request, dict):
            raise RequestError([FieldError("", "bad_value", "the request must be a JSON object")])
        errors += [
            FieldError(k, "unknown_field", f"unknown field '{k}'")
            for k in request
            if k not in CREATE_FIELDS
        ]
        config = self.rt.loaded.config
        defaults = config.scheduler

        def get(name: str, kinds: type | tuple[type, ...], required: bool = False) -> Any:
            if name not in request or request[name] is None:
                if required:
                    errors.append(FieldError(name, "missing", f"missing field '{name}'"))
                return None
            value = request[name]
            if not isinstance(value, kinds) or (
                isinstance(value, bool)
                and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))
            ):
                errors.append(FieldError(name, "bad_value", f"'{name}' has the wrong type"))
                return None
            return value

        rule_name = get("rule", str, required=True)
        partner_name = get("partner", str, required=True)
        login = get("account", str)
        is_send = get("isSend", bool)
        file = get("file", str, required=True)
        output = get("output", str)
        start_value = get("start", (str, datetime))
        info = get("transferInfo", dict)
        attempts = get("nbOfAttempts", int)
        delay = get("firstRetryDelay", (int, float))
        factor = get("retryIncrementFactor", (int, float))

        rule: RuleConfig | None = None
        if rule_name is not None:
            rule = config.rules.get(rule_name)
            if rule is None:
                errors.append(FieldError("rule", "unknown_rule", f"unknown rule '{rule_name}'"))
        partner = None
        if partner_name is not None:
            partner = config.partners.get(partner_name)
            if partner is None:
                errors.append(
                    FieldError("partner", "unknown_partner", f"unknown partner '{partner_name}'")
                )
        if rule is not None and partner is not None and not rule.allows_partner(partner_name):
            errors.append(
                FieldError(
                    "partner",
                    "not_allowed",
                    f"rule '{rule.name}' does not allow partner '{partner_name}'",
                )
            )
        if rule is not None and is_send is not None and is_send != (rule.direction == "send"):
            errors.append(
                FieldError("isSend", "bad_value", f"rule '{rule.name}' is a {rule.direction} rule")
            )
        if attempts is not None and attempts < 0:
            errors.append(FieldError("nbOfAttempts", "bad_value", "'nbOfAttempts' must be >= 0"))
        if delay is not None and delay < 0:
            errors.append(
                FieldError(
                    "firstRetryDelay", "bad_value", "'firstRetryDelay' must be >= 0 (seconds)"
                )
            )
        if factor is not None and factor < 1:
            errors.append(
                FieldError(
                    "retryIncrementFactor", "bad_value", "'retryIncrementFactor' must be >= 1"
                )
            )
        start = self._start(start_value, errors)

        send = rule.direction == Direction.SEND if rule is not None else bool(is_send)
        local_parts: list[str] = []
        remote_parts: list[str] = []
        if file is not None:
            if send and trusted and os.path.isabs(file):
                local_parts = [file]
            elif send:
                local_parts = _relative_parts(file, "file", errors)
            else:
                remote_parts = _relative_parts(file, "file", errors)
        if output is not None:
            if send:
                remote_parts = _relative_parts(output, "output", errors)
            else:
                local_parts = _relative_parts(output, "output", errors)[-1:]
        elif file is not None:
            name = (local_parts or remote_parts or [""])[-1]
            if send:
                remote_parts = [posixpath.basename(name)] if name else []
            else:
                local_parts = [name] if name else []
        if errors:
            raise RequestError(errors)
        assert rule is not None and partner is not None and partner_name is not None

        folder = self.rt.loaded.paths.rule_folder(rule)
        local = (
            Path(local_parts[0]) if os.path.isabs(local_parts[0]) else folder.joinpath(*local_parts)
        )
        remote = "/".join(remote_parts)
        transfer_info = dict(info or {})
        follow_id = (
            (parent.follow_id if parent else "")
            or str(transfer_info.get("followID") or "")
            or uuid.uuid4().hex
        )
        transfer_info["followID"] = follow_id
        delay_s = defaults.first_retry_delay if delay is None else float(delay)
        t = Transfer(
            rule=rule.name,
            is_server=False,
            is_send=send,
            requester=login or partner.login or self.rt.local_host,
            requested=partner_name,
            protocol=partner.protocol,
            partner=partner_name,
            remote_id=uuid.uuid4().hex,
            follow_id=follow_id,
            parent_id=parent.id if parent else None,
            src_filename=local.name if send else posixpath.basename(remote),
            dest_filename=posixpath.basename(remote) if send else local.name,
            local_filepath=str(local),
            remote_filepath=remote,
            start=start,
            status=Status.PLANNED,
            transfer_info=transfer_info,
            remaining_attempts=defaults.attempts if attempts is None else attempts,
            next_retry_delay=round(delay_s),
            retry_increment_factor=float(
                defaults.retry_increment_factor if factor is None else factor
            ),
            pre_tasks=[x.spec() for x in rule.pre],
            post_tasks=[x.spec() for x in rule.post],
            error_tasks=[x.spec() for x in rule.error],
        )
        if not send:
            t.tmp_filepath = str(self.rt.loaded.paths.rule_tmp_folder(rule) / f"{t.remote_id}.part")
        return t

    def _start(self, value: Any, errors: list[FieldError]) -> datetime:
        if value is None:
            return self.rt.clock.now()
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                errors.append(
                    FieldError("start", "bad_value", f"'start': {value!r} is not an RFC 3339 date")
                )
                return self.rt.clock.now()
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.rt.loaded.tz)
        return value

    # ------------------------------------------------------------------ operations

    async def _get(self, transfer_id: int) -> Transfer:
        t = await self.rt.store.get_transfer(transfer_id)
        if t is None:
            raise NotFoundError(f"no transfer {transfer_id}")
        return t

    async def pause(self, transfer_id: int) -> Transfer:
        """PLANNED or RUNNING -> PAUSED; a running pipeline is stopped for real."""
        t = await self._get(transfer_id)
        if not lifecycle.allowed(t.status, Event.PAUSE):
            raise StateError(f"cannot pause a transfer that is {t.status}")
        if not await self.engine.stop(transfer_id, StopReason.PAUSE):
            lifecycle.apply(t, Event.PAUSE)
            t.stop = self.rt.clock.now()
            await self.rt.store.save_transfer(t)
        return await self._get(transfer_id)

    async def resume(self, transfer_id: int) -> Transfer:
        """PAUSED, INTERRUPTED or ERROR -> PLANNED, to continue at its step, task and
        byte: a client transfer, or a server one whose data is complete (before that,
        only its partner can continue it)."""
        t = await self._get(transfer_id)
        refusal = lifecycle.resume_refusal(t)
        if refusal is not None:
            raise StateError(refusal)
        if t.step == Step.ERROR_TASKS:  # died while running the error chain
            t.step, t.task_number = t.error_step, 0
        lifecycle.apply(t, Event.RESUME)
        t.next_attempt = None
        t.start = self.rt.clock.now()
        await self.rt.store.save_transfer(t)
        self.wake()
        return t

    async def cancel(self, transfer_id: int) -> Transfer:
        """Any non-final status -> CANCELLED; a received temp file is removed."""
        t = await self._get(transfer_id)
        if not lifecycle.allowed(t.status, Event.CANCEL):
            raise StateError(f"cannot cancel a transfer that is {t.status}")
        if await self.engine.stop(transfer_id, StopReason.CANCEL):
            return await self._get(transfer_id)
        lifecycle.apply(t, Event.CANCEL)
        t.stop = self.rt.clock.now()
        await self.rt.store.save_transfer(t)
        if t.tmp_filepath and not t.is_send:
            rule = self.rt.loaded.config.rules.get(t.rule)
            root = self.rt.loaded.paths.rule_folder(rule) if rule else self.rt.loaded.paths.data_dir
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safepath.unlink, Beneath.of(root, t.tmp_filepath))
        return t

    async def retry(self, transfer_id: int) -> Transfer:
        """A new transfer with the old one's request, from zero (the old one is kept)."""
        t = await self._get(transfer_id)
        if t.is_server:
            raise StateError("a server transfer cannot be retried from here")
        if t.status not in (
            Status.ERROR,
            Status.CANCELLED,
            Status.DONE,
            Status.INTERRUPTED,
            Status.PAUSED,
        ):
            raise StateError(f"cannot retry a transfer that is {t.status}")
        request: dict[str, Any] = {
            "rule": t.rule,
            "partner": t.partner,
            "isSend": t.is_send,
            "file": t.local_filepath if t.is_send else t.remote_filepath,
            "output": t.remote_filepath if t.is_send else t.dest_filename,
            "transferInfo": dict(t.transfer_info),
        }
        return await self.create(request, trusted=True)
