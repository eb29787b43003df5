"""The steps of a graceful stop, in a gateway of this process: what is refused once the
stop began, which runs it lets finish, and when it calls itself clean. (The whole stop
against real partners and a real SIGTERM is test_shutdown.py's.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gatewayd.errors import TransferError
from gatewayd.model import Direction, ErrorCode, Status, Step, Transfer
from gatewayd.pipeline.run import StopReason
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv, exec_task
from tests.http_support import PASSWORD, http_gateway


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GatewayEnv]:
    environment = GatewayEnv(tmp_path)
    environment.rule("inbox", "receive", post=[exec_task("sleep 0.5")])
    yield environment
    await environment.stop()


async def rows(env: GatewayEnv) -> list[tuple[str, Status]]:
    found, _ = await env.gw.store.list_transfers(TransferFilter(limit=100))
    return [(t.src_filename, t.status) for t in found]


async def test_an_open_refused_by_the_stop_writes_no_row(env: GatewayEnv) -> None:
    await env.start()
    env.gw.engine.shutting_down = True  # the first thing a stop does
    with pytest.raises(TransferError) as refused:
        await env.server().open_transfer("alice", "/inbox/late.bin", Direction.RECEIVE)
    assert refused.value.code == ErrorCode.TeShuttingDown
    assert await rows(env) == [], "a refused open leaves no row (none RUNNING)"


async def test_an_upload_whose_close_arrived_finishes_during_the_stop(env: GatewayEnv) -> None:
    """The partner's close arrived while its last writes were still queued
    (`closing()`): the stop lets it finish instead of interrupting it."""
    await env.start()
    closing = await env.server().open_transfer("alice", "/inbox/closing.bin", Direction.RECEIVE)
    await closing.write(0, b"a" * 1000)
    moving = await env.server().open_transfer("alice", "/inbox/moving.bin", Direction.RECEIVE)
    await moving.write(0, b"b" * 1000)
    closing.closing()
    stopping = asyncio.ensure_future(env.gw.engine.stop_all(10))
    await asyncio.sleep(0)  # the stop has looked at every run
    await closing.write(1000, b"a" * 1000)  # the last queued write, then the close
    await closing.close()
    await stopping
    assert (await env.row(closing.transfer_id)).status == Status.DONE
    moved = await env.row(moving.transfer_id)
    assert moved.status == Status.INTERRUPTED and moved.progress == 1000


async def test_the_stop_is_clean_only_when_nothing_is_left_running(env: GatewayEnv) -> None:
    env.rule("out", "send")
    await env.start()
    later = env.clock.now() + timedelta(hours=1)
    planned = await env.create(rule="out", partner="share", file="x", start=later.isoformat())
    stuck = await env.row(planned.id or 0)
    stuck.status = Status.RUNNING  # what a bug, or a run that never ended, leaves
    await env.gw.store.save_transfer(stuck)
    stopped = await env.gw.stop(1.0)
    assert not stopped.clean
    assert stopped.running_rows == 1 and stopped.running_ids == [planned.id]
    assert stopped.runs_left == 0


async def test_a_clean_stop_says_so(env: GatewayEnv) -> None:
    await env.start()
    upload = await env.server().open_transfer("alice", "/inbox/a.bin", Direction.RECEIVE)
    await upload.write(0, b"x" * 10)
    stopped = await env.gw.stop(5.0)
    assert stopped.clean, stopped
    assert (await env.row(upload.transfer_id)).status == Status.INTERRUPTED


async def test_http_refuses_new_requests_once_it_stops_accepting(tmp_path: Path) -> None:
    env = http_gateway(tmp_path)
    await env.start()
    try:
        server = env.gw.servers["web"]
        url = f"http://127.0.0.1:{server.bound_port}/inbox/"
        auth = {"Authorization": aiohttp.encode_basic_auth("alice", PASSWORD)}
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.get(url) as before:
                assert before.status == 200
            await server.stop_accepting()
            # The same keep-alive connection: answered, refused, and closed.
            async with session.get(url) as during:
                assert during.status == 503
                assert during.headers["Connection"] == "close"
                assert "stopping" in (await during.json())["errors"][0]["message"]
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get(url, headers={"Connection": "close"}):
                    pass
    finally:
        await env.stop()


async def test_an_open_cut_short_never_leaves_its_row_running(env: GatewayEnv) -> None:
    """A stop cuts the requests still opening their transfer (HTTP cancels them): at
    whatever point the cut lands, the row is not left RUNNING without a run."""
    await env.start()
    cut_while_opening = 0
    for yields in range(40):
        opening = asyncio.ensure_future(
            env.server().open_transfer("alice", f"/inbox/cut-{yields}.bin", Direction.RECEIVE)
        )
        for _ in range(yields):
            await asyncio.sleep(0)
        if opening.done():  # opened before the cut: every earlier point was cut
            await (await opening).abort(TransferError(ErrorCode.TeConnectionReset, "cut"))
            break
        opening.cancel()
        with pytest.raises((asyncio.CancelledError, TransferError)):
            await opening
        cut_while_opening += 1
    assert cut_while_opening >= 2, "the open took no steps at all to cut"
    async with asyncio.timeout(10):
        while env.gw.engine.active:
            await asyncio.sleep(0.01)
    left = [(name, status) for name, status in await rows(env) if status == Status.RUNNING]
    assert left == []


async def test_a_stop_arriving_as_done_is_committed_changes_nothing(env: GatewayEnv) -> None:
    """Without post tasks DONE is committed with the placing: a stop that lands at that
    moment (here: as the run enters FINALIZATION) finds the transfer over and leaves
    it DONE, the partner told it worked."""
    env.rule("plain", "receive")
    await env.start()
    stops: list[asyncio.Future[bool]] = []

    async def stop_now(transfer: Transfer, step: Step) -> None:
        if step == Step.FINALIZATION and transfer.id is not None:
            stops.append(
                asyncio.ensure_future(env.gw.engine.stop(transfer.id, StopReason.SHUTDOWN))
            )
            await asyncio.sleep(0)  # the stop has cancelled the run's task

    env.hooks.before_step = stop_now
    upload = await env.server().open_transfer("alice", "/plain/late.bin", Direction.RECEIVE)
    await upload.write(0, b"z" * 100)
    await upload.close()
    assert stops and await stops[0], "the stop found the run"
    row = await env.row(upload.transfer_id)
    assert (row.status, row.error_code) == (Status.DONE, ErrorCode.TeOk), row.error_msg
    assert row.filesize == 100
