"""The transfer service: the one place that creates client transfers and changes their
state on request. The admin API (and the CLI through it), R66's /v2, Tapis's /v3 and the
TRANSFER task all give it a `TransferRequest` (gatewayd.requests), so a request is
checked the same way whoever makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gatewayd import lifecycle, safepath
from gatewayd.config.schema import RuleConfig
from gatewayd.errors import TransferError
from gatewayd.lifecycle import Event
from gatewayd.model import Direction, Status, Step, Transfer
from gatewayd.names import check_name
from gatewayd.pipeline import localfiles, preregister
from gatewayd.pipeline.engine import Engine, StopReason
from gatewayd.requests import (
    FieldError,
    PreregisterRequest,
    RequestError,
    TransferRequest,
    parse,
)
from gatewayd.safepath import Beneath
from gatewayd.store.base import TapisTask, WatchedFile


@dataclass
class FolderPlan:
    """The transfers that would send a file or folder of a rule (see `plan_folder`)."""

    transfers: list[Transfer] = field(default_factory=list)
    bytes: int = 0
    error: str | None = None
    # Links found in the folder and left out.
    skipped: list[str] = field(default_factory=list)


class NotFoundError(Exception):
    """No transfer with that id."""


class StateError(Exception):
    """The operation is not allowed from the transfer's current status."""


class OwnerUnavailable(StateError):
    """The transfer runs on another node (`node`), which did not carry out the request:
    it did not answer in time, or its lease expired (another node takes its transfers
    over within `retry_after` seconds). Nothing was changed."""

    def __init__(self, message: str, node: str, retry_after: float) -> None:
        super().__init__(message)
        self.node = node
        self.retry_after = retry_after


class Forwarder(Protocol):
    """Carries a pause or a cancel to the node that runs the transfer, when several
    nodes share the database (gatewayd.cluster.bus). `node` is this node's name."""

    @property
    def node(self) -> str: ...

    async def stop_elsewhere(self, transfer: Transfer, reason: StopReason) -> Transfer | None:
        """Have the owner of RUNNING `transfer` (another node) stop it; returns the row
        once the owner answered. None: the row moved on meanwhile (ended, or another
        owner), read it again. Raises StateError for what the owner refused and
        OwnerUnavailable when it cannot be reached."""


# Reads of a row that changed under an operation (another node claimed it, or ended
# it) before the operation gives up.
_TRIES = 5


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

    def __init__(
        self,
        engine: Engine,
        wake: Callable[[], None] = lambda: None,
        preregistered: Callable[[], None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.rt = engine.rt
        # Told of new work: the scheduler (due transfers), the expiry of pre-registrations.
        self.wake = wake
        self.preregistered = preregistered
        # Set when several nodes share the database: a running transfer may be another's.
        self.forwarder: Forwarder | None = None

    async def preregister(self, request: PreregisterRequest | Mapping[str, Any]) -> Transfer:
        """Validate and insert an AVAILABLE server transfer (see
        gatewayd.pipeline.preregister); RequestError with every problem."""
        t = await preregister.preregister(self.rt, request)
        self.preregistered()
        return t

    # ------------------------------------------------------------------ create

    async def create(
        self,
        request: TransferRequest | Mapping[str, Any],
        *,
        parent: Transfer | None = None,
        trusted: bool = False,
    ) -> Transfer:
        """Validate `request` (a TransferRequest, or the admin API's create body) and
        insert a PLANNED transfer.

        `trusted` callers (the TRANSFER task, retries) may name an absolute local file;
        requests from outside may only name files inside the rule's folder, never
        through a symbolic link. Raises RequestError listing every problem at once.
        """
        t = self.build(request, parent=parent, trusted=trusted)
        if t.is_send and not trusted:
            # A file that exists must be one the transfer may send: a link is refused
            # now (and again, atomically, when the file is opened). A missing one may
            # still appear before the transfer starts.
            problem = await self.source_problem(t)
            if problem is not None and problem != "no such file":
                raise RequestError([FieldError("file", "bad_value", f"'file': {problem}")])
        await self.insert([t])
        return t

    async def insert(self, transfers: list[Transfer]) -> None:
        """Insert transfers made by `build`, all in one commit (all of them or none)."""
        await self.rt.store.insert_transfers(transfers)
        self.wake()

    async def insert_tapis_task(self, task: TapisTask, children: list[Transfer]) -> None:
        """Record a Tapis transfer task with its children, all in one commit."""
        await self.rt.store.insert_tapis_task(task, children)
        self.wake()

    async def insert_watched(self, items: list[tuple[WatchedFile, list[Transfer]]]) -> list[int]:
        """Record files a watcher took with their transfers (made by `build`), in one
        commit; a file recorded already is skipped. The indexes of those recorded."""
        recorded = await self.rt.store.insert_watched(items)
        if recorded:
            self.wake()
        return recorded

    async def plan_folder(
        self,
        rule_name: str,
        path: str,
        partner: str,
        remote_dir: str,
        transfer_info: Mapping[str, Any],
        cap: int,
    ) -> FolderPlan:
        """One PLANNED transfer (built, not inserted) per regular file of the file or
        folder `path` of send rule `rule_name`, to `remote_dir` on `partner` with the
        same relative names. Links are left out (never followed); more than `cap` files
        is an error of the plan, as is a missing path. Raises RequestError for what the
        configuration refuses (rule, partner)."""
        rule = self.rt.loaded.config.rules.get(rule_name)
        if rule is None:
            raise RequestError([FieldError("rule", "unknown_rule", f"unknown rule '{rule_name}'")])
        if rule.direction != Direction.SEND:
            raise RequestError(
                [FieldError("rule", "bad_value", f"rule '{rule_name}' is a {rule.direction} rule")]
            )
        listing = await localfiles.list_files(self.rt.loaded.paths.rule_folder(rule), path, cap)
        if listing.error is not None:
            return FolderPlan(error=listing.error, skipped=listing.skipped)
        if len(listing.files) > cap:
            return FolderPlan(
                error=f"holds more than {cap} files; transfer an archive (tar, zip) of it instead",
                skipped=listing.skipped,
            )
        plan = FolderPlan(skipped=listing.skipped)
        for relative, size in listing.files:
            request = TransferRequest(
                rule=rule.name,
                partner=partner,
                file=posixpath.join(path, relative) if relative else path,
                output=posixpath.join(remote_dir, relative) if relative else remote_dir,
                transfer_info=dict(transfer_info),
            )
            plan.transfers.append(self.build(request))
            plan.bytes += size
        return plan

    async def plan_remote_folder(
        self,
        rule_name: str,
        partner: str,
        remote_path: str,
        transfer_info: Mapping[str, Any],
        cap: int,
    ) -> FolderPlan | None:
        """One PLANNED receive (built, not inserted) per file directly in the partner's
        folder `remote_path` (subfolders left out), each under its own name in the
        rule's folder. None when `remote_path` is no folder there (a file, nothing, or a
        partner that cannot be asked now): the caller plans one transfer of it, whose
        run says what went wrong. Raises RequestError for what the configuration
        refuses (rule, partner)."""
        try:
            lease = await self.rt.clients.acquire_partner(partner)
        except TransferError:
            return None
        try:
            found = await lease.client.stat(remote_path)
            if found is None or not found.is_dir:
                return None
            entries = await lease.client.list(remote_path)
        except TransferError as exc:
            return FolderPlan(error=f"cannot list it: {exc}")
        finally:
            lease.release()
        files = sorted((e for e in entries if not e.is_dir), key=lambda e: e.name)
        if len(files) > cap:
            return FolderPlan(error=f"holds more than {cap} files")
        plan = FolderPlan()
        for entry in files:
            request = TransferRequest(
                rule=rule_name,
                partner=partner,
                is_send=False,
                file=posixpath.join(remote_path, entry.name) if remote_path else entry.name,
                output=entry.name,
                transfer_info=dict(transfer_info),
            )
            plan.transfers.append(self.build(request))
            plan.bytes += entry.size
        return plan

    async def source_problem(self, t: Transfer) -> str | None:
        """Why the local file of send `t` cannot be sent now ("no such file", a link,
        not a regular file), or None."""
        rule = self.rt.loaded.config.rules.get(t.rule)
        root = self.rt.loaded.paths.rule_folder(rule) if rule else self.rt.loaded.paths.data_dir
        return await localfiles.send_problem(root, t.local_filepath)

    def build(
        self,
        request: TransferRequest | Mapping[str, Any],
        *,
        parent: Transfer | None = None,
        trusted: bool = False,
    ) -> Transfer:
        """The PLANNED transfer `request` makes, checked against the configuration,
        without inserting anything. Raises RequestError with every problem."""
        if isinstance(request, TransferRequest):
            req, errors = request, []
        else:
            parsed = parse(TransferRequest, request)
            req, errors = parsed.request, list(parsed.errors)
        config = self.rt.loaded.config
        rule = config.rules.get(req.rule) if req.rule is not None else None
        if req.rule is not None and rule is None:
            errors.append(FieldError("rule", "unknown_rule", f"unknown rule '{req.rule}'"))
        partner = config.partners.get(req.partner) if req.partner is not None else None
        if req.partner is not None and partner is None:
            errors.append(
                FieldError("partner", "unknown_partner", f"unknown partner '{req.partner}'")
            )
        if partner is not None and not partner.enabled:
            errors.append(FieldError("partner", "disabled", f"partner '{req.partner}' is disabled"))
        if rule is not None and partner is not None and not rule.allows_partner(req.partner):
            errors.append(
                FieldError(
                    "partner",
                    "not_allowed",
                    f"rule '{rule.name}' does not allow partner '{req.partner}'",
                )
            )
        if (
            rule is not None
            and req.is_send is not None
            and req.is_send != (rule.direction == Direction.SEND)
        ):
            errors.append(
                FieldError("isSend", "bad_value", f"rule '{rule.name}' is a {rule.direction} rule")
            )
        send = rule.direction == Direction.SEND if rule is not None else bool(req.is_send)
        local_parts, remote_parts = self._paths(req, send, trusted, errors)
        if errors:
            raise RequestError(errors)
        assert rule is not None and partner is not None
        return self._transfer(req, rule, send, local_parts, remote_parts, parent)

    @staticmethod
    def _paths(
        req: TransferRequest, send: bool, trusted: bool, errors: list[FieldError]
    ) -> tuple[list[str], list[str]]:
        """(local, remote) path parts of `file` and `output` (the local one relative to
        the rule's folder, or absolute for trusted callers)."""
        local_parts: list[str] = []
        remote_parts: list[str] = []
        if req.file is not None:
            if send and trusted and os.path.isabs(req.file):
                local_parts = [req.file]
            elif send:
                local_parts = _relative_parts(req.file, "file", errors)
            else:
                remote_parts = _relative_parts(req.file, "file", errors)
        if req.output is not None:
            if send:
                remote_parts = _relative_parts(req.output, "output", errors)
            else:
                local_parts = _relative_parts(req.output, "output", errors)[-1:]
        elif req.file is not None:
            name = (local_parts or remote_parts or [""])[-1]
            if send:
                remote_parts = [posixpath.basename(name)] if name else []
            else:
                local_parts = [name] if name else []
        return local_parts, remote_parts

    def _transfer(
        self,
        req: TransferRequest,
        rule: RuleConfig,
        send: bool,
        local_parts: list[str],
        remote_parts: list[str],
        parent: Transfer | None,
    ) -> Transfer:
        config = self.rt.loaded.config
        defaults = config.scheduler
        partner = config.partners[req.partner]
        folder = self.rt.loaded.paths.rule_folder(rule)
        first = local_parts[0]
        local = Path(first) if os.path.isabs(first) else folder.joinpath(*local_parts)
        remote = "/".join(remote_parts)
        transfer_info = dict(req.transfer_info)
        follow_id = (
            (parent.follow_id if parent else "")
            or str(transfer_info.get("followID") or "")
            or uuid.uuid4().hex
        )
        transfer_info["followID"] = follow_id
        start = req.start or self.rt.clock.now()
        if start.tzinfo is None:
            start = start.replace(tzinfo=self.rt.loaded.tz)
        delay = (
            defaults.first_retry_delay if req.first_retry_delay is None else req.first_retry_delay
        )
        factor = req.retry_increment_factor
        t = Transfer(
            rule=rule.name,
            is_server=False,
            is_send=send,
            requester=req.account or partner.login or self.rt.local_host,
            requested=req.partner,
            protocol=partner.protocol,
            partner=req.partner,
            remote_id=uuid.uuid4().hex,
            follow_id=follow_id,
            parent_id=parent.id if parent else None,
            src_filename=local.name if send else posixpath.basename(remote),
            dest_filename=posixpath.basename(remote) if send else local.name,
            local_filepath=str(local),
            remote_filepath=remote,
            start=start,
            transfer_info=transfer_info,
            remaining_attempts=defaults.attempts if req.attempts is None else req.attempts,
            next_retry_delay=round(delay),
            retry_increment_factor=float(
                defaults.retry_increment_factor if factor is None else factor
            ),
            pre_tasks=[x.spec() for x in rule.pre],
            post_tasks=[x.spec() for x in rule.post],
            error_tasks=[x.spec() for x in rule.error],
        )
        lifecycle.apply(t, Event.CREATE, new=True)
        if not send:
            t.tmp_filepath = str(self.rt.loaded.paths.rule_tmp_folder(rule) / f"{t.remote_id}.part")
        return t

    # ------------------------------------------------------------------ operations

    async def _get(self, transfer_id: int) -> Transfer:
        t = await self.rt.store.get_transfer(transfer_id)
        if t is None:
            raise NotFoundError(f"no transfer {transfer_id}")
        return t

    async def pause(self, transfer_id: int) -> Transfer:
        """PLANNED or RUNNING -> PAUSED; a running pipeline is stopped for real, on
        whichever node runs it."""
        return await self._stop(transfer_id, StopReason.PAUSE, Event.PAUSE)

    async def resume(self, transfer_id: int) -> Transfer:
        """PAUSED, INTERRUPTED or ERROR -> PLANNED, to continue at its step, task and
        byte: a client transfer, or a server one whose data is complete (before that,
        only its partner can continue it)."""
        for _ in range(_TRIES):
            t = await self._get(transfer_id)
            refusal = lifecycle.resume_refusal(t)
            if refusal is not None:
                raise StateError(refusal)
            was = t.status
            if t.step == Step.ERROR_TASKS:  # died while running the error chain
                t.step, t.task_number = t.error_step, 0
            lifecycle.apply(t, Event.RESUME)
            t.next_attempt = None
            t.start = self.rt.clock.now()
            if await self.rt.store.save_transfer_if(t, was):
                self.wake()
                return t
        raise self._changing(transfer_id)

    async def cancel(self, transfer_id: int) -> Transfer:
        """Any non-final status -> CANCELLED; a received temp file is removed."""
        return await self._stop(transfer_id, StopReason.CANCEL, Event.CANCEL)

    async def _stop(self, transfer_id: int, reason: StopReason, event: Event) -> Transfer:
        """Pause or cancel: the run stopped where it runs (here, or through the
        forwarder on its node); a row that nobody runs changed here, only if nobody
        claimed it meanwhile."""
        for _ in range(_TRIES):
            t = await self._get(transfer_id)
            if not lifecycle.allowed(t.status, event):
                raise StateError(f"cannot {reason.value} a transfer that is {t.status}")
            if await self.engine.stop(transfer_id, reason):
                return await self._get(transfer_id)
            forwarder = self.forwarder
            if (
                t.status == Status.RUNNING
                and forwarder is not None
                and t.owner not in (None, forwarder.node)
            ):
                stopped = await forwarder.stop_elsewhere(t, reason)
                if stopped is not None:
                    return stopped
                continue
            was = t.status
            lifecycle.apply(t, event)
            t.stop = self.rt.clock.now()
            if not await self.rt.store.save_transfer_if(t, was):
                continue
            if event is Event.CANCEL:
                await self._remove_temp(t)
            return t
        raise self._changing(transfer_id)

    @staticmethod
    def _changing(transfer_id: int) -> StateError:
        return StateError(f"transfer {transfer_id} kept changing meanwhile; try again")

    async def _remove_temp(self, t: Transfer) -> None:
        if t.tmp_filepath and not t.is_send:
            rule = self.rt.loaded.config.rules.get(t.rule)
            root = self.rt.loaded.paths.rule_folder(rule) if rule else self.rt.loaded.paths.data_dir
            with contextlib.suppress(OSError):
                await asyncio.to_thread(safepath.unlink, Beneath.of(root, t.tmp_filepath))

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
        request = TransferRequest(
            rule=t.rule,
            partner=t.partner or "",
            is_send=t.is_send,
            file=t.local_filepath if t.is_send else t.remote_filepath,
            output=t.remote_filepath if t.is_send else t.dest_filename,
            transfer_info=dict(t.transfer_info),
        )
        return await self.create(request, trusted=True)
