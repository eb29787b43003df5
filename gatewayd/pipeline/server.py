"""The core side of protocol servers: accounts, the virtual tree, server transfers.

`CoreServerContext` implements `gatewayd.ports.ServerContext`. A protocol server maps
its sessions onto it; each file a partner opens becomes a server transfer driven by the
same engine as client transfers, through a `TransferHandle`.

The virtual tree of an account: one folder per rule path the account may use. A rule
folder lists the account's files (its own subfolder of the rule's folder, unless the rule
shares one folder), plus its unfinished uploads under their final names, sized by their
durable progress, so that a partner can resume them (OpenSSH `reput`, HTTP `HEAD`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gatewayd import safepath
from gatewayd.config.schema import RuleConfig
from gatewayd.errors import AlreadyRunning, ResumeRefused, TransferError, os_error
from gatewayd.model import Direction, ErrorCode, Status, Step, Transfer
from gatewayd.passwords import CredentialCache, DecoyHash, averify_password
from gatewayd.pipeline import preregister
from gatewayd.pipeline.auth_throttle import AuthThrottle
from gatewayd.pipeline.engine import Engine, Run, StopReason
from gatewayd.pipeline.files import valid_name
from gatewayd.pipeline.limits import TransferLimits
from gatewayd.ports import Entry, TransferHandle
from gatewayd.safepath import Beneath
from gatewayd.store.base import TransferFilter

log = structlog.get_logger("gatewayd.server")

_RESUMABLE_STEPS = (Step.NONE, Step.SETUP, Step.PRE_TASKS, Step.DATA)


@dataclass(frozen=True)
class Target:
    """A virtual path resolved: a rule, and a file name in it (None for the folder)."""

    rule: RuleConfig
    name: str | None
    folder: Beneath  # the account's real folder for this rule, below the rule's folder

    @property
    def file(self) -> Beneath:
        return self.folder.child(self.name) if self.name else self.folder


def _public_key_id(key: str) -> tuple[str, str] | None:
    parts = key.split()
    return (parts[0], parts[1]) if len(parts) >= 2 else None


class CoreServerContext:
    """What a protocol server of ours gets from the core (see gatewayd.ports)."""

    def __init__(
        self,
        engine: Engine,
        server_name: str,
        protocol: str,
        throttle: AuthThrottle | None = None,
        limits: TransferLimits | None = None,
        decoy: DecoyHash | None = None,
    ) -> None:
        self.engine = engine
        self.rt = engine.rt
        self.server_name = server_name
        self.protocol = protocol
        # Shared by all servers of a gateway (see Gateway), so failures add up.
        self.throttle = throttle or AuthThrottle()
        # Verified passwords, briefly: HTTP clients send them on every request, and an
        # argon2 check costs ~0.1 s of CPU.
        self.credentials = CredentialCache()
        self.decoy = decoy or DecoyHash()
        # Shared by all servers too: an account's transfers count once, whichever server.
        self.limits = limits or TransferLimits()

    @property
    def state_dir(self) -> Path:
        return self.rt.loaded.paths.state_dir

    # ------------------------------------------------------------------ accounts

    async def authenticate(
        self,
        login: str,
        *,
        password: str | None = None,
        public_key: str | None = None,
        remote: str = "",
    ) -> str | None:
        """Also throttles: failed passwords are logged (never the secret), counted per
        address and account, answered ever slower, then refused for a while."""
        where = {"server": self.server_name, "login": login, "remote": remote}
        if self.throttle.banned_for(remote, login):
            log.warning("login refused: too many failures", **where)
            self.rt.observer.login_failed(self.server_name, self.protocol)
            return None
        if await self._credential_ok(login, password, public_key):
            self.throttle.success(remote, login)
            return login
        if password is None:
            # A refused key is not a failure: clients offer each of their keys in turn.
            return None
        delay = self.throttle.failure(remote, login)
        log.warning("login failed", method="password", delay=delay, **where)
        self.rt.observer.login_failed(self.server_name, self.protocol)
        if delay:
            await asyncio.sleep(delay)
        return None

    async def _credential_ok(
        self, login: str, password: str | None, public_key: str | None
    ) -> bool:
        account = self.rt.loaded.config.accounts.get(login)
        usable = account is not None and account.enabled
        if password is not None:
            # The same work whether the login exists or not: an unknown, disabled or
            # password-less account is checked against a decoy, never answered at once.
            hashed = account.password if usable and account and account.password else None
            ok = await averify_password(
                hashed or await self.decoy.get(), password, self.credentials
            )
            return ok and hashed is not None
        if account is None or not account.enabled:
            return False
        if public_key is not None:
            wanted = _public_key_id(public_key)
            known = {_public_key_id(k) for k in account.public_keys}
            return wanted is not None and wanted in known
        return False

    def authorized_keys(self, login: str) -> list[str]:
        account = self.rt.loaded.config.accounts.get(login)
        return list(account.public_keys) if account and account.enabled else []

    def has_account(self, login: str) -> bool:
        account = self.rt.loaded.config.accounts.get(login)
        return account is not None and account.enabled

    def rule_path(self, account: str, rule_name: str) -> str | None:
        rule = self.rt.loaded.config.rules.get(rule_name)
        return rule.path if rule is not None and rule.allows_account(account) else None

    # ------------------------------------------------------------------ the tree

    def _rules(self, account: str) -> list[RuleConfig]:
        return [r for r in self.rt.loaded.config.rules.values() if r.allows_account(account)]

    def account_folder(self, rule: RuleConfig, account: str) -> Beneath:
        root = Beneath(self.rt.loaded.paths.rule_folder(rule))
        return root if rule.shared_folder else root.child(account)

    @staticmethod
    def _normalise(path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise TransferError(ErrorCode.TeForbidden, "'..' is not allowed in paths")
        return "/" + "/".join(parts)

    def resolve(self, account: str, path: str) -> Target | None:
        """The rule and file a virtual path names, None when it names no rule folder."""
        path = self._normalise(path)
        for rule in self._rules(account):
            if path == rule.path:
                return Target(rule, None, self.account_folder(rule, account))
            parent, name = posixpath.split(path)
            if parent == rule.path:
                return Target(rule, valid_name(name), self.account_folder(rule, account))
        return None

    def _virtual_dirs(self, account: str, path: str) -> list[str]:
        """Names of the virtual folders directly under `path` (prefixes of rule paths)."""
        prefix = path.rstrip("/") + "/"
        names = set()
        for rule in self._rules(account):
            if rule.path.startswith(prefix):
                names.add(rule.path[len(prefix) :].split("/")[0])
        return sorted(names)

    def _visible_file(self, account: str, path: str) -> Target:
        target = self.resolve(account, path)
        if target is None or target.name is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no such file {path}")
        return target

    async def digest(self, account: str, path: str, algorithm: str) -> str:
        target = self._visible_file(account, path)
        return await asyncio.to_thread(_hash_file, target.file, algorithm)

    async def set_times(self, account: str, path: str, atime: float, mtime: float) -> None:
        target = self._visible_file(account, path)
        if target.rule.direction != Direction.RECEIVE:
            return  # files we send are ours: their times are not the partner's to set
        with contextlib.suppress(FileNotFoundError):  # an unfinished upload: no file yet
            await asyncio.to_thread(_set_times, target.file, atime, mtime)

    async def disk_space(self, account: str, path: str) -> os.statvfs_result:
        target = self.resolve(account, path)
        folder = self.rt.loaded.paths.data_dir
        if target is not None:
            folder = self.rt.loaded.paths.rule_folder(target.rule)
        return await asyncio.to_thread(_statvfs_existing, folder)

    async def stat(self, account: str, path: str) -> Entry | None:
        path = self._normalise(path)
        target = self.resolve(account, path)
        if target is None or target.name is None:
            if path == "/" or self._virtual_dirs(account, path) or target is not None:
                return Entry(name=posixpath.basename(path) or "/", is_dir=True)
            return None
        if target.rule.direction == Direction.RECEIVE:
            unfinished = await self._unfinished(account, target.rule, target.name)
            if unfinished is not None:
                return Entry(target.name, False, unfinished.progress, unfinished=True)
        return await asyncio.to_thread(_stat_file, target.file)

    async def list_dir(self, account: str, path: str) -> list[Entry]:
        path = self._normalise(path)
        target = self.resolve(account, path)
        entries = {
            name: Entry(name=name, is_dir=True) for name in self._virtual_dirs(account, path)
        }
        if target is None and not entries and path != "/":
            raise TransferError(ErrorCode.TeFileNotFound, f"no such folder {path}")
        if target is not None and target.name is None:
            for entry in await asyncio.to_thread(_list_files, target.folder):
                entries.setdefault(entry.name, entry)
            if target.rule.direction == Direction.RECEIVE:
                for t in await self._unfinished_in(account, target.rule):
                    entries[t.dest_filename] = Entry(
                        t.dest_filename, False, t.progress, unfinished=True
                    )
        return sorted(entries.values(), key=lambda e: e.name)

    async def _unfinished(self, account: str, rule: RuleConfig, name: str) -> Transfer | None:
        t = await self.rt.store.find_unfinished_upload(account, rule.name, name)
        return None if t is not None and preregister.is_expired(t) else t

    async def _unfinished_in(self, account: str, rule: RuleConfig) -> list[Transfer]:
        statuses = (Status.RUNNING, Status.INTERRUPTED, Status.ERROR, Status.PAUSED)
        rows, _ = await self.rt.store.list_transfers(
            TransferFilter(
                statuses=statuses, rule=rule.name, account=account, is_server=True, limit=1000
            )
        )
        return [t for t in rows if not t.is_send and t.step in _RESUMABLE_STEPS]

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
        target = self.resolve(account, path)
        if target is None or target.name is None:
            raise TransferError(ErrorCode.TeForbidden, f"{path}: not a file of a rule folder")
        if target.rule.direction != direction:
            verb = "upload to" if direction == Direction.RECEIVE else "download from"
            raise TransferError(ErrorCode.TeForbidden, f"cannot {verb} {target.rule.path}")
        info = dict(transfer_info or {})
        slots = []
        try:
            if direction == Direction.RECEIVE:
                # One upload of a name at a time: held before the first pause.
                slots.append(self.limits.hold_name(account, target.rule.name, target.name))
            slots.append(self.limits.acquire(account, direction, self._limit(account, direction)))
            if direction == Direction.RECEIVE:
                handle = await self._open_upload(account, target, offset, remote, size, info)
            else:
                handle = await self._open_download(account, target, offset, remote, info)
        except BaseException:
            for slot in slots:
                slot.release()
            raise
        handle.run.slots += slots
        return handle

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

    def _new_row(self, account: str, target: Target, is_send: bool, remote: str) -> Transfer:
        rule, name = target.rule, target.name or ""
        return Transfer(
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
            transfer_info={"remoteAddress": remote} if remote else {},
            pre_tasks=[t.spec() for t in rule.pre],
            post_tasks=[t.spec() for t in rule.post],
            error_tasks=[t.spec() for t in rule.error],
        )

    async def _open_upload(
        self,
        account: str,
        target: Target,
        offset: int,
        remote: str,
        size: int,
        info: dict[str, object],
    ) -> TransferHandle:
        name = target.name or ""
        existing = await self._unfinished(account, target.rule, name)
        if existing is not None and existing.status == Status.AVAILABLE:
            existing = await preregister.claim_upload(
                self.rt, existing, self.server_name, self.protocol
            )
        if existing is not None and existing.id in self.engine.active:
            raise AlreadyRunning(name)
        if existing is not None and existing.step not in _RESUMABLE_STEPS:
            existing = None  # its data is complete: a new upload is a new transfer
        held = existing.progress if existing else 0
        if offset > held:
            # Never more than the durable bytes; the bytes held stay as they are.
            raise ResumeRefused(name, offset, held)
        if existing is not None and offset > 0:
            # Any offset up to what is held continues the same transfer: the temp file
            # is cut there (and the kept prefix hashed again) when it is opened.
            t = existing
            t.progress = offset
        elif existing is not None:  # a plain overwrite starts it again from zero
            t = existing
            t.progress, t.step, t.task_number, t.filesize = 0, Step.NONE, 0, -1
        else:
            t = self._new_row(account, target, is_send=False, remote=remote)
            t.transfer_info.update(info)
            t.follow_id = str(info.get("followID") or "")
            t.tmp_filepath = str(
                self.rt.loaded.paths.rule_tmp_folder(target.rule) / f"{t.remote_id}.part"
            )
            t.status = Status.RUNNING
            if not t.pre_tasks:
                t.step = Step.DATA  # nothing runs before the data: one commit creates it
            await self.rt.store.insert_transfer(t)
        new = existing is None
        if not new:
            t.transfer_info.update(info)
        t.status = Status.RUNNING
        t.error_code, t.error_msg, t.error_step = ErrorCode.TeOk, "", Step.NONE
        t.stop = None
        if size >= 0:
            t.filesize = size
        run = self.engine.new_run(t)
        try:
            await self._begin(run, new=new and t.step == Step.DATA)
            await run.open_receive()
        except TransferError as exc:
            await run.fail(exc)
            self.engine.release(run)
            raise
        return UploadHandle(self, run)

    async def _open_download(
        self, account: str, target: Target, offset: int, remote: str, info: dict[str, object]
    ) -> TransferHandle:
        t = await preregister.find_download(
            self.rt, account, target.rule.name, target.name or "", self.server_name, self.protocol
        ) or self._new_row(account, target, is_send=True, remote=remote)
        where = Beneath.of(self.rt.loaded.paths.rule_folder(target.rule), t.local_filepath)
        if await asyncio.to_thread(safepath.regular_file, where) is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no file {target.name}")
        t.transfer_info.update(info)
        if t.id is None:
            t.follow_id = str(info.get("followID") or "")
        t.status = Status.RUNNING
        t.progress = offset
        if not t.pre_tasks:
            t.step = Step.DATA
        if t.id is None:
            await self.rt.store.insert_transfer(t)
        else:
            await self.rt.store.save_transfer(t)
        run = self.engine.new_run(t)
        try:
            await self._begin(run, new=t.step == Step.DATA)
            sending = await run.open_send(offset)
            t.progress = min(offset, sending.size)
        except TransferError as exc:
            await run.fail(exc)
            self.engine.release(run)
            raise
        return DownloadHandle(self, run, t.progress)

    async def _begin(self, run: Run, *, new: bool = False) -> None:
        """SETUP and PRE TASKS of a server transfer (skipped where a resume is past them).
        A `new` row without pre tasks was inserted at DATA: nothing more to commit."""
        t = run.transfer
        if t.step in (Step.NONE, Step.SETUP):
            await run.enter(Step.SETUP, commit=False)
        if t.step in (Step.SETUP, Step.PRE_TASKS):
            await run.run_step_chain(Step.PRE_TASKS)
        await run.enter(Step.DATA, commit=not new)

    def _awaiting_rename(self, account: str, target: Target) -> UploadHandle | None:
        """The account's own upload under the temporary name `target`, closed and
        waiting for its rename."""
        for run in self.engine.active.values():
            t, handle = run.transfer, run.handle
            if (
                isinstance(handle, UploadHandle)
                and handle.awaiting_rename
                and t.account == account
                and t.rule == target.rule.name
                and t.dest_filename == target.name
            ):
                return handle
        return None

    async def _is_busy(self, account: str, target: Target) -> bool:
        """Whether a name is an upload not finished yet, or a file being downloaded."""
        assert target.name is not None
        if target.rule.direction == Direction.RECEIVE:
            return await self._unfinished(account, target.rule, target.name) is not None
        path = str(target.file.path)
        return any(
            run.transfer.is_send and run.transfer.local_filepath == path
            for run in self.engine.active.values()
        )

    async def rename(self, account: str, old_path: str, new_path: str) -> None:
        """Complete the account's own upload made under a temporary name, or, where a
        receive rule allows it (`allow_rename`), rename one of the account's received
        files within its folder (audited). Nothing else: a partner never renames what
        the gateway sends, nor another account's files, nor the gateway's own."""
        old = self.resolve(account, old_path)
        new = self.resolve(account, new_path)
        if old is None or new is None or old.name is None or new.name is None:
            raise TransferError(ErrorCode.TeForbidden, "renames stay inside a rule folder")
        if old.rule.name != new.rule.name:
            raise TransferError(ErrorCode.TeForbidden, "cannot rename across rule folders")
        handle = self._awaiting_rename(account, old)
        if handle is not None:
            await handle.renamed(new.name, new.file)
            return
        rule = old.rule
        if rule.direction != Direction.RECEIVE or not rule.allow_rename:
            raise TransferError(ErrorCode.TeForbidden, f"files in {rule.path} cannot be renamed")
        for target in (old, new):
            if await self._is_busy(account, target):
                raise TransferError(
                    ErrorCode.TeForbidden, f"{target.name} is an upload not finished yet"
                )
        await asyncio.to_thread(_rename_no_clobber, old.file, new.file)
        await self._audit(account, "file.rename", rule, {"from": old.name, "to": new.name})

    async def delete(self, account: str, path: str) -> None:
        """Delete one of the files of a send rule that allows it (`allow_delete`), so
        that partners can "get, then rm"; refused while the file is being downloaded.
        Audited."""
        target = self._visible_file(account, path)
        rule = target.rule
        if rule.direction != Direction.SEND or not rule.allow_delete:
            raise TransferError(ErrorCode.TeForbidden, f"files in {rule.path} cannot be deleted")
        if await self._is_busy(account, target):
            raise TransferError(ErrorCode.TeForbidden, f"{target.name} is being downloaded")
        if await asyncio.to_thread(safepath.regular_file, target.file) is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no file {target.name}")
        await asyncio.to_thread(safepath.unlink, target.file)
        await self._audit(account, "file.delete", rule, {"file": target.name})

    async def _audit(
        self, account: str, action: str, rule: RuleConfig, details: dict[str, object]
    ) -> None:
        details = {**details, "server": self.server_name, "protocol": self.protocol}
        await self.rt.store.audit(f"account {account}", action, f"rule/{rule.name}", details)
        log.info(action, account=account, rule=rule.name, **details)


class _ServerHandle(TransferHandle):
    ctx: CoreServerContext
    run: Run
    closed: bool

    async def abort(self, error: TransferError) -> None:
        """The broken end: ERROR with the durable bytes kept, or INTERRUPTED when it is
        our own shutdown that broke the session."""
        if self.closed or self.run.stop_reason is not None:
            return
        self.closed = True
        try:
            if self.ctx.engine.shutting_down:
                await self.run.end_stopped(StopReason.SHUTDOWN)
            else:
                await self.run.fail(error)
        finally:
            self.ctx.engine.release(self.run)


class UploadHandle(_ServerHandle):
    """A partner's upload: bytes go to the temp file; a clean close completes it."""

    def __init__(self, ctx: CoreServerContext, run: Run) -> None:
        self.ctx, self.run = ctx, run
        t = run.transfer
        self.transfer_id = t.id or 0
        self.direction = Direction.RECEIVE
        self.offset = t.progress
        self.size = t.filesize
        self.closed = False
        self.awaiting_rename = False
        self._expected_sha256: str | None = None
        self._renamed = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        run.handle = self

    def _check_running(self) -> None:
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        if self.closed:
            raise TransferError(ErrorCode.TeInternal, "transfer already closed")

    async def write(self, offset: int, data: bytes) -> None:
        self._check_running()
        receiving = self.run.receiving
        if receiving is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        await receiving.write(offset, data)
        await self.run.data_hook(offset + len(data))

    async def read(self, offset: int, size: int) -> bytes:
        raise TransferError(ErrorCode.TeForbidden, "this file is open for writing")

    async def sync(self) -> None:
        self._check_running()
        receiving = self.run.receiving
        if receiving is not None:
            await receiving.checkpoint(wait=True)

    async def close(self, expected_sha256: str | None = None) -> None:
        self._check_running()
        self.closed = True
        self._expected_sha256 = expected_sha256
        if self.ctx.is_temp_name(self.run.transfer.dest_filename):
            await self._await_rename()
            return
        await self._complete()

    async def _complete(self) -> None:
        run = self.run
        try:
            await run.complete_receive(expected_sha256=self._expected_sha256)
            if self.times is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.utime, run.transfer.local_filepath, self.times)
            await run.run_chain(Step.POST_TASKS)
            await run.finalize()
        except TransferError as exc:
            await run.fail(exc)
            raise
        finally:
            self.ctx.engine.release(run)

    async def _await_rename(self) -> None:
        """A temporary name completes on rename, not on close: keep the bytes durable and
        wait (bounded) for the rename to the final name."""
        receiving = self.run.receiving
        if receiving is not None:
            await receiving.checkpoint(wait=True)
        await self.run.save()
        self.awaiting_rename = True
        self._watchdog = asyncio.ensure_future(self._expire())

    async def _expire(self) -> None:
        timeout = self.ctx.rt.loaded.config.daemon.temp_rename_timeout
        if await self.ctx.rt.clock.wait(self._renamed, timeout) or self.run.stop_reason:
            return
        self.awaiting_rename = False
        name = self.run.transfer.dest_filename
        await self.run.fail(
            TransferError(
                ErrorCode.TeDataTransfer,
                f"upload under temporary name {name} was never renamed (waited {timeout:g} s)",
            )
        )
        self.ctx.engine.release(self.run)

    async def renamed(self, name: str, file: Beneath) -> None:
        """The partner renamed the temporary name: complete DATA under `name`."""
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        t = self.run.transfer
        t.dest_filename = name
        t.local_filepath = str(file.path)
        t.remote_filepath = posixpath.join(posixpath.dirname(t.remote_filepath), name)
        if self.ctx.is_temp_name(name):
            await self.run.save()
            return
        self.awaiting_rename = False
        self._renamed.set()
        await self._complete()


class DownloadHandle(_ServerHandle):
    """A partner's download: reads at offsets; complete once every byte was read."""

    def __init__(self, ctx: CoreServerContext, run: Run, offset: int) -> None:
        self.ctx, self.run = ctx, run
        t = run.transfer
        self.transfer_id = t.id or 0
        self.direction = Direction.SEND
        self.offset = offset
        self.size = t.filesize
        self.closed = False
        self._read_to = offset

    async def write(self, offset: int, data: bytes) -> None:
        raise TransferError(ErrorCode.TeForbidden, "this file is open for reading")

    async def read(self, offset: int, size: int) -> bytes:
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        sending = self.run.sending
        if sending is None:
            raise TransferError(ErrorCode.TeInternal, "no data file open")
        data = await sending.read(offset, size)
        if offset <= self._read_to < offset + len(data):
            self._read_to = offset + len(data)
            self.run.note_progress(self._read_to)
        await self.run.data_hook(offset + len(data))
        return data

    async def close(self, expected_sha256: str | None = None) -> None:
        if self.closed or self.run.stop_reason is not None:
            return
        self.closed = True
        run = self.run
        try:
            if self._read_to < self.size:
                raise TransferError(
                    ErrorCode.TeDataTransfer,
                    f"partner stopped reading at byte {self._read_to} of {self.size}",
                )
            await run.complete_send()
            await run.run_chain(Step.POST_TASKS)
            await run.finalize()
        except TransferError as exc:
            await run.fail(exc)
            raise
        finally:
            self.ctx.engine.release(run)


def _entry(name: str, st: os.stat_result) -> Entry:
    return Entry(name, False, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))


def _stat_file(where: Beneath) -> Entry | None:
    st = safepath.regular_file(where)
    return _entry(where.name, st) if st is not None else None


def _list_files(folder: Beneath) -> list[Entry]:
    return [_entry(name, st) for name, st in safepath.list_files(folder)]


def _hash_file(where: Beneath, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    fd = safepath.open_file(where, os.O_RDONLY)
    with open(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _set_times(where: Beneath, atime: float, mtime: float) -> None:
    with safepath.folder(where.parent()) as dir_fd:
        os.utime(where.name, (atime, mtime), dir_fd=dir_fd, follow_symlinks=False)


def _statvfs_existing(folder: Path) -> os.statvfs_result:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.statvfs(folder)


def _rename_no_clobber(old: Beneath, new: Beneath) -> None:
    try:
        safepath.rename(old, new)
    except FileExistsError as exc:
        raise TransferError(ErrorCode.TeForbidden, f"{new.name} already exists") from exc
    except OSError as exc:
        raise os_error(exc, f"cannot rename {old.name}") from exc
