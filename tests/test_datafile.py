"""The temp file of a receive (gatewayd.pipeline.datafile.ReceiveFile) on a real disk:
writes go to the disk behind the partner's next bytes, yet the hash, the holes, the
durable figure and a failing write stay exact."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.errors import TransferError
from gatewayd.pipeline.datafile import ReceiveFile
from gatewayd.safepath import Beneath

MiB = 1 << 20


def pieces(data: bytes, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        size = rng.choice([1, 100, 4096, 32768, 65536, 300_000])
        out.append((pos, data[pos : pos + size]))
        pos += size
    return out


async def test_sequential_writes_hash_and_land_exactly(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(5 * MiB + 123)
    durable: list[int] = []
    f = await ReceiveFile.open(Beneath.of(tmp_path, tmp_path / "t.part"), 0, durable.append)
    for offset, piece in pieces(data, 2):
        await f.write(offset, piece)
    await f.checkpoint(wait=True)
    assert durable and durable[-1] == len(data), "a checkpoint counts every byte written"
    sha, size, landed = await f.complete(lambda size, sha: (size, sha))
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    assert landed == (size, sha)
    assert (tmp_path / "t.part").read_bytes() == data


async def test_out_of_order_writes_need_every_hole_filled(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * MiB)
    parts = pieces(data, 4)
    f = await ReceiveFile.open(Beneath.of(tmp_path, tmp_path / "t.part"), 0, lambda _: None)
    random.Random(5).shuffle(parts)
    missing = parts.pop()
    for offset, piece in parts:
        await f.write(offset, piece)
    with pytest.raises(TransferError, match="holes after byte"):
        await f.complete(lambda size, sha: None)
    f2 = await ReceiveFile.open(Beneath.of(tmp_path, tmp_path / "u.part"), 0, lambda _: None)
    for offset, piece in [*parts, missing]:
        await f2.write(offset, piece)
    sha, size, _ = await f2.complete(lambda size, sha: None)
    assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())
    await f.close()


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (process-wide)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no file size limit here")
async def test_a_failing_write_behind_is_reported_and_never_counted(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    durable: list[int] = []
    f = await ReceiveFile.open(Beneath.of(tmp_path, tmp_path / "t.part"), 0, durable.append)
    caught: TransferError | None = None
    with file_size_limit(2 * MiB + 1000):
        try:
            for offset, piece in pieces(data, 6):
                await f.write(offset, piece)
            await f.checkpoint(wait=True)
        except TransferError as exc:
            caught = exc
    assert caught is not None and "cannot write t.part" in caught.message
    with pytest.raises(TransferError, match=r"cannot write t\.part"):
        await f.complete(lambda size, sha: None)
    assert all(d <= 2 * MiB + 1000 for d in durable), "only bytes on disk count"
    await f.close()
