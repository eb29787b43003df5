"""Local folder watchers in a real `gatewayd serve`: 200 files dropped at once (some
written slowly, in pieces), each sent exactly once and only when complete; kill -9 in
the middle of a batch, then a restart: the batch completes, no file twice, none missed."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tests.daemon_proc import DaemonProcess
from tests.gateway_env import GatewayEnv, make_file


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params).fetchall())


def transfers(db: Path) -> list[sqlite3.Row]:
    return rows(db, "SELECT * FROM transfers ORDER BY id")


async def wait_until(check: Any, what: str, daemon: DaemonProcess, timeout: float = 60) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never {what}:\n{daemon.output[-4000:]}") from None


def setup(tmp_path: Path, **watcher: Any) -> tuple[GatewayEnv, Path, Path]:
    env = GatewayEnv(tmp_path)
    env.rule("out", "send")
    loaded = env.load()
    folder = loaded.paths.rule_folder(loaded.config.rules["out"]) / "drop"
    folder.mkdir(parents=True)
    (tmp_path / "watchers").mkdir(exist_ok=True)
    spec = {"name": "drop", "rule": "out", "partner": "share", "folder": "drop", **watcher}
    (tmp_path / "watchers" / "drop.yaml").write_text(yaml.safe_dump(spec))
    env.load()  # the watcher checks out
    return env, folder, loaded.paths.database


def all_done(db: Path, count: int) -> bool:
    found = transfers(db)
    return len(found) >= count and all(t["status"] == "DONE" for t in found)


def exactly_once(db: Path, folder: Path, share: Path, names: list[str]) -> list[sqlite3.Row]:
    found = transfers(db)
    by_path: dict[str, int] = {}
    for t in found:
        path = t["remote_filepath"]
        by_path[path] = by_path.get(path, 0) + 1
    assert sorted(by_path) == sorted(names), "every file sent, no other"
    assert set(by_path.values()) == {1}, {p: n for p, n in by_path.items() if n > 1}
    for t in found:
        assert t["status"] == "DONE", (t["id"], t["error_msg"])
        data = (folder / t["remote_filepath"]).read_bytes()
        assert (share / t["remote_filepath"]).read_bytes() == data
        assert t["sha256"] == hashlib.sha256(data).hexdigest(), "the complete file was sent"
    records = rows(db, "SELECT path, transfers FROM watched_files WHERE watcher = 'drop'")
    assert sorted(r["path"] for r in records) == sorted(names)
    return found


async def test_200_files_some_written_slowly_each_sent_once_when_complete(
    tmp_path: Path,
) -> None:
    env, folder, db = setup(tmp_path, settle=1.0, interval=0.2)
    daemon = await DaemonProcess.start(env.config_file)
    try:
        await daemon.wait_for("gatewayd ready")
        began = time.monotonic()
        names = [f"f{i:03}.bin" for i in range(190)]
        for i, name in enumerate(names):
            make_file(folder / name, 1000 + 37 * i, seed=i)
        slow = [f"slow{i}.bin" for i in range(10)]
        finished: dict[str, float] = {}

        async def write_slowly(name: str, seed: int) -> None:
            # Five pieces 0.4 s apart (less than the settle time), 1.6 s in all.
            piece = hashlib.sha256(str(seed).encode()).digest() * 1000
            with open(folder / name, "wb") as f:
                for i in range(5):
                    if i:
                        await asyncio.sleep(0.4)
                    f.write(piece)
                    f.flush()
                finished[name] = time.time()  # the last piece is in

        await asyncio.gather(*(write_slowly(n, 1000 + i) for i, n in enumerate(slow)))
        await wait_until(lambda: all_done(db, 200), "sent all 200", daemon)
        elapsed = time.monotonic() - began
        found = exactly_once(db, folder, env.share, names + slow)
        for t in found:
            name = t["remote_filepath"]
            if name in finished:
                assert t["filesize"] == 5 * 32 * 1000, "taken whole"
                created = datetime.fromisoformat(t["created"]).timestamp()
                # Taken once unchanged for the settle time after its last piece.
                assert created >= finished[name] + 0.9, (name, created - finished[name])
        print(f"200 files (10 written over 1.6 s, settle 1 s): all DONE in {elapsed:.2f} s")
    finally:
        assert await daemon.stop() == 0, daemon.output[-3000:]
    assert len(transfers(db)) == 200


async def test_kill_9_mid_batch_then_restart_completes_without_duplicates(
    tmp_path: Path,
) -> None:
    env, folder, db = setup(tmp_path, settle=0.3, interval=0.2, batch=10)
    env.partners["share"]["max_rate"] = 400_000  # bytes/s: the batch takes a while
    env.write()
    names = [f"k{i:03}.bin" for i in range(60)]
    for i, name in enumerate(names):
        make_file(folder / name, 20_000 + i, seed=i)
    first = await DaemonProcess.start(env.config_file)
    try:
        await first.wait_for("gatewayd ready")

        def mid_batch() -> bool:
            done = [t for t in transfers(db) if t["status"] == "DONE"]
            return len(done) >= 5

        await wait_until(mid_batch, "sent some", first)
    finally:
        await first.kill()
    taken = len(rows(db, "SELECT id FROM watched_files"))
    done = len([t for t in transfers(db) if t["status"] == "DONE"])
    assert taken < len(names) or done < len(names), "killed before the end of the batch"

    second = await DaemonProcess.start(env.config_file)
    try:
        await second.wait_for("gatewayd ready")
        await wait_until(lambda: all_done(db, len(names)), "sent all after the restart", second)
        exactly_once(db, folder, env.share, names)
        # A watcher added by hand is loaded on SIGHUP.
        (folder.parent / "late").mkdir()
        spec = {"name": "late", "rule": "out", "partner": "share", "folder": "late"}
        (tmp_path / "watchers" / "late.yaml").write_text(yaml.safe_dump({**spec, "settle": 0}))
        mark = len(second.lines)
        second.proc.send_signal(signal.SIGHUP)
        await second.wait_for("configuration reloaded", since=mark)
        make_file(folder.parent / "late" / "new.bin", 777, seed=9)
        await wait_until(lambda: all_done(db, len(names) + 1), "sent the late one", second)
    finally:
        assert await second.stop() == 0, second.output[-3000:]
    assert (env.share / "new.bin").read_bytes() == (folder.parent / "late" / "new.bin").read_bytes()
    print(f"kill -9 with {taken} of {len(names)} taken, {done} done; all done after restart")
