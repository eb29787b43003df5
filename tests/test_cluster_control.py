"""Several real `gatewayd serve` nodes on one PostgreSQL database and one data folder:
control from any node (pause and cancel sent to a node that does not run the transfer
reach the one that does; an owner that cannot answer is named, nothing is overwritten),
a rule created through one node usable through the others, and client transfers
created at once through three nodes run exactly once within a partner limit counted
across the nodes (the partner, a receiving gatewayd, says so itself)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.cluster_support import Cluster, Node, call, max_overlap
from tests.gateway_env import make_file
from tests.pg_support import pg_raw

pytestmark = pytest.mark.timeout(150)

MiB = 1 << 20
# A send and a receive through a `local` partner at this rate take SIZE / RATE seconds:
# long enough for the second node to start and for the operations through it, even on
# a busy machine (the rate is lifted before the paused one resumes).
RATE = 1 * MiB
SIZE = 32 * MiB


async def wait_for(
    session: aiohttp.ClientSession,
    node: Node,
    transfer_id: int,
    check: Any,
    what: str,
    timeout: float = 30,
) -> dict[str, Any]:
    """Poll the transfer through `node`'s API (bounded) until `check` holds."""
    row: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                status, row, _ = await call(
                    session, "GET", f"{node.api}/api/transfers/{transfer_id}"
                )
                assert status == 200, row
                if check(row):
                    return dict(row)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"transfer {transfer_id} never {what}: {row}") from None


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else -1


async def stays(path: Path, seconds: float) -> int:
    """The size of `path`, checked unchanged for `seconds` (a stopped writer)."""
    size = size_of(path)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert size_of(path) == size, f"{path} still grows: the run was not stopped"
        await asyncio.sleep(0.05)
    return size


async def test_pause_and_cancel_through_a_node_that_does_not_run_the_transfer(
    pg_database: str, tmp_path: Path
) -> None:
    c = Cluster(
        tmp_path / "c",
        pg_database,
        daemon_extra={"command_timeout": 1.0},
        scheduler={"attempts": 0, "max_transfers": 2},
    )
    c.partners["slow"] = {"protocol": "local", "root": str(c.share), "max_rate": RATE}
    for name, direction in (("out", "send"), ("pull", "receive")):
        c.rules[name] = {
            "name": name,
            "direction": direction,
            "path": f"/{name}",
            "shared_folder": True,
            "allow": {"partners": ["slow"]},
        }
    sent = make_file(c.data / "out" / "big.bin", SIZE, seed=1)
    make_file(c.share / "offered.bin", SIZE, seed=2)
    small = make_file(c.data / "out" / "small.bin", 4096, seed=3)
    [a] = await c.start("node-a")
    try:
        async with aiohttp.ClientSession() as s:
            ids = []
            for body in (
                {"rule": "out", "partner": "slow", "file": "big.bin"},
                {"rule": "pull", "partner": "slow", "file": "offered.bin"},
            ):
                status, created, _ = await call(s, "POST", f"{a.api}/api/transfers", body)
                assert status == 201, created
                ids.append(created["id"])
            send_id, pull_id = ids
            for transfer_id in ids:
                await wait_for(
                    s, a, transfer_id, lambda r: r["progress"] > 0, "moved bytes on node-a"
                )
            # Node B starts once both run on A: it cannot have claimed them.
            [b] = await c.start("node-b")
            owners = await pg_raw(pg_database, "SELECT owner, status FROM transfers ORDER BY id")
            assert [tuple(r) for r in owners] == [("node-a", "RUNNING")] * 2

            # A is full (2 of 2): a transfer created through it runs on B at once, B's
            # scheduler woken through the database (else it sleeps up to a minute).
            body = {"rule": "out", "partner": "slow", "file": "small.bin"}
            status, created, _ = await call(s, "POST", f"{a.api}/api/transfers", body)
            assert status == 201, created
            row = await wait_for(
                s, b, created["id"], lambda r: r["status"] == "DONE", "ran on B", timeout=3
            )
            owner = await pg_raw(
                pg_database, "SELECT owner FROM transfers WHERE id = $1", row["id"]
            )
            assert owner[0][0] == "node-b"
            assert (c.share / "small.bin").read_bytes() == small

            # Pause through B: the answer says PAUSED, within a second, and A's run
            # really stopped (the partner's file stops growing).
            status, paused, seconds = await call(s, "PUT", f"{b.api}/api/transfers/{send_id}/pause")
            assert status == 202, paused
            assert paused["status"] == "PAUSED", paused
            assert seconds < 1.0, f"paused through node-b in {seconds:.3f} s"
            print(f"\npaused through node-b in {seconds:.3f} s")
            part = c.share / "big.bin.part"
            held = await stays(part, 0.6)
            assert 0 < held < SIZE, held
            row = await wait_for(s, a, send_id, lambda r: True, "read")
            assert (row["status"], row["errorCode"]) == ("PAUSED", "TeStopped"), row
            [carried] = a.log_events("command of another node carried out")
            assert (carried["action"], carried["sender"], carried["result"]) == (
                "pause",
                "node-b",
                "PAUSED",
            )

            # A frozen owner (SIGSTOP): a pause through B is refused within the command
            # timeout, naming it; nothing is written, and once the owner runs again the
            # withdrawn pause is never carried out (it would be at its next poll).
            a.daemon.proc.send_signal(signal.SIGSTOP)
            try:
                status, refused, seconds = await call(
                    s, "PUT", f"{b.api}/api/transfers/{pull_id}/pause"
                )
            finally:
                a.daemon.proc.send_signal(signal.SIGCONT)
            assert status == 503, refused
            [problem] = refused["errors"]
            assert problem["errorCode"] == "node_unavailable"
            assert "node 'node-a'" in problem["message"], problem
            assert 1.0 <= seconds < 3.0, seconds
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                row = await wait_for(s, b, pull_id, lambda r: True, "read")
                assert row["status"] == "RUNNING", row
                await asyncio.sleep(0.1)

            # Cancel through B: CANCELLED, the received temp file gone (A removed it).
            temp = c.data / "pull" / ".tmp"
            assert [p.name for p in temp.iterdir()], "the receive has its temp file"
            status, cancelled, seconds = await call(
                s, "PUT", f"{b.api}/api/transfers/{pull_id}/cancel"
            )
            assert status == 202 and cancelled["status"] == "CANCELLED", cancelled
            assert seconds < 1.0, f"cancelled through node-b in {seconds:.3f} s"
            assert list(temp.iterdir()) == [], "the temp file is removed"
            assert not (c.data / "pull" / "offered.bin").exists()

            # The partner's limit lifted on both nodes (SIGHUP), then resume through
            # A: it continues from where it stopped, on either node, to DONE.
            c.partners["slow"]["max_rate"] = 0
            for node in (a, b):
                c.config(node.name)
                since = len(node.daemon.lines)
                node.daemon.proc.send_signal(signal.SIGHUP)
                await node.daemon.wait_for("configuration reloaded", since=since)
            status, resumed, _ = await call(s, "PUT", f"{a.api}/api/transfers/{send_id}/resume")
            assert status == 202 and resumed["status"] == "PLANNED", resumed
            row = await wait_for(
                s, a, send_id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", timeout=60
            )
            assert row["status"] == "DONE", row
            assert (c.share / "big.bin").read_bytes() == sent
            assert not part.exists()
    finally:
        codes = await c.stop()
    assert codes == {"node-a": 0, "node-b": 0}, c.output()


async def test_a_rule_from_one_node_and_transfers_created_through_three_run_once(
    pg_database: str, tmp_path: Path
) -> None:
    count, limit = 150, 2
    c = Cluster(tmp_path / "c", pg_database)
    receiver = await c.start_receiver()
    c.partners["recv"]["max_transfers"] = limit
    nodes = await c.start("node-a", "node-b", "node-c")
    a, b, _ = nodes
    names = [f"f{i:04d}.bin" for i in range(count)]
    for i, name in enumerate(names):
        make_file(c.data / "bulk" / name, 16 * 1024 + i, seed=i)
    try:
        async with aiohttp.ClientSession() as s:
            # A rule created through A is loaded by B and C, through the database.
            rule = {
                "name": "bulk",
                "direction": "send",
                "path": "/bulk",
                "shared_folder": True,
                "allow": {"partners": ["recv"]},
            }
            status, body, _ = await call(s, "POST", f"{a.api}/api/rules", rule)
            assert status == 201, body
            began = time.monotonic()
            for node in nodes[1:]:
                async with asyncio.timeout(5):
                    while (await call(s, "GET", f"{node.api}/api/rules/bulk"))[0] != 200:
                        await asyncio.sleep(0.02)
            loaded_in = time.monotonic() - began
            status, one, _ = await call(
                s,
                "POST",
                f"{b.api}/api/transfers",
                {"rule": "bulk", "partner": "recv", "file": names[0]},
            )
            assert status == 201, one

            # The rest at once, spread over the three nodes.
            running_since = time.monotonic()
            done_sampling = asyncio.Event()
            sampling = asyncio.ensure_future(_sample_running(pg_database, done_sampling))
            created = await asyncio.gather(
                *(
                    call(
                        s,
                        "POST",
                        f"{nodes[i % 3].api}/api/transfers",
                        {"rule": "bulk", "partner": "recv", "file": name},
                    )
                    for i, name in enumerate(names[1:], start=1)
                )
            )
            assert all(st == 201 for st, _, _ in created), [b for st, b, _ in created if st != 201]
            ids = [one["id"]] + [body["id"] for _, body, _ in created]
            async with asyncio.timeout(90):
                while True:
                    rows = await pg_raw(
                        pg_database, "SELECT status, count(*) FROM transfers GROUP BY status"
                    )
                    counts = {r[0]: r[1] for r in rows}
                    if counts.get("DONE", 0) + counts.get("ERROR", 0) >= count:
                        break
                    await asyncio.sleep(0.1)
            done_sampling.set()
            most_running = await sampling
            ran_in = time.monotonic() - running_since
    finally:
        codes = await c.stop()
    assert codes == {"node-a": 0, "node-b": 0, "node-c": 0, "recv": 0}, c.output()
    assert loaded_in < 3.0, f"the rule reached the other nodes in {loaded_in:.2f} s"

    rows = await pg_raw(pg_database, "SELECT id, status, owner FROM transfers ORDER BY id")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {r[1] for r in rows} == {"DONE"}, [tuple(r) for r in rows if r[1] != "DONE"]
    # Which node ran which is theirs to decide: the node holding the partner's slots
    # takes the next one itself as a run ends.
    by_node = {n: sum(1 for r in rows if r[2] == n) for n in c.nodes}
    # Each run launched once, by one node (their own logs).
    launched = [e["transfer_id"] for n in nodes for e in n.log_events("transfer launched")]
    assert sorted(launched) == sorted(ids), "every transfer launched exactly once"

    # The partner's own view: each file received once, never more than the limit at once.
    received = [r for r in receiver.rows() if r["is_server"]]
    assert sorted(r["dest_filename"] for r in received) == names
    assert {r["status"] for r in received} == {"DONE"}
    assert sorted(p.name for p in receiver.inbox.iterdir()) == names
    partner_view = max_overlap([(r["start"], r["stop"]) for r in received])
    assert partner_view <= limit, f"the partner saw {partner_view} uploads at once"
    assert most_running == limit, f"RUNNING rows of the partner at most {most_running}"
    print(
        f"\n{count} transfers over 3 nodes: by node {by_node}; rule loaded in "
        f"{loaded_in:.2f} s; partner saw at most {partner_view} at once; "
        f"database at most {most_running} RUNNING; all done in {ran_in:.1f} s"
    )


async def _sample_running(dsn: str, done: asyncio.Event) -> int:
    """The most RUNNING rows of the partner seen at once, sampled until `done`."""
    most = 0
    conn = await asyncpg.connect(dsn)
    try:
        while not done.is_set():
            n = await conn.fetchval(
                "SELECT count(*) FROM transfers WHERE status = 'RUNNING' AND partner = 'recv'"
            )
            most = max(most, int(n))
            await asyncio.sleep(0.01)  # a sampling period, not a synchronisation
        return most
    finally:
        await conn.close()
