"""What a partner sees on our servers: one folder per rule its account may use.

A rule folder lists the account's files (its own subfolder of the rule's folder, unless
the rule shares one folder) and, in a receive rule, its unfinished uploads under their
final names, sized by their durable progress, so that a partner can resume them
(OpenSSH `reput`, HTTP `HEAD`). Nothing else of the file system exists for it: no link
is followed, the rule's temp folder cannot be named, and a partner renames or deletes
only what its rule allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from gatewayd import lifecycle, safepath
from gatewayd.config.schema import RuleConfig
from gatewayd.errors import TransferError, os_error
from gatewayd.model import Direction, ErrorCode, Transfer
from gatewayd.pipeline import preregister
from gatewayd.pipeline.engine import Engine
from gatewayd.pipeline.files import set_times, valid_name
from gatewayd.pipeline.handles import UploadHandle
from gatewayd.ports import Entry
from gatewayd.safepath import Beneath
from gatewayd.store.base import TransferFilter

log = structlog.get_logger("gatewayd.server")


@dataclass(frozen=True)
class Target:
    """A virtual path resolved: a rule, and a file name in it (None for the folder)."""

    rule: RuleConfig
    name: str | None
    folder: Beneath  # the account's real folder for this rule, below the rule's folder

    @property
    def file(self) -> Beneath:
        return self.folder.child(self.name) if self.name else self.folder


class VirtualTree:
    """The virtual tree of the accounts, for every server of the gateway."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rt = engine.rt

    # ------------------------------------------------------------------ names

    def rules_of(self, account: str) -> list[RuleConfig]:
        return [r for r in self.rt.loaded.config.rules.values() if r.allows_account(account)]

    def account_folder(self, rule: RuleConfig, account: str) -> Beneath:
        root = Beneath(self.rt.loaded.paths.rule_folder(rule))
        return root if rule.shared_folder else root.child(account)

    @staticmethod
    def normalise(path: str) -> str:
        if not path.startswith("/"):
            path = "/" + path
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise TransferError(ErrorCode.TeForbidden, "'..' is not allowed in paths")
        return "/" + "/".join(parts)

    def resolve(self, account: str, path: str) -> Target | None:
        """The rule and file a virtual path names, None when it names no rule folder."""
        path = self.normalise(path)
        for rule in self.rules_of(account):
            if path == rule.path:
                return Target(rule, None, self.account_folder(rule, account))
            parent, name = posixpath.split(path)
            if parent == rule.path:
                return Target(rule, valid_name(name), self.account_folder(rule, account))
        return None

    def visible_file(self, account: str, path: str) -> Target:
        target = self.resolve(account, path)
        if target is None or target.name is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no such file {path}")
        return target

    def _virtual_dirs(self, account: str, path: str) -> list[str]:
        """Names of the virtual folders directly under `path` (prefixes of rule paths)."""
        prefix = path.rstrip("/") + "/"
        names = set()
        for rule in self.rules_of(account):
            if rule.path.startswith(prefix):
                names.add(rule.path[len(prefix) :].split("/")[0])
        return sorted(names)

    # ------------------------------------------------------------------ looking

    async def stat(self, account: str, path: str) -> Entry | None:
        path = self.normalise(path)
        target = self.resolve(account, path)
        if target is None or target.name is None:
            if path == "/" or self._virtual_dirs(account, path) or target is not None:
                return Entry(name=posixpath.basename(path) or "/", is_dir=True)
            return None
        if target.rule.direction == Direction.RECEIVE:
            unfinished = await self.unfinished(account, target.rule, target.name)
            if unfinished is not None:
                return Entry(target.name, False, unfinished.progress, unfinished=True)
        return await asyncio.to_thread(_stat_file, target.file)

    async def list_dir(self, account: str, path: str) -> list[Entry]:
        path = self.normalise(path)
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

    async def unfinished(self, account: str, rule: RuleConfig, name: str) -> Transfer | None:
        """The upload of `name` a partner may still continue (not expired)."""
        t = await self.rt.store.find_unfinished_upload(account, rule.name, name)
        return None if t is not None and preregister.is_expired(t) else t

    async def _unfinished_in(self, account: str, rule: RuleConfig) -> list[Transfer]:
        rows, _ = await self.rt.store.list_transfers(
            TransferFilter(
                statuses=tuple(sorted(lifecycle.RESUMABLE_UPLOAD)),
                rule=rule.name,
                account=account,
                is_server=True,
                limit=1000,
            )
        )
        return [t for t in rows if not t.is_send and lifecycle.needs_partner(t)]

    async def digest(self, account: str, path: str, algorithm: str) -> str:
        target = self.visible_file(account, path)
        try:
            return await asyncio.to_thread(_hash_file, target.file, algorithm)
        except OSError as exc:
            raise os_error(exc, f"cannot read {target.name}") from exc

    async def set_times(self, account: str, path: str, atime: float, mtime: float) -> None:
        target = self.visible_file(account, path)
        if target.rule.direction != Direction.RECEIVE:
            return  # files we send are ours: their times are not the partner's to set
        with contextlib.suppress(FileNotFoundError):  # an unfinished upload: no file yet
            await asyncio.to_thread(set_times, target.file, (atime, mtime))

    async def disk_space(self, account: str, path: str) -> os.statvfs_result:
        target = self.resolve(account, path)
        folder = self.rt.loaded.paths.data_dir
        if target is not None:
            folder = self.rt.loaded.paths.rule_folder(target.rule)
        return await asyncio.to_thread(_statvfs_existing, folder)

    # ------------------------------------------------------------------ changing

    def _awaiting_rename(self, account: str, target: Target) -> UploadHandle | None:
        """The account's own upload under the temporary name `target`, closed and
        waiting for its rename."""
        for run in self.engine.active.values():
            t, handle = run.transfer, getattr(run.data, "handle", None)
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
            return await self.unfinished(account, target.rule, target.name) is not None
        path = str(target.file.path)
        return any(
            run.transfer.is_send and run.transfer.local_filepath == path
            for run in self.engine.active.values()
        )

    async def rename(self, who: str, account: str, old_path: str, new_path: str) -> None:
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
        await self._audit(who, account, "file.rename", rule, {"from": old.name, "to": new.name})

    async def delete(self, who: str, account: str, path: str) -> None:
        """Delete one of the files of a send rule that allows it (`allow_delete`), so
        that partners can "get, then rm"; refused while the file is being downloaded.
        Audited."""
        target = self.visible_file(account, path)
        rule = target.rule
        if rule.direction != Direction.SEND or not rule.allow_delete:
            raise TransferError(ErrorCode.TeForbidden, f"files in {rule.path} cannot be deleted")
        if await self._is_busy(account, target):
            raise TransferError(ErrorCode.TeForbidden, f"{target.name} is being downloaded")
        if await asyncio.to_thread(safepath.regular_file, target.file) is None:
            raise TransferError(ErrorCode.TeFileNotFound, f"no file {target.name}")
        await asyncio.to_thread(safepath.unlink, target.file)
        await self._audit(who, account, "file.delete", rule, {"file": target.name})

    async def _audit(
        self, who: str, account: str, action: str, rule: RuleConfig, details: dict[str, object]
    ) -> None:
        details = {**details, "via": who}
        await self.rt.store.audit(f"account {account}", action, f"rule/{rule.name}", details)
        log.info(action, account=account, rule=rule.name, **details)


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
