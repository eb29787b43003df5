"""kill -9 of a real `gatewayd serve` in the middle of DATA, then a restart: the
transfer resumes from its recorded offset and ends byte-identical, post tasks once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.daemon_proc import DaemonProcess, read_row, wait_row
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task

MiB = 1 << 20


async def test_kill_9_mid_data_then_restart_resumes(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.daemon.update(progress_interval=0.2)
    env.extra["logging"] = {"format": "json"}
    env.partners["share"]["max_rate"] = 6 * MiB
    env.rule("out", "send", post=[trace_task(env.out, "post")])
    loaded = env.load()
    rule_folder = loaded.paths.rule_folder(loaded.config.rules["out"])
    data = make_file(rule_folder / "big.bin", 30 * MiB + 99)
    db = loaded.paths.database

    transfer = await env.plan({"rule": "out", "partner": "share", "file": "big.bin"})
    assert transfer.id is not None

    first = await DaemonProcess.start(env.config_file)
    try:
        await first.wait_for("gatewayd ready")
        await wait_row(db, transfer.id, lambda r: r["progress"] > 0, "made progress", first)
    finally:
        await first.kill()
    at_kill = read_row(db, transfer.id)
    assert at_kill["status"] == "RUNNING" and at_kill["step"] == "DATA"
    recorded = at_kill["progress"]
    assert 0 < recorded < len(data)
    assert (env.share / "big.bin.part").stat().st_size >= recorded
    assert not (env.share / "big.bin").exists()

    second = await DaemonProcess.start(env.config_file)
    try:
        started = json.loads(await second.wait_for('"data starts"'))
        assert started["transfer_id"] == transfer.id
        assert started["offset"] == recorded, "resumed from the recorded offset"
        done = await wait_row(
            db, transfer.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
        )
    finally:
        assert await second.stop() == 0, second.output
    assert done["status"] == "DONE", done["error_msg"]
    assert (env.share / "big.bin").read_bytes() == data
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert lines(env.out / "trace") == ["post big.bin"], "post tasks ran exactly once"
