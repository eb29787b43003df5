"""The core side of protocol servers: what `gatewayd.ports.ServerContext` offers them.

A protocol server maps its sessions onto this context: logins (`Logins`, shared by
every server), the account's virtual tree (`VirtualTree`), and the transfers partners
open. Each file a partner opens becomes a server transfer driven by the one driver
(`gatewayd.pipeline.run`); the protocol gets a handle that moves bytes and resolves
the DATA step. Every refusal is the core's (a typed TransferError), which each protocol
maps onto its own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import posixpath
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gatewayd import lifecycle, safepath
from gatewayd.errors import AlreadyRunning, ResumeRefused, TransferError
from gatewayd.lifecycle import Event
from gatewayd.model import Direction, ErrorCode, Status, Step, Transfer
from gatewayd.pipeline import preregister
from gatewayd.pipeline.data import ServerData
from gatewayd.pipeline.engine import Engine
from gatewayd.pipeline.handles import DownloadHandle, ServerHandle, UploadHandle
from gatewayd.pipeline.limits import Slot, TransferLimits
from gatewayd.pipeline.logins import Logins
from gatewayd.pipeline.tree import Target, VirtualTree
from gatewayd.ports import Entry, TransferHandle


@dataclass
class _Row:
    """The row a partner's open starts or continues."""

    transfer: Transfer
    # DATA was committed (or queued) with the row's insertion: entering it needs no
    # commit of its own.
    inserted_at_data: bool
    # The commit of a new row, not awaited by the open (see Store.insert_soon).
    recorded: Awaitable[None] | None = None


class CoreServerContext:
    """What a protocol server of ours gets from the core (see gatewayd.ports)."""

    def __init__(
        self,
        engine: Engine,
        server_name: str,
        protocol: str,
        *,
        logins: Logins,
        limits: TransferLimits,
        tree: VirtualTree,
    ) -> None:
        self.engine = engine
        self.rt = engine.rt
        self.server_name = server_name
        self.protocol = protocol
        self.logins = logins
        self.limits = limits
        self.tree = tree

    @property
    def state_dir(self) -> Path:
        return self.rt.loaded.paths.state_dir

    # ------------------------------------------------------------------ logins

    async def authenticate(
        self,
        login: str,
        *,
        password: str | None = None,
        public_key: str | None = None,
        remote: str = "",
    ) -> str | None:
        return await self.logins.authenticate(
            login,
            server=self.server_name,
            protocol=self.protocol,
            password=password,
            public_key=public_key,
            remote=remote,
        )

    def authorized_keys(self, login: str) -> list[str]:
        return self.logins.authorized_keys(login)

    def has_account(self, login: str) -> bool:
        return self.logins.account(login) is not None

    def rule_path(self, account: str, rule_name: str) -> str | None:
        rule = self.rt.loaded.config.rules.get(rule_name)
        return rule.path if rule is not None and rule.allows_account(account) else None

    # ------------------------------------------------------------------ the tree

    async def stat(self, account: str, path: str) -> Entry | None:
        return await self.tree.stat(account, path)

    async def list_dir(self, account: str, path: str) -> list[Entry]:
        return await self.tree.list_dir(account, path)

    async def digest(self, account: str, path: str, algorithm: str) -> str:
        return await self.tree.digest(account, path, algorithm)

    async def set_times(self, account: str, path: str, atime: float, mtime: float) -> None:
        await self.tree.set_times(account, path, atime, mtime)

    async def disk_space(self, account: str, path: str) -> os.statvfs_result:
        return await self.tree.disk_space(account, path)

    async def rename(self, account: str, old_path: str, new_path: str) -> None:
        await self.tree.rename(self._who(), account, old_path, new_path)

    async def delete(self, account: str, path: str) -> None:
        await self.tree.delete(self._who(), account, path)

    def _who(self) -> str:
        return f"{self.protocol} server {self.server_name}"

    # ------------------------------------------------------------------ transfers

    def is_temp_name(self, name: str) -> bool:
        patterns = self.rt.loaded.config.daemon.temp_patterns
        return any(fnmatch.fnmatch(name, p) for p in patterns)

    async def open_transfer(
        self,
        account: str,
        path: str,
        direction: Direction,
        *,
        offset: int = 0,
        truncate: bool = False,
        remote: str = "",
        size: int = -1,
        transfer_info: Mapping[str, object] | None = None,
    ) -> TransferHandle:
        opening = asyncio.ensure_future(
            self._open_transfer(
                account, path, direction, offset, truncate, remote, size, transfer_info
            )
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The caller gave up (a stop cut its request) while the row was being
            # written: the open goes to its end, then the transfer is ended, so that its
            # row never stays RUNNING without a run.
            with contextlib.suppress(BaseException):
                handle = await opening
                await handle.abort(
                    TransferError(ErrorCode.TeConnectionReset, "the request ended before any data")
                )
            raise

    async def _open_transfer(
        self,
        account: str,
        path: str,
        direction: Direction,
        offset: int,
        truncate: bool,
        remote: str,
        size: int,
        transfer_info: Mapping[str, object] | None,
    ) -> TransferHandle:
        target = self.tree.resolve(account, path)
        if target is None or target.name is None:
            raise TransferError(ErrorCode.TeForbidden, f"{path}: not a file of a rule folder")
        if target.rule.direction != direction:
            verb = "upload to" if direction == Direction.RECEIVE else "download from"
            raise TransferError(ErrorCode.TeForbidden, f"cannot {verb} {target.rule.path}")
        if self.engine.shutting_down:
            # Before any row is written: a refused open must leave nothing RUNNING.
            raise TransferError(ErrorCode.TeShuttingDown, "the gateway is shutting down")
        info = dict(transfer_info or {})
        slots: list[Slot] = []
        try:
            if direction == Direction.RECEIVE:
                # One upload of a name at a time: held before the first pause.
                slots.append(self.limits.hold_name(account, target.rule.name, target.name))
            slots.append(self.limits.acquire(account, direction, self._limit(account, direction)))
            if remote:
                info.setdefault("remoteAddress", remote)
            if direction == Direction.RECEIVE:
                row = await self._upload_row(account, target, offset, size, info)
            else:
                row = await self._download_row(account, target, offset, info)
        except BaseException:
            for slot in slots:
                slot.release()
            raise
        return await self._start(row, slots, offset)

    def _limit(self, account: str, direction: Direction) -> int:
        """The account's own limit, else this server's (0: none)."""
        found = self.rt.loaded.config.accounts.get(account)
        own = None
        if found is not None:
            own = found.max_uploads if direction == Direction.RECEIVE else found.max_downloads
        if own is not None:
            return own
        server = self.rt.loaded.config.servers.get(self.server_name)
        if server is None:
            return 0
        if direction == Direction.RECEIVE:
            return server.max_uploads_per_account
        return server.max_downloads_per_account

    def _new_row(self, account: str, target: Target, is_send: bool) -> Transfer:
        rule, name = target.rule, target.name or ""
        t = Transfer(
            rule=rule.name,
            is_server=True,
            is_send=is_send,
            requester=account,
            requested=self.server_name,
            protocol=self.protocol,
            account=account,
            remote_id=uuid.uuid4().hex,
            src_filename=name,
            dest_filename=name,
            local_filepath=str(target.file.path),
            remote_filepath=posixpath.join(rule.path, name),
            start=self.rt.clock.now(),
            pre_tasks=[x.spec() for x in rule.pre],
            post_tasks=[x.spec() for x in rule.post],
            error_tasks=[x.spec() for x in rule.error],
        )
        if not is_send:
            tmp = self.rt.loaded.paths.rule_tmp_folder(rule) / f"{t.remote_id}.part"
            t.tmp_filepath = str(tmp)
        return t

    async def _upload_row(
        self, account: str, target: Target, offset: int, size: int, info: dict[str, object]
    ) -> _Row:
        """The row an upload continues or starts, RUNNING (a new one maybe not yet
        committed)."""
        name = target.name or ""
        existing = await self.tree.unfinished(account, target.rule, name)
        if existing is not None and existing.status == Status.AVAILABLE:
            existing = await preregister.claim_upload(
                self.rt, existing, self.server_name, self.protocol
            )
        if existing is not None and (
            existing.id in self.engine.active or existing.status == Status.RUNNING
        ):
            # RUNNING and not ours: another node of the database runs it (or ran it and
            # died: once its lease has run out, a takeover makes it INTERRUPTED).
            raise AlreadyRunning(name)
        if existing is not None and not lifecycle.needs_partner(existing):
            existing = None  # its data is complete: a new upload is a new transfer
        held = existing.progress if existing else 0
        if offset > held:
            # Never more than the durable bytes; the bytes held stay as they are.
            raise ResumeRefused(name, offset, held)
        if existing is None:
            t = self._new_row(account, target, is_send=False)
            t.transfer_info.update(info)
            t.follow_id = str(info.get("followID") or "")
            lifecycle.apply(t, Event.OPEN, new=True)
            inserted_at_data = not t.pre_tasks
            if inserted_at_data:
                t.step = Step.DATA  # nothing runs before the data: one commit creates it
        else:
            t = existing
            t.transfer_info.update(info)
            if offset == 0:  # a plain overwrite starts it again from zero
                t.step, t.task_number, t.filesize = Step.NONE, 0, -1
            # Any offset up to what is held continues the same transfer: the temp file
            # is cut there (and the kept prefix hashed again) when it is opened.
            t.progress = offset
            lifecycle.apply(t, Event.OPEN)
            inserted_at_data = False
        if size >= 0:
            t.filesize = size
        t.error_code, t.error_msg, t.error_step = ErrorCode.TeOk, "", Step.NONE
        t.stop = None
        if existing is None:
            return _Row(t, inserted_at_data, await self.rt.store.insert_soon(t))
        await self.rt.store.save_transfer(t)
        return _Row(t, inserted_at_data)

    async def _download_row(
        self, account: str, target: Target, offset: int, info: dict[str, object]
    ) -> _Row:
        t = await preregister.find_download(
            self.rt, account, target.rule.name, target.name or "", self.server_name, self.protocol
        ) or self._new_row(account, target, is_send=True)
        where = safepath.Beneath.of(self.rt.loaded.paths.rule_folder(target.rule), t.local_filepath)
        if await asyncio.to_thread(safepath.regular_file, where) is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no file {target.name}")
        t.transfer_info.update(info)
        new = t.id is None
        if new:
            t.follow_id = str(info.get("followID") or "")
        lifecycle.apply(t, Event.OPEN, new=new)
        t.progress = offset
        inserted_at_data = not t.pre_tasks
        if inserted_at_data:
            t.step = Step.DATA
        if new:
            return _Row(t, inserted_at_data, await self.rt.store.insert_soon(t))
        await self.rt.store.save_transfer(t)
        return _Row(t, False)

    async def _start(self, row: _Row, slots: list[Slot], offset: int) -> ServerHandle:
        """Start the run; return the handle once its DATA step is open (or raise what
        ended the run before, e.g. a pre task's failure)."""
        t = row.transfer
        data = ServerData(
            offset,
            self.is_temp_name,
            lambda: self.rt.loaded.config.daemon.temp_rename_timeout,
        )
        try:
            run = self.engine.start(t, data)
        except BaseException:
            for slot in slots:
                slot.release()
            if self.engine.shutting_down:
                await self._interrupted(t)
            raise
        run.slots += slots
        run.inserted_at_data = row.inserted_at_data
        run.recorded = row.recorded
        await data.ready
        if run.done.is_set() or run.stop_reason is not None:
            await run.done.wait()
            raise run.error or run.stopped_error()
        handle: ServerHandle = DownloadHandle(run, data) if t.is_send else UploadHandle(run, data)
        data.handle = handle
        return handle

    async def _interrupted(self, t: Transfer) -> None:
        """The stop began while this row was being committed RUNNING: record it as
        interrupted by the shutdown (its partner resumes it later), not left RUNNING."""
        lifecycle.apply(t, Event.SHUTDOWN)
        t.error_code, t.error_msg = ErrorCode.TeShuttingDown, "gateway shutting down"
        t.stop = self.rt.clock.now()
        await self.rt.store.save_transfer(t)
