"""SIGTERM of a real `gatewayd serve` while uploads complete and others are in the middle
of their data: the stop lets the completions finish and their partners get the OK,
interrupts the others with their bytes kept, leaves no row RUNNING and says
`clean=True`; after a restart, every partner that got an error resumes without making a
duplicate. (The soak version, with a login rush and many more uploads, is
scripts/soak_shutdown.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.rush import Rush, Upload, established
from tests.sftp_peers import need

KiB, MiB = 1 << 10, 1 << 20
COMPLETING = 10  # per protocol


async def test_sigterm_lets_completing_uploads_answer_and_interrupts_the_rest(
    tmp_path: Path,
) -> None:
    need("sftp", "curl")
    # The post task holds each completion for 5 s: SIGTERM lands inside all of them.
    rush = Rush(tmp_path, post_sleep=5.0, shutdown_timeout=10.0)
    completing = [
        rush.upload(protocol, f"{protocol}-done-{i}.bin", 256 * KiB + i, seed=i)
        for protocol in ("sftp", "http")
        for i in range(COMPLETING)
    ]
    # 100 KB/s for 2 MiB: in the middle of their data at the stop.
    slow = [
        rush.upload(protocol, f"{protocol}-slow-{i}.bin", 2 * MiB + i, rate=100_000, seed=50 + i)
        for protocol in ("sftp", "http")
        for i in range(2)
    ]
    # Partners still logging in at the stop (a real argon2 check each, queued): they
    # may get in during the stop window; none may leave a row behind.
    late = [
        rush.upload("http", f"late-{i}.bin", 64 * KiB, seed=80 + i, account="rush")
        for i in range(24)
    ]
    try:
        await _stop_and_resume(rush, completing, slow, late)
    finally:
        await rush.kill_all()


async def _stop_and_resume(
    rush: Rush, completing: list[Upload], slow: list[Upload], late: list[Upload]
) -> None:
    await rush.start()
    sending = [asyncio.ensure_future(rush.send(up)) for up in completing + slow]
    try:
        await rush.wait_rows(
            lambda rows: _in_post_tasks(rows, completing) and _moving(rows, slow),
            "had every completion in its post task and every slow upload moving",
        )
        before = established(rush.http_port)
        sending += [asyncio.ensure_future(rush.send(up)) for up in late]
        await rush.wait_connections(rush.http_port, before + len(late) // 2)
        status, stopped = await rush.sigterm()
    finally:
        await asyncio.wait(sending, timeout=120)
    left = [(r["src_filename"], r["step"]) for r in rush.running()]
    assert left == [], "no row may be left RUNNING by a stop"
    assert json.loads(stopped)["clean"] is True, stopped
    assert status == 0, stopped
    told_ok = [up.name for up in completing if up.ok]
    assert len(told_ok) == len(completing), [(up.name, up.said) for up in completing if not up.ok]
    assert rush.broken_promises(completing) == []
    for up in slow:
        assert up.ok is False, f"{up.name} cannot have finished: {up.said}"
        (row,) = rush.rows_of(up.name)
        assert row["status"] == "INTERRUPTED", row
        assert 0 < row["progress"] < up.size, row
    assert rush.duplicates() == []

    # Each partner that got an error resumes (the ones told OK would make a duplicate
    # if they sent again, which is why they must have been told the truth).
    await rush.start()
    try:
        told_error = [u for u in slow + late if not u.ok]
        again = [Upload(u.protocol, u.name, u.local, u.size, account=u.account) for u in told_error]
        await asyncio.gather(*(rush.send(up, resume=True) for up in again))
        assert all(up.ok for up in again), [(up.name, up.said) for up in again]
        await rush.wait_rows(
            lambda rows: all(r["status"] in ("DONE", "ERROR") for r in rows), "ended"
        )
    finally:
        status, stopped = await rush.sigterm()
    assert status == 0 and json.loads(stopped)["clean"] is True, stopped
    assert rush.unfinished(completing + slow + late) == []
    assert rush.duplicates() == []
    for up in slow:
        (row,) = rush.rows_of(up.name)  # the same transfer continued, no new one
        assert row["status"] == "DONE", row


def _in_post_tasks(rows: list[dict[str, object]], uploads: list[Upload]) -> bool:
    names = {up.name for up in uploads}
    there = [r for r in rows if r["src_filename"] in names and r["step"] == "POST TASKS"]
    return len(there) == len(names) and all(r["status"] == "RUNNING" for r in there)


def _moving(rows: list[dict[str, object]], uploads: list[Upload]) -> bool:
    names = {up.name for up in uploads}
    moving = [
        r
        for r in rows
        if r["src_filename"] in names and r["status"] == "RUNNING" and int(str(r["progress"])) > 0
    ]
    return len(moving) == len(names)
