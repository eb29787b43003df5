"""The `local` protocol: a partner that is a folder on this machine (a mounted share).

Client side only. It moves bytes through the same `ProtocolClient` interface as the
network protocols: sends land under a temporary name and are renamed when complete,
resumes start from the bytes the folder already holds.
"""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic import Strict as StrictMode

from gatewayd import safepath
from gatewayd.config.schema import PartnerConfig
from gatewayd.errors import TransferError, os_error
from gatewayd.model import ErrorCode
from gatewayd.ports import (
    DataSink,
    DataSource,
    Delivered,
    ProtocolClient,
    ProtocolSpec,
    RemoteStat,
    register,
)
from gatewayd.safepath import Beneath
from protocols.pacing import Pacer

CHUNK = 1 << 20
SYNC_EVERY = 16 << 20  # bytes between fsyncs of a send (each one confirms progress)


class LocalPartnerConfig(PartnerConfig):
    """`protocol: local` partners: `root` is the folder that stands for the partner."""

    root: Annotated[Path, StrictMode(False)]
    # Sends land under `<name><temp_suffix>` and are renamed when complete.
    temp_suffix: str = ".part"
    # Bytes per second, 0 = unlimited (bandwidth limits for shares that need them).
    max_rate: Annotated[int, Field(ge=0)] = 0


class LocalClient(ProtocolClient):
    def __init__(self, name: str, config: PartnerConfig) -> None:
        assert isinstance(config, LocalPartnerConfig)
        self.name, self.config = name, config

    def _path(self, remote_path: str) -> Beneath:
        """The file below the partner folder; no component may be `..` or a link."""
        parts = tuple(p for p in remote_path.split("/") if p not in ("", "."))
        if not parts or ".." in parts:
            raise TransferError(ErrorCode.TeForbidden, f"{remote_path} leaves the partner folder")
        return Beneath(self.config.root, parts)

    def _temp(self, remote_path: str) -> Beneath:
        path = self._path(remote_path)
        return path.parent().child(path.name + self.config.temp_suffix)

    async def connect(self) -> None:
        if not await asyncio.to_thread(os.path.isdir, self.config.root):
            raise TransferError(
                ErrorCode.TeConnection, f"partner folder {self.config.root} is not reachable"
            )

    async def stat(self, remote_path: str) -> RemoteStat | None:
        return await asyncio.to_thread(_stat, self._path(remote_path))

    async def sent_offset(self, remote_path: str, local_offset: int) -> int:
        held = await asyncio.to_thread(_stat, self._temp(remote_path))
        return min(local_offset, held.size if held else 0)

    async def send(self, source: DataSource, remote_path: str, offset: int) -> Delivered:
        temp, final = self._temp(remote_path), self._path(remote_path)
        pacer = Pacer(self.config.max_rate)
        try:
            fd = await asyncio.to_thread(_open_at, temp, offset)
        except OSError as exc:
            raise os_error(exc, f"cannot write to partner {self.name}") from exc
        try:
            position, unsynced = offset, 0
            while position < source.size:
                data = await source.read(position, CHUNK)
                if not data:
                    raise TransferError(ErrorCode.TeDataTransfer, "local file shrank during send")
                await asyncio.to_thread(_pwrite_all, fd, data, position)
                position += len(data)
                unsynced += len(data)
                if unsynced >= SYNC_EVERY or (pacer.rate and unsynced >= pacer.rate):
                    await asyncio.to_thread(os.fdatasync, fd)
                    source.confirm(position)
                    unsynced = 0
                await pacer.pace(len(data))
            await asyncio.to_thread(os.fsync, fd)
        except OSError as exc:
            raise os_error(exc, f"cannot write to partner {self.name}") from exc
        finally:
            await asyncio.to_thread(os.close, fd)
        try:
            await asyncio.to_thread(_rename, temp, final)
        except OSError as exc:
            raise os_error(
                exc, f"cannot rename on partner {self.name}", ErrorCode.TeFinalization
            ) from exc
        source.confirm(source.size)
        held = await asyncio.to_thread(_stat, final)
        return Delivered(held.size if held else 0)

    async def receive(self, sink: DataSink, remote_path: str, offset: int) -> None:
        path = self._path(remote_path)
        pacer = Pacer(self.config.max_rate)
        try:
            fd = await asyncio.to_thread(safepath.open_file, path, os.O_RDONLY)
        except OSError as exc:
            raise os_error(exc, f"cannot read {remote_path} on partner {self.name}") from exc
        try:
            size = (await asyncio.to_thread(os.fstat, fd)).st_size
            sink.set_size(size)
            position = offset
            while position < size:
                data = await asyncio.to_thread(os.pread, fd, min(CHUNK, size - position), position)
                if not data:
                    raise TransferError(ErrorCode.TeDataTransfer, f"{remote_path} shrank")
                await sink.write(position, data)
                position += len(data)
                await pacer.pace(len(data))
        except OSError as exc:
            raise os_error(exc, f"cannot read {remote_path} on partner {self.name}") from exc
        finally:
            await asyncio.to_thread(os.close, fd)

    async def list(self, remote_dir: str) -> list[RemoteStat]:
        """The regular files of the folder (links, subfolders and hidden names left out)."""
        parts = tuple(p for p in remote_dir.split("/") if p not in ("", "."))
        if ".." in parts:
            raise TransferError(ErrorCode.TeForbidden, f"{remote_dir} leaves the partner folder")
        try:
            found = await asyncio.to_thread(safepath.list_files, Beneath(self.config.root, parts))
        except OSError as exc:
            raise os_error(exc, f"cannot list {remote_dir} on partner {self.name}") from exc
        return [
            RemoteStat(st.st_size, False, datetime.fromtimestamp(st.st_mtime, UTC), name)
            for name, st in found
        ]

    async def delete(self, remote_path: str) -> None:
        try:
            removed = await asyncio.to_thread(safepath.unlink, self._path(remote_path))
        except OSError as exc:
            raise os_error(exc, f"cannot delete {remote_path} on partner {self.name}") from exc
        if not removed:
            raise TransferError(ErrorCode.TeFileNotFound, f"no {remote_path} on {self.name}")

    async def rename(self, remote_path: str, new_path: str) -> None:
        try:
            await asyncio.to_thread(_rename, self._path(remote_path), self._path(new_path))
        except FileNotFoundError:
            raise TransferError(
                ErrorCode.TeFileNotFound, f"no {remote_path} on {self.name}"
            ) from None
        except OSError as exc:
            raise os_error(exc, f"cannot rename {remote_path} on partner {self.name}") from exc

    async def close(self) -> None:
        return None


def _stat(path: Beneath) -> RemoteStat | None:
    st = safepath.lstat(path)
    if st is None or stat.S_ISLNK(st.st_mode):
        return None
    return RemoteStat(size=st.st_size, is_dir=stat.S_ISDIR(st.st_mode))


def _open_at(path: Beneath, offset: int) -> int:
    fd = safepath.open_file(path, os.O_WRONLY | os.O_CREAT, create_parents=True)
    os.ftruncate(fd, offset)
    return fd


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _rename(temp: Beneath, final: Beneath) -> None:
    safepath.rename(temp, final, replace=True)
    safepath.fsync_folder(final.parent())


register(ProtocolSpec(name="local", partner_config=LocalPartnerConfig, client_factory=LocalClient))
