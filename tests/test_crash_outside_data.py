"""kill -9 of a real `gatewayd serve` outside DATA, for uploads over SFTP (OpenSSH
`sftp`) and HTTP (curl): between placing the received file and committing that fact
(the crash point `after-place`), in the middle of a post task (a window the test waits
for), and while a post task writes its output (the crash point `task-output`). On
restart the gateway finishes each transfer alone: DONE, the file right, each post task
that had ended not run again, and no leftover anywhere."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from gatewayd import crashpoints
from tests.crash_support import (
    all_rows,
    died_by_itself,
    end_sleeper,
    gone,
    hidden_files,
    kill_9,
    start_daemon,
    wait_file,
    window_task,
)
from tests.daemon_proc import DaemonProcess, read_row, wait_row
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.http_support import PASSWORD, password_hash, run_curl
from tests.sftp_peers import keygen, listening_port, need, sftp

MiB = 1 << 20
PROTOCOLS = ["sftp", "http"]


class Receiver:
    """A gateway receiving uploads of account `acme` into rule `inbox` over one
    protocol, run as `gatewayd serve`."""

    def __init__(self, root: Path, protocol: str, post: list[dict[str, Any]]) -> None:
        if protocol == "sftp":
            need("sftp")
        self.protocol = protocol
        self.env = env = GatewayEnv(root)
        env.extra["logging"] = {"format": "json"}
        self.key = root / "keys" / "acme"
        if protocol == "sftp":
            env.accounts["acme"] = {"public_keys": [keygen(self.key)]}
            env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
        else:
            env.accounts["acme"] = {"password": password_hash()}
            env.extra["servers"] = {"web": {"protocol": "http", "address": "127.0.0.1", "port": 0}}
        env.rule("inbox", "receive", post=post)
        loaded = env.load()
        self.db = loaded.paths.database
        self.rule_folder = loaded.paths.rule_folder(loaded.config.rules["inbox"])
        self.inbox = self.rule_folder / "acme"
        self.tmp = loaded.paths.rule_tmp_folder(loaded.config.rules["inbox"])

    async def upload(self, daemon: DaemonProcess, local: Path, name: str) -> bool:
        """Upload `local` as /inbox/<name>; whether the client says it worked."""
        if self.protocol == "sftp":
            port = await listening_port(daemon, "sftp")
            result = await sftp(port, "acme", [f"put {local} /inbox/{name}"], key=self.key)
            return result.returncode == 0
        port = await listening_port(daemon, "web")
        url = f"http://127.0.0.1:{port}/inbox/{name}"
        answer = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(local), url)
        return answer.returncode == 0 and answer.status == 201


def in_background(work: Awaitable[bool]) -> asyncio.Future[bool]:
    return asyncio.ensure_future(work)


async def finish_alone(r: Receiver, transfer_id: int = 1) -> tuple[dict[str, Any], str]:
    """Restart the daemon (no crash point) and wait until the transfer has ended with
    no partner connected; its row and the daemon's output."""
    daemon = await start_daemon(r.env.config_file)
    try:
        row = await wait_row(
            r.db, transfer_id, lambda t: t["status"] in ("DONE", "ERROR"), "ended", daemon
        )
    finally:
        assert await daemon.stop() == 0, daemon.output
    return row, daemon.output


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_crash_after_placing_is_completed_on_restart(tmp_path: Path, protocol: str) -> None:
    r = Receiver(tmp_path, protocol, post=[trace_task(tmp_path / "out", "post")])
    data = make_file(tmp_path / "local" / "order.bin", 3 * MiB + 7)

    first = await start_daemon(r.env.config_file, crash_at=crashpoints.AFTER_PLACE)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
    await died_by_itself(first)
    assert not await client, "the partner was never told the upload worked"

    at_crash = read_row(r.db, 1)
    assert (at_crash["status"], at_crash["step"]) == ("RUNNING", "DATA"), at_crash
    placed = r.inbox / "order.bin"
    assert placed.read_bytes() == data, "placed under its final name before the crash"
    tmp = Path(at_crash["tmp_filepath"])
    assert tmp.stat().st_nlink == 2, "the temp name is a second name of the placed file"
    assert lines(tmp_path / "out" / "trace") == []

    done, output = await finish_alone(r)
    assert done["status"] == "DONE", done["error_msg"]
    assert "placed file found after a crash" in output
    assert done["local_filepath"] == str(placed)
    assert done["filesize"] == done["progress"] == len(data)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert placed.read_bytes() == data
    assert sorted(p.name for p in r.inbox.iterdir()) == ["order.bin"], "no order_1.bin"
    assert not tmp.exists() and list(r.tmp.iterdir()) == []
    assert lines(tmp_path / "out" / "trace") == ["post order.bin"], "post tasks ran once"
    assert len(all_rows(r.db)) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_crash_after_done_leaves_no_temp_name_after_restart(
    tmp_path: Path, protocol: str
) -> None:
    """Without post tasks, DONE is committed with the placing: a crash before the temp
    name goes leaves a second name of the placed file, which the next start removes, as
    it removes a temp file of ours that no row names."""
    r = Receiver(tmp_path, protocol, post=[])
    data = make_file(tmp_path / "local" / "order.bin", MiB + 5)
    (r.tmp / "unrelated.part").parent.mkdir(parents=True, exist_ok=True)
    (r.tmp / "unrelated.part").write_bytes(b"only name of its bytes")
    # What a crash leaves of an upload whose row was not yet committed (a partner's
    # open is answered before that commit): our temp name, one name, no row.
    unrecorded = r.tmp / f"{'ab12' * 8}.part"
    unrecorded.write_bytes(b"bytes never recorded as durable")

    first = await start_daemon(r.env.config_file, crash_at=crashpoints.AFTER_DONE)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
    await died_by_itself(first)
    await client

    at_crash = read_row(r.db, 1)
    assert (at_crash["status"], at_crash["step"]) == ("DONE", "NONE"), at_crash
    tmp = Path(at_crash["tmp_filepath"])
    assert tmp.stat().st_nlink == 2, "the temp name is still a second name of the file"

    second = await start_daemon(r.env.config_file)
    try:
        await second.wait_for("gatewayd ready")
    finally:
        assert await second.stop() == 0, second.output
    assert "temp names of finished or unrecorded transfers removed" in second.output
    assert not tmp.exists() and not unrecorded.exists()
    assert sorted(p.name for p in r.tmp.iterdir()) == ["unrelated.part"], "not our name: kept"
    placed = r.inbox / "order.bin"
    assert placed.read_bytes() == data and placed.stat().st_nlink == 1
    assert read_row(r.db, 1)["status"] == "DONE"
    assert len(all_rows(r.db)) == 1


async def test_placed_file_changed_before_the_restart_is_not_done(tmp_path: Path) -> None:
    """The size of what was placed is checked against the row (HTTP announces it)."""
    r = Receiver(tmp_path, "http", post=[trace_task(tmp_path / "out", "post")])
    make_file(tmp_path / "local" / "order.bin", MiB)
    first = await start_daemon(r.env.config_file, crash_at=crashpoints.AFTER_PLACE)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
    await died_by_itself(first)
    await client
    assert read_row(r.db, 1)["filesize"] == MiB
    with (r.inbox / "order.bin").open("ab") as placed:
        placed.write(b"!")

    row, _ = await finish_alone(r)
    assert (row["status"], row["error_code"]) == ("ERROR", "TeIntegrity"), row
    assert f"placed {MiB + 1} bytes, {MiB} announced" in row["error_msg"]
    assert lines(tmp_path / "out" / "trace") == [], "no post task on a wrong file"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_kill_9_in_post_tasks_resumes_the_chain_alone(tmp_path: Path, protocol: str) -> None:
    out, archive = tmp_path / "out", tmp_path / "archive"
    post = [
        {"type": "COPY", "args": {"path": str(archive)}},
        window_task(out),
        trace_task(out, "post"),
    ]
    r = Receiver(tmp_path, protocol, post=post)
    data = make_file(tmp_path / "local" / "order.bin", 2 * MiB + 3)

    first = await start_daemon(r.env.config_file)
    try:
        await first.wait_for("gatewayd ready")
        client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
        sleeper = int(await wait_file(out / "window.pid", "the window task", first))
    finally:
        await kill_9(first)
    try:
        # The program runs in a session of its own (kill_9 of the daemon's process group
        # does not reach it): it dies with the daemon, and the rerun is alone.
        await gone(sleeper, "the EXEC program of the killed daemon")
    finally:
        end_sleeper(out)
    assert not await client
    at_kill = read_row(r.db, 1)
    assert (at_kill["status"], at_kill["step"], at_kill["task_number"]) == (
        "RUNNING", "POST TASKS", 1,
    ), at_kill  # fmt: skip

    done, output = await finish_alone(r)
    assert done["status"] == "DONE", done["error_msg"]
    planned = [json.loads(x) for x in output.splitlines() if "planned to resume" in x]
    assert planned and planned[0]["count"] == 1, "the gateway resumed it without its partner"
    assert lines(out / "trace") == ["window order.bin", "window order.bin", "post order.bin"]
    assert sorted(p.name for p in archive.iterdir()) == ["order.bin"], "copied once"
    assert (archive / "order.bin").read_bytes() == data
    assert (r.inbox / "order.bin").read_bytes() == data
    assert hidden_files(archive) == [] and hidden_files(r.inbox) == []
    assert list(r.tmp.iterdir()) == [], "no temp file of the upload left"
    assert len(all_rows(r.db)) == 1


async def test_crash_while_a_post_task_writes_leaves_no_temp_file(tmp_path: Path) -> None:
    """(Over HTTP only: the post tasks do not depend on the protocol; the soak runs
    more.)"""
    out, archive = tmp_path / "out", tmp_path / "archive"
    post = [{"type": "COPY", "args": {"path": str(archive)}}, trace_task(out, "post")]
    r = Receiver(tmp_path, "http", post=post)
    data = make_file(tmp_path / "local" / "order.bin", 2 * MiB + 3)

    first = await start_daemon(r.env.config_file, crash_at=crashpoints.TASK_OUTPUT)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
    await died_by_itself(first)
    await client
    leftover = hidden_files(archive)
    assert len(leftover) == 1 and leftover[0].startswith(".order.bin."), leftover
    assert (archive / leftover[0]).read_bytes() == data, "the copy was written, not published"
    assert not (archive / "order.bin").exists()

    done, _ = await finish_alone(r)
    assert done["status"] == "DONE", done["error_msg"]
    assert sorted(p.name for p in archive.iterdir()) == ["order.bin"], "no temp file left"
    assert (archive / "order.bin").read_bytes() == data
    assert lines(out / "trace") == ["post order.bin"]


async def test_crash_after_a_post_task_published_its_file_does_not_fail_the_rerun(
    tmp_path: Path,
) -> None:
    """Killed after the COPY gave its copy its name, before the row recorded the task
    done: the rerun finds its own copy there (same content) and goes on."""
    out, archive = tmp_path / "out", tmp_path / "archive"
    post = [{"type": "COPY", "args": {"path": str(archive)}}, trace_task(out, "post")]
    r = Receiver(tmp_path, "http", post=post)
    data = make_file(tmp_path / "local" / "order.bin", 2 * MiB + 3)

    first = await start_daemon(r.env.config_file, crash_at=crashpoints.TASK_PUBLISHED)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, tmp_path / "local" / "order.bin", "order.bin"))
    await died_by_itself(first)
    await client
    assert (archive / "order.bin").read_bytes() == data
    at_crash = read_row(r.db, 1)
    assert (at_crash["step"], at_crash["task_number"]) == ("POST TASKS", 0)

    done, _ = await finish_alone(r)
    assert done["status"] == "DONE", done["error_msg"]
    assert sorted(p.name for p in archive.iterdir()) == ["order.bin"]
    assert (archive / "order.bin").read_bytes() == data
    assert lines(out / "trace") == ["post order.bin"]


async def test_a_transcoding_in_place_cut_before_its_commit_is_not_done_twice(
    tmp_path: Path,
) -> None:
    """Killed after TRANSCODE replaced the received file, before the row recorded the
    task done: the rerun finds the file it wrote (its extended attribute) and leaves it
    alone; transcoding Latin-1 to UTF-8 a second time would garble every accent."""
    out = tmp_path / "out"
    post = [
        {"type": "TRANSCODE", "args": {"fromCharset": "latin-1", "toCharset": "utf-8"}},
        trace_task(out, "post"),
    ]
    r = Receiver(tmp_path, "http", post=post)
    text = "Crème brûlée à la française, déjà vu.\n" * 2000
    local = tmp_path / "local" / "menu.txt"
    local.parent.mkdir(parents=True)
    local.write_bytes(text.encode("latin-1"))

    first = await start_daemon(r.env.config_file, crash_at=crashpoints.TASK_PUBLISHED)
    await first.wait_for("gatewayd ready")
    client = in_background(r.upload(first, local, "menu.txt"))
    await died_by_itself(first)
    await client
    assert (r.inbox / "menu.txt").read_bytes() == text.encode("utf-8"), "transcoded once"
    at_crash = read_row(r.db, 1)
    assert (at_crash["step"], at_crash["task_number"]) == ("POST TASKS", 0), at_crash

    done, output = await finish_alone(r)
    assert done["status"] == "DONE", done["error_msg"]
    assert (r.inbox / "menu.txt").read_bytes() == text.encode("utf-8"), "not transcoded twice"
    assert done["filesize"] == len(text.encode("utf-8"))
    assert "done before the restart, not run again" in output
    assert lines(out / "trace") == ["post menu.txt"]
    assert hidden_files(r.inbox) == []
