"""Secrets made in the state folder when missing (SSH host keys, the API's signing key)
when several processes make them at once, as nodes sharing a state folder do at start:
every one of them ends with the same key, and no partial file is ever read."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from gatewayd.api.auth import load_signing_key
from gatewayd.fsutil import create_exclusive
from protocols.sftp import hostkeys

RACERS = 6


def _host_key(path: str, start: multiprocessing.synchronize.Barrier) -> str:
    start.wait()
    key = hostkeys.load_or_create(Path(path))
    return key.export_public_key("openssh").decode()


def _signing_key(folder: str, start: multiprocessing.synchronize.Barrier) -> str:
    start.wait()
    return load_signing_key(Path(folder)).hex()


def _race(target: object, arg: str) -> list[str]:
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager:
        start = manager.Barrier(RACERS)
        with context.Pool(RACERS) as pool:
            return pool.starmap(target, [(arg, start)] * RACERS)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["ssh_host_ed25519_key", "ssh_host_rsa_key"])
def test_racing_nodes_make_one_host_key(tmp_path: Path, name: str) -> None:
    path = hostkeys.default_paths(tmp_path, "sftp")[0].with_name(name)
    seen = _race(_host_key, str(path))
    assert len(set(seen)) == 1, f"{len(set(seen))} different keys among {RACERS} racers"
    assert (path.parent / (name + ".pub")).read_text() == seen[0]
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [name, name + ".pub"], "no temp left"


def test_racing_nodes_make_one_signing_key(tmp_path: Path) -> None:
    seen = _race(_signing_key, str(tmp_path))
    assert len(set(seen)) == 1 and len(bytes.fromhex(seen[0])) == 32, seen
    assert [p.name for p in tmp_path.iterdir()] == ["api-signing.key"]


def test_create_exclusive_keeps_the_first(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    assert create_exclusive(target, b"first", 0o600)
    assert not create_exclusive(target, b"second", 0o600)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]
