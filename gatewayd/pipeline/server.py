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
import os
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gatewayd.config.schema import RuleConfig
from gatewayd.errors import TransferError
from gatewayd.fsutil import rename_noreplace
from gatewayd.model import Direction, ErrorCode, Status, Step, Transfer
from gatewayd.passwords import CredentialCache, averify_password
from gatewayd.pipeline import preregister
from gatewayd.pipeline.auth_throttle import AuthThrottle
from gatewayd.pipeline.engine import Engine, Run, StopReason
from gatewayd.pipeline.files import inside, os_error, valid_name
from gatewayd.ports import Entry, LocalFile, TransferHandle
from gatewayd.store.base import TransferFilter

log = structlog.get_logger("gatewayd.server")

_RESUMABLE_STEPS = (Step.NONE, Step.SETUP, Step.PRE_TASKS, Step.DATA)


@dataclass(frozen=True)
class Target:
    """A virtual path resolved: a rule, and a file name in it (None for the folder)."""

    rule: RuleConfig
    name: str | None
    folder: Path  # the account's real folder for this rule


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
        if account is None or not account.enabled:
            return False
        if password is not None:
            return bool(account.password) and await averify_password(
                account.password or "", password, self.credentials
            )
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

    def account_folder(self, rule: RuleConfig, account: str) -> Path:
        folder = self.rt.loaded.paths.rule_folder(rule)
        return folder if rule.shared_folder else folder / account

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

    def local_file(self, account: str, path: str) -> LocalFile | None:
        """The real file (or rule folder) behind a virtual path: None above the rules."""
        target = self.resolve(account, path)
        if target is None:
            return None
        local = target.folder / target.name if target.name else target.folder
        return LocalFile(local, target.rule.direction)

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
        return await asyncio.to_thread(_stat_file, target.folder / target.name)

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
        if direction == Direction.RECEIVE:
            return await self._open_upload(account, target, offset, remote, size, info)
        return await self._open_download(account, target, offset, remote, info)

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
            local_filepath=str(target.folder / name),
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
            raise TransferError(ErrorCode.TeForbidden, f"{name} is already being uploaded")
        if existing is not None and existing.step not in _RESUMABLE_STEPS:
            existing = None  # its data is complete: a new upload is a new transfer
        if offset > 0 and (existing is None or existing.progress != offset):
            held = existing.progress if existing else 0
            raise TransferError(
                ErrorCode.TeForbidden,
                f"cannot resume {name} at byte {offset}: {held} bytes are held",
            )
        if existing is not None and offset > 0:
            t = existing
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
        if not inside(self.rt.loaded.paths.rule_folder(target.rule), Path(t.local_filepath)):
            raise TransferError(ErrorCode.TeForbidden, f"{target.name} leaves the rule folder")
        if not await asyncio.to_thread(os.path.isfile, t.local_filepath):
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

    async def rename(self, account: str, old_path: str, new_path: str) -> None:
        old = self.resolve(account, old_path)
        new = self.resolve(account, new_path)
        if old is None or new is None or old.name is None or new.name is None:
            raise TransferError(ErrorCode.TeForbidden, "renames stay inside a rule folder")
        if old.rule.name != new.rule.name:
            raise TransferError(ErrorCode.TeForbidden, "cannot rename across rule folders")
        for run in list(self.engine.active.values()):
            t = run.transfer
            handle = run.handle
            if (
                isinstance(handle, UploadHandle)
                and handle.awaiting_rename
                and t.account == account
                and t.rule == old.rule.name
                and t.dest_filename == old.name
            ):
                await handle.renamed(new.name, new.folder)
                return
        await asyncio.to_thread(_rename_no_clobber, old.folder / old.name, new.folder / new.name)


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

    async def renamed(self, name: str, folder: Path) -> None:
        """The partner renamed the temporary name: complete DATA under `name`."""
        if self.run.stop_reason is not None:
            raise self.run.stopped_error()
        t = self.run.transfer
        t.dest_filename = name
        t.local_filepath = str(folder / name)
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


def _stat_file(path: Path) -> Entry | None:
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return Entry(path.name, False, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))


def _list_files(folder: Path) -> list[Entry]:
    entries = []
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
        for item in it:
            if item.name.startswith(".") or not item.is_file(follow_symlinks=False):
                continue
            st = item.stat(follow_symlinks=False)
            entries.append(
                Entry(item.name, False, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
            )
    return entries


def _rename_no_clobber(old: Path, new: Path) -> None:
    try:
        rename_noreplace(old, new)
    except FileExistsError as exc:
        raise TransferError(ErrorCode.TeForbidden, f"{new.name} already exists") from exc
    except OSError as exc:
        raise os_error(exc, f"cannot rename {old.name}") from exc
