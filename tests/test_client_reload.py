"""A partner's configuration changed by a reload while a send to it runs: the running
send keeps its client (the connection made with the old configuration) to its end,
DONE; the next send to that partner uses a new client with the new configuration."""

from __future__ import annotations

from pathlib import Path

from gatewayd.model import Status
from tests.gateway_env import GatewayEnv, make_file
from tests.sftp_peers import Sshd, keygen

MiB = 1 << 20


async def test_a_reload_keeps_the_running_send_on_its_old_connection(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "gatewayd"
    sshd = await Sshd.start(tmp_path / "sshd", [keygen(key)])
    old_dir, new_dir = tmp_path / "peer" / "old", tmp_path / "peer" / "new"
    old_dir.mkdir(parents=True)
    new_dir.mkdir(parents=True)
    env = GatewayEnv(tmp_path / "gw")
    env.daemon["progress_interval"] = 0.05
    env.partners["peer"] = {
        "protocol": "sftp", "address": "127.0.0.1", "port": sshd.port, "login": "root",
        "private_key": str(key), "host_keys": [sshd.host_key], "remote_dir": str(old_dir),
        "max_rate": 3 * MiB, "sync_interval": 0.05,
    }  # fmt: skip
    env.rule("out", "send")
    try:
        await env.start()
        big = make_file(env.folder("out") / "big.bin", 5 * MiB + 3)
        small = make_file(env.folder("out") / "small.bin", 100_000, seed=2)
        running = await env.create(rule="out", partner="peer", file="big.bin")
        await env.wait_for(running.id or 0, lambda t: t.progress > MiB, "under way")
        old_client = env.gw.clients._clients["peer"].client

        env.partners["peer"]["remote_dir"] = str(new_dir)
        env.partners["peer"]["max_rate"] = 0
        env.gw.apply_config(env.load())
        after = await env.create(rule="out", partner="peer", file="small.bin")
        after_row = await env.wait_end(after.id or 0, timeout=30)
        assert after_row.status == Status.DONE, after_row.error_msg
        assert env.gw.clients._clients["peer"].client is not old_client, "a new client"
        assert (await env.row(running.id or 0)).status == Status.RUNNING, "still sending"
        running_row = await env.wait_end(running.id or 0, timeout=30)
    finally:
        await env.stop()
        sshd.stop()
    assert running_row.status == Status.DONE, running_row.error_msg
    assert (old_dir / "big.bin").read_bytes() == big, "sent on the old configuration"
    assert (new_dir / "small.bin").read_bytes() == small, "the next one on the new"
    assert sorted(p.name for p in old_dir.iterdir()) == ["big.bin"]
    assert sorted(p.name for p in new_dir.iterdir()) == ["small.bin"]
    accepted = [x for x in sshd.log().splitlines() if "Accepted publickey" in x]
    assert len(accepted) == 2, "one connection per version of the partner's configuration"
