"""The pipeline through its public interfaces: client transfers run by the scheduler
against the `local` protocol, server transfers through the ServerContext protocols use.
Real files, real SQLite, real task programs."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from gatewayd.errors import AlreadyRunning, ResumeRefused, TransferError
from gatewayd.model import Direction, ErrorCode, Status, Step, Transfer
from gatewayd.pipeline.service import StateError
from gatewayd.requests import RequestError
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, exec_task, lines, make_file, sha256_of, trace_task

MiB = 1 << 20


@pytest.fixture
async def env(tmp_path: Path):
    environment = GatewayEnv(tmp_path)
    yield environment
    await environment.stop()


# ----------------------------------------------------------------------------- happy paths


async def test_client_send_happy_path(env: GatewayEnv) -> None:
    env.rule(
        "out",
        "send",
        pre=[trace_task(env.out, "pre")],
        post=[trace_task(env.out, "post"), {"type": "SETINFO", "args": {"key": "k", "value": "v"}}],
    )
    await env.start()
    data = make_file(env.folder("out") / "report.csv", 3 * MiB + 17)
    t = await env.create(rule="out", partner="share", file="report.csv", output="in/r.csv")
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert row.error_code == ErrorCode.TeOk
    assert (env.share / "in" / "r.csv").read_bytes() == data
    assert not (env.share / "in" / "r.csv.part").exists()
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.progress == row.filesize == len(data)
    assert row.step == Step.NONE and row.stop is not None
    assert lines(env.out / "trace") == ["pre report.csv", "post report.csv"]
    assert row.transfer_info["k"] == "v"
    assert row.transfer_info["followID"] == row.follow_id != ""


async def test_client_receive_happy_path(env: GatewayEnv) -> None:
    env.rule("in", "receive", post=[trace_task(env.out, "post")])
    await env.start()
    data = make_file(env.share / "src" / "data.bin", 2 * MiB + 5)
    t = await env.create(rule="in", partner="share", file="src/data.bin")
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    final = env.folder("in") / "data.bin"
    assert final.read_bytes() == data
    assert row.local_filepath == str(final)
    assert row.sha256 == sha256_of(final)
    assert not Path(row.tmp_filepath).exists()
    assert list((env.folder("in") / ".tmp").iterdir()) == []
    assert lines(env.out / "trace") == ["post data.bin"]


async def test_server_upload_and_download(env: GatewayEnv) -> None:
    env.rule("inbox", "receive", post=[trace_task(env.out, "up")])
    env.rule("outbox", "send", post=[trace_task(env.out, "down")])
    await env.start()
    server = env.server()
    data = make_file(env.root / "payload", MiB + 3)
    handle = await server.open_transfer("alice", "/inbox/f.bin", Direction.RECEIVE)
    for offset in range(0, len(data), 32768):
        await handle.write(offset, data[offset : offset + 32768])
    await handle.close()
    row = await env.row(handle.transfer_id)
    assert row.status == Status.DONE, row.error_msg
    final = env.folder("inbox") / "alice" / "f.bin"  # per-account folder
    assert final.read_bytes() == data
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert row.is_server and not row.is_send and row.requester == "alice"

    (env.folder("outbox") / "alice").mkdir(parents=True)
    (env.folder("outbox") / "alice" / "g.bin").write_bytes(data)
    down = await server.open_transfer("alice", "/outbox/g.bin", Direction.SEND)
    got = bytearray()
    while chunk := await down.read(len(got), 65536):
        got += chunk
    await down.close()
    assert bytes(got) == data
    row = await env.row(down.transfer_id)
    assert row.status == Status.DONE and row.is_send
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert lines(env.out / "trace") == ["up f.bin", "down g.bin"]


async def test_out_of_order_writes_hash_right(env: GatewayEnv) -> None:
    env.rule("inbox", "receive")
    await env.start()
    data = make_file(env.root / "payload", 5 * 32768 + 100)
    handle = await env.server().open_transfer("bob", "/inbox/x", Direction.RECEIVE)
    blocks = [(o, data[o : o + 32768]) for o in range(0, len(data), 32768)]
    for offset, block in [blocks[1], blocks[0], blocks[3], blocks[2], *blocks[4:]]:
        await handle.write(offset, block)
    await handle.close()
    row = await env.row(handle.transfer_id)
    assert row.status == Status.DONE, row.error_msg
    assert row.sha256 == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- failures


def _fail_at(step: Step, code: ErrorCode):  # type: ignore[no-untyped-def]
    async def before_step(t: Transfer, at: Step) -> None:
        if at == step:
            raise TransferError(code, f"injected at {step}")

    return before_step


@pytest.mark.parametrize(
    ("point", "code", "failed_step", "failed_task"),
    [
        ("setup", ErrorCode.TeConnection, Step.SETUP, 0),
        ("pre0", ErrorCode.TeExternalOperation, Step.PRE_TASKS, 0),
        ("pre1", ErrorCode.TeExternalOperation, Step.PRE_TASKS, 1),
        ("data", ErrorCode.TeDataTransfer, Step.DATA, 0),
        ("post0", ErrorCode.TeExternalOperation, Step.POST_TASKS, 0),
        ("post1", ErrorCode.TeExternalOperation, Step.POST_TASKS, 1),
        ("finalization", ErrorCode.TeFinalization, Step.FINALIZATION, 0),
    ],
)
@pytest.mark.parametrize("direction", ["send", "receive"])
@pytest.mark.parametrize("side", ["client", "server"])
async def test_failure_at_each_step(
    env: GatewayEnv,
    point: str,
    code: ErrorCode,
    failed_step: Step,
    failed_task: int,
    direction: str,
    side: str,
) -> None:
    """The failure matrix: each step x send/receive x client/server, through the one
    driver: the first error is kept with its step and task, the error chain runs once,
    no task after the failure runs, and a final name exists only once DATA completed."""
    ok = trace_task(env.out, "ok")
    fail = exec_task("exit 3")
    pre = [fail, ok] if point == "pre0" else [ok, fail] if point == "pre1" else [ok, ok]
    post = [fail, ok] if point == "post0" else [ok, fail] if point == "post1" else [ok, ok]
    chain = exec_task(
        'echo "$1 $2" >> "$3"', "#ERRORSTRCODE#", "#TRUEFILENAME#", str(env.out / "chain")
    )
    env.rule("r", direction, pre=pre, post=post, error=[chain], shared_folder=True)
    if point == "setup":
        env.hooks.before_step = _fail_at(Step.SETUP, code)
    elif point == "finalization":
        env.hooks.before_step = _fail_at(Step.FINALIZATION, code)
    elif point == "data":

        async def during_data(t: Transfer, offset: int) -> None:
            if offset >= 2 * MiB:
                raise TransferError(code, "injected mid-DATA")

        env.hooks.during_data = during_data
    await env.start()
    data = make_file(env.root / "f.bin", 4 * MiB)
    if side == "client":
        if direction == "send":
            (env.folder("r") / "f.bin").write_bytes(data)
        else:
            (env.share / "f.bin").write_bytes(data)
        t = await env.create(rule="r", partner="share", file="f.bin")
        transfer_id = t.id or 0
    else:
        if direction == "send":
            (env.folder("r") / "f.bin").write_bytes(data)
        transfer_id = await _as_a_partner(env, direction, data)
    row = await env.wait_end(transfer_id)

    assert row.status == Status.ERROR
    assert row.error_code == code, row.error_msg
    assert row.error_step == failed_step
    assert row.step == failed_step, "the row keeps the step where it failed"
    assert row.task_number == failed_task
    assert lines(env.out / "chain") == [f"{code} f.bin"], "the error chain ran once"
    data_done = point in ("post0", "post1", "finalization")
    if direction == "receive":
        assert (env.folder("r") / "f.bin").exists() == data_done, "final name once DATA ended"
    elif side == "client":
        assert (env.share / "f.bin").exists() == data_done, "final name once DATA ended"
    if point == "data" and direction == "receive":
        assert 0 < row.progress < len(data), "durable bytes of the failed DATA are kept"
    n_ok = len(lines(env.out / "trace"))
    assert (
        n_ok
        == {"setup": 0, "pre0": 0, "pre1": 1, "data": 2, "post0": 2, "post1": 3, "finalization": 4}[
            point
        ]
    ), "no task after the failure ran"


async def _as_a_partner(env: GatewayEnv, direction: str, data: bytes) -> int:
    """Upload or download `/r/f.bin` as a protocol server would; returns the id of the
    server transfer, whatever ended it (the ends a protocol sees are checked too)."""
    server = env.server()
    way = Direction.SEND if direction == "send" else Direction.RECEIVE
    rows_before = {t.id for t in (await env.gw.store.list_transfers(TransferFilter()))[0]}
    try:
        handle = await server.open_transfer("a", "/r/f.bin", way)
    except TransferError:  # SETUP or PRE TASKS failed: the open is refused
        rows = (await env.gw.store.list_transfers(TransferFilter()))[0]
        [new] = [t for t in rows if t.id not in rows_before]
        return new.id or 0
    try:
        for offset in range(0, len(data), MiB):
            if way == Direction.RECEIVE:
                await handle.write(offset, data[offset : offset + MiB])
            else:
                assert await handle.read(offset, MiB) == data[offset : offset + MiB]
    except TransferError as exc:  # what a protocol does when a write or read fails
        await handle.abort(exc)
        return handle.transfer_id
    with pytest.raises(TransferError):
        await handle.close()  # the post tasks or the finalization fail
    return handle.transfer_id


async def test_data_resumed_without_resending_the_prefix(env: GatewayEnv) -> None:
    env.rule("in", "receive", post=[trace_task(env.out, "post")])
    fail_once = {"armed": True}
    seen: list[int] = []

    async def during_data(t: Transfer, offset: int) -> None:
        seen.append(offset)
        if fail_once["armed"] and offset >= 3 * MiB:
            fail_once["armed"] = False
            raise TransferError(ErrorCode.TeConnectionReset, "cut")

    env.hooks.during_data = during_data
    await env.start()
    data = make_file(env.share / "big.bin", 6 * MiB + 1234)
    t = await env.create(rule="in", partner="share", file="big.bin")
    row = await env.wait_end(t.id)
    assert row.status == Status.ERROR and row.step == Step.DATA
    held = row.progress
    assert held >= 2 * MiB, "progress counts the fsynced prefix"
    seen.clear()
    await env.gw.service.resume(t.id)
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert min(seen) > held, "the second run started at the recorded offset"
    final = env.folder("in") / "big.bin"
    assert final.read_bytes() == data
    assert row.sha256 == hashlib.sha256(data).hexdigest(), "the prefix was hashed again"
    assert lines(env.out / "trace") == ["post big.bin"]


async def test_send_resumed_from_what_the_partner_holds(env: GatewayEnv) -> None:
    env.rule("out", "send")
    armed = {"on": True}

    async def during_data(t: Transfer, offset: int) -> None:
        if armed["on"] and offset >= 20 * MiB:
            armed["on"] = False
            raise TransferError(ErrorCode.TeConnectionReset, "cut")

    env.hooks.during_data = during_data
    await env.start()
    data = make_file(env.folder("out") / "big.bin", 40 * MiB + 7)
    t = await env.create(rule="out", partner="share", file="big.bin")
    row = await env.wait_end(t.id)
    assert row.status == Status.ERROR
    held = (env.share / "big.bin.part").stat().st_size
    assert row.progress == 16 * MiB, "progress = what the partner confirmed (fsynced)"
    assert held >= row.progress
    await env.gw.service.resume(t.id)
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert (env.share / "big.bin").read_bytes() == data
    assert row.sha256 == hashlib.sha256(data).hexdigest()


async def test_sends_to_one_partner_path_go_one_after_the_other(env: GatewayEnv) -> None:
    """Two sends of one file to one path of a partner at once (a schedule's firings
    overlapping, a retry beside a new request): both write the partner's temporary name
    of that path, so the second waits for the first; both end DONE, the file whole."""
    env.rule("out", "send")
    ids: list[int] = []
    entered = asyncio.Event()  # the second send entered DATA

    async def before_step(t: Transfer, step: Step) -> None:
        if step == Step.DATA and len(ids) == 2 and t.id == ids[1]:
            entered.set()

    async def during_data(t: Transfer, offset: int) -> None:
        # The first send, midway, waits until the second has entered DATA.
        if t.id == ids[0] and offset < t.filesize:
            async with asyncio.timeout(10):
                await entered.wait()

    env.hooks.before_step = before_step
    env.hooks.during_data = during_data
    await env.start()
    data = make_file(env.folder("out") / "report.bin", 8 * MiB + 3)
    first = await env.create(rule="out", partner="share", file="report.bin", output="in/r.bin")
    ids.append(first.id or 0)
    second = await env.create(rule="out", partner="share", file="report.bin", output="in/r.bin")
    ids.append(second.id or 0)
    rows = [await env.wait_end(i) for i in ids]
    assert entered.is_set(), "the second send never reached DATA while the first ran"
    assert [r.status for r in rows] == [Status.DONE, Status.DONE], [r.error_msg for r in rows]
    assert rows[0].stop is not None and rows[1].stop is not None
    assert rows[0].stop <= rows[1].stop, "the second ended after the first"
    assert (env.share / "in" / "r.bin").read_bytes() == data
    assert not (env.share / "in" / "r.bin.part").exists()
    assert env.gw.clients._destinations == {}, "no lock kept once the sends ended"


async def test_chain_resumed_at_task_number(env: GatewayEnv) -> None:
    flag = env.out / "flag"
    env.rule(
        "out",
        "send",
        pre=[
            trace_task(env.out, "first"),
            exec_task(f"test -e {flag} || {{ touch {flag}; exit 4; }}"),
            trace_task(env.out, "third"),
        ],
    )
    await env.start()
    make_file(env.folder("out") / "a.txt", 100)
    t = await env.create(rule="out", partner="share", file="a.txt")
    row = await env.wait_end(t.id)
    assert (row.status, row.step, row.task_number) == (Status.ERROR, Step.PRE_TASKS, 1)
    await env.gw.service.resume(t.id)
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert lines(env.out / "trace") == ["first a.txt", "third a.txt"], "task 0 ran once"


async def test_rule_edited_after_creation_does_not_change_the_chain(env: GatewayEnv) -> None:
    env.rule("out", "send", post=[trace_task(env.out, "old")])
    await env.start()
    make_file(env.folder("out") / "a.txt", 10)
    start = (env.clock.now().replace(microsecond=0)).isoformat()
    t = await env.create(
        rule="out",
        partner="share",
        file="a.txt",
        start=start.replace("+00:00", "Z").replace("T00:00:00", "T23:00:00"),
    )
    env.rule("out", "send", post=[trace_task(env.out, "new")])
    env.gw.rt.loaded = env.load()  # what a reload does
    env.clock.advance(24 * 3600)
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert lines(env.out / "trace") == ["old a.txt"]


@pytest.mark.parametrize(
    ("policy", "landed", "status"),
    [
        ("rename", "f_1.txt", Status.DONE),
        ("overwrite", "f.txt", Status.DONE),
        ("fail", None, Status.ERROR),
    ],
)
async def test_collision_policies(
    env: GatewayEnv, policy: str, landed: str | None, status: Status
) -> None:
    env.rule("inbox", "receive", on_collision=policy, shared_folder=True)
    await env.start()
    (env.folder("inbox") / "f.txt").write_bytes(b"old")
    handle = await env.server().open_transfer("a", "/inbox/f.txt", Direction.RECEIVE)
    await handle.write(0, b"new")
    if status == Status.ERROR:
        with pytest.raises(TransferError) as info:
            await handle.close()
        assert info.value.code == ErrorCode.TeFinalization
    else:
        await handle.close()
    row = await env.row(handle.transfer_id)
    assert row.status == status
    if landed == "f_1.txt":
        assert (env.folder("inbox") / "f.txt").read_bytes() == b"old"
        assert (env.folder("inbox") / "f_1.txt").read_bytes() == b"new"
    elif landed == "f.txt":
        assert (env.folder("inbox") / "f.txt").read_bytes() == b"new"
    else:
        assert (env.folder("inbox") / "f.txt").read_bytes() == b"old"
        assert row.error_step == Step.DATA


async def test_temporary_name_never_renamed_ends_in_error(env: GatewayEnv) -> None:
    env.daemon["temp_rename_timeout"] = 60
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    await env.start()
    handle = await env.server().open_transfer("a", "/inbox/f.txt.partial", Direction.RECEIVE)
    await handle.write(0, b"hello")
    await handle.close()
    row = await env.row(handle.transfer_id)
    assert row.status == Status.RUNNING and row.progress == 5, "waiting for the rename"
    env.clock.advance(61)
    row = await env.wait_end(handle.transfer_id)
    assert row.status == Status.ERROR and row.error_code == ErrorCode.TeDataTransfer
    assert "never renamed" in row.error_msg
    assert lines(env.out / "trace") == [], "no post task on a temporary name"
    assert list((env.folder("inbox") / "a").glob("f.txt*")) == []


async def test_temporary_name_completes_on_rename(env: GatewayEnv) -> None:
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    await env.start()
    server = env.server()
    handle = await server.open_transfer("a", "/inbox/f.txt.partial", Direction.RECEIVE)
    await handle.write(0, b"hello")
    await handle.close()
    await server.rename("a", "/inbox/f.txt.partial", "/inbox/f.txt")
    row = await env.row(handle.transfer_id)
    assert row.status == Status.DONE, row.error_msg
    assert (env.folder("inbox") / "a" / "f.txt").read_bytes() == b"hello"
    assert lines(env.out / "trace") == ["post f.txt"]


# ----------------------------------------------------------------------------- server ends


async def test_dropped_upload_keeps_bytes_and_resumes_at_offset(env: GatewayEnv) -> None:
    env.rule("inbox", "receive", post=[trace_task(env.out, "post")])
    await env.start()
    server = env.server()
    data = make_file(env.root / "p", 3 * MiB)
    handle = await server.open_transfer("a", "/inbox/f", Direction.RECEIVE)
    await handle.write(0, data[: 2 * MiB])
    await handle.abort(TransferError(ErrorCode.TeConnectionReset, "connection lost"))
    row = await env.row(handle.transfer_id)
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeConnectionReset)
    assert row.progress == 2 * MiB
    assert not (env.folder("inbox") / "a" / "f").exists(), "never a completed file"
    entry = await server.stat("a", "/inbox/f")
    assert entry is not None and entry.size == 2 * MiB, "stat reports the durable progress"

    with pytest.raises(ResumeRefused, match="cannot resume") as refused:
        await server.open_transfer("a", "/inbox/f", Direction.RECEIVE, offset=2 * MiB + 1)
    assert refused.value.held == 2 * MiB
    assert (await env.row(handle.transfer_id)).progress == 2 * MiB, "nothing discarded"
    # Any offset up to what is held continues the same transfer, cut there.
    again = await server.open_transfer("a", "/inbox/f", Direction.RECEIVE, offset=MiB)
    assert again.transfer_id == handle.transfer_id and again.offset == MiB
    with pytest.raises(AlreadyRunning, match="already being uploaded"):
        await server.open_transfer("a", "/inbox/f", Direction.RECEIVE)
    await again.write(MiB, data[MiB:])
    await again.close()
    row = await env.row(handle.transfer_id)
    assert row.status == Status.DONE
    assert (env.folder("inbox") / "a" / "f").read_bytes() == data
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    assert lines(env.out / "trace") == ["post f"]


async def test_virtual_tree_confines_accounts(env: GatewayEnv) -> None:
    env.accounts.update(a={}, b={})
    env.rule("inbox", "receive", allow={"accounts": ["a"]})
    env.rule("outbox", "send", allow={"accounts": ["a", "b"]})
    await env.start()
    server = env.server()
    assert [e.name for e in await server.list_dir("a", "/")] == ["inbox", "outbox"]
    assert [e.name for e in await server.list_dir("b", "/")] == ["outbox"]
    for account, path, direction in [
        ("b", "/inbox/x", Direction.RECEIVE),  # rule not allowed for b
        ("a", "/outbox/x", Direction.RECEIVE),  # upload into a send rule
        ("a", "/x", Direction.RECEIVE),  # outside any rule folder
        ("a", "/inbox/../outbox/x", Direction.RECEIVE),
        ("a", "/inbox/sub/x", Direction.RECEIVE),
    ]:
        with pytest.raises(TransferError) as info:
            await server.open_transfer(account, path, direction)
        assert info.value.code == ErrorCode.TeForbidden, path
    (env.folder("outbox") / "b").mkdir(parents=True)
    (env.folder("outbox") / "b" / "secret").write_text("b's")
    with pytest.raises(TransferError) as info:
        await server.open_transfer("a", "/outbox/secret", Direction.SEND)
    assert info.value.code == ErrorCode.TeFileNotFound, "a never sees b's files"
    assert [e.name for e in await server.list_dir("b", "/outbox")] == ["secret"]
    assert await server.list_dir("a", "/outbox") == []
    _, total = await env.gw.store.list_transfers(TransferFilter())
    assert total == 0, "refused requests create no transfer"


async def test_disk_full_is_bad_size(env: GatewayEnv) -> None:
    import resource
    import signal

    env.rule("inbox", "receive")
    await env.start()
    handle = await env.server().open_transfer("a", "/inbox/big", Direction.RECEIVE)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, hard))
    try:
        with pytest.raises(TransferError) as info:
            for offset in range(0, 8 * MiB, MiB):
                await handle.write(offset, b"x" * MiB)
            await handle.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert info.value.code == ErrorCode.TeBadSize
    await handle.abort(info.value)
    row = await env.row(handle.transfer_id)
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeBadSize)


# ----------------------------------------------------------------------------- operations


async def test_pause_and_resume_a_running_transfer(env: GatewayEnv) -> None:
    env.partners["share"]["max_rate"] = 8 * MiB
    env.rule("in", "receive")
    await env.start()
    data = make_file(env.share / "slow.bin", 12 * MiB)
    t = await env.create(rule="in", partner="share", file="slow.bin")
    await env.wait_for(t.id, lambda r: r.progress > MiB, "under way")
    row = await env.gw.service.pause(t.id)
    assert row.status == Status.PAUSED and 0 < row.progress < len(data)
    assert t.id not in env.gw.engine.active
    env.partners["share"]["max_rate"] = 0
    env.gw.rt.loaded = env.load()
    await env.gw.service.resume(t.id)
    row = await env.wait_end(t.id)
    assert row.status == Status.DONE, row.error_msg
    assert (env.folder("in") / "slow.bin").read_bytes() == data


async def test_cancel_running_removes_temp_and_retry_starts_over(env: GatewayEnv) -> None:
    env.partners["share"]["max_rate"] = 8 * MiB
    env.rule("in", "receive")
    await env.start()
    data = make_file(env.share / "slow.bin", 12 * MiB)
    t = await env.create(rule="in", partner="share", file="slow.bin")
    await env.wait_for(t.id, lambda r: r.progress > MiB, "under way")
    row = await env.gw.service.cancel(t.id)
    assert (row.status, row.error_code) == (Status.CANCELLED, ErrorCode.TeCanceled)
    assert not Path(row.tmp_filepath).exists()
    with pytest.raises(StateError):
        await env.gw.service.cancel(t.id)
    with pytest.raises(StateError):
        await env.gw.service.resume(t.id)
    env.partners["share"]["max_rate"] = 0
    env.gw.rt.loaded = env.load()
    new = await env.gw.service.retry(t.id)
    assert new.id != t.id and new.progress == 0 and new.follow_id == t.follow_id
    row = await env.wait_end(new.id)
    assert row.status == Status.DONE, row.error_msg
    assert (env.folder("in") / "slow.bin").read_bytes() == data


async def test_bad_requests_name_every_problem(env: GatewayEnv) -> None:
    env.rule("out", "send", allow={"partners": []})
    await env.start()
    with pytest.raises(RequestError) as info:
        await env.gw.service.create(
            {"rule": "nope", "partner": "who", "file": "../x", "colour": 1, "start": "yesterday"}
        )
    fields = {(e.field, e.code) for e in info.value.errors}
    assert fields == {
        ("rule", "unknown_rule"),
        ("partner", "unknown_partner"),
        ("file", "bad_value"),
        ("colour", "unknown_field"),
        ("start", "bad_value"),
    }
    with pytest.raises(RequestError) as info:
        await env.gw.service.create(
            {
                "rule": "out",
                "partner": "share",
                "file": "/etc/passwd",
                "isSend": False,
                "nbOfAttempts": True,
            }
        )
    fields = {(e.field, e.code) for e in info.value.errors}
    assert fields == {
        ("partner", "not_allowed"),
        ("isSend", "bad_value"),
        ("file", "bad_value"),
        ("nbOfAttempts", "bad_value"),
    }
    _, total = await env.gw.store.list_transfers(TransferFilter())
    assert total == 0


async def test_store_and_forward_with_a_transfer_task(env: GatewayEnv) -> None:
    env.rule(
        "inbox",
        "receive",
        post=[{"type": "TRANSFER",
               "args": {"file": "#TRUEFULLPATH#", "to": "share", "rule": "fwd",
                        "info": {"from": "#REQUESTERHOST#"}}}],
    )  # fmt: skip
    env.rule("fwd", "send", post=[trace_task(env.out, "forwarded")])
    await env.start()
    data = make_file(env.root / "p", 100_000)
    handle = await env.server().open_transfer("acme", "/inbox/order.xml", Direction.RECEIVE)
    await handle.write(0, data)
    await handle.close()
    parent = await env.row(handle.transfer_id)
    assert parent.status == Status.DONE, parent.error_msg
    children, total = await env.gw.store.list_transfers(TransferFilter(parent_id=parent.id))
    assert total == 1
    child = await env.wait_end(children[0].id)
    assert child.status == Status.DONE, child.error_msg
    assert child.follow_id == parent.follow_id != ""
    assert child.transfer_info["followID"] == parent.follow_id
    assert child.transfer_info["from"] == "acme"
    assert (env.share / "order.xml").read_bytes() == data
    assert lines(env.out / "trace") == ["forwarded order.xml"]


async def test_transfer_task_with_a_bad_request_fails_the_transfer(env: GatewayEnv) -> None:
    env.rule("inbox", "receive",
             post=[{"type": "TRANSFER", "args": {"file": "#TRUEFULLPATH#", "to": "nobody",
                                                 "rule": "inbox"}}])  # fmt: skip
    await env.start()
    handle = await env.server().open_transfer("acme", "/inbox/x", Direction.RECEIVE)
    await handle.write(0, b"x")
    with pytest.raises(TransferError):
        await handle.close()
    row = await env.row(handle.transfer_id)
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeExternalOperation)
    assert "unknown partner 'nobody'" in row.error_msg
    assert row.step == Step.POST_TASKS and (env.folder("inbox") / "acme" / "x").exists()
