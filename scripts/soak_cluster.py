"""Cluster soak: real `gatewayd serve` nodes on one PostgreSQL database (a private
server, as the tests start it) and one data folder.

Cases:

- exactly-once: a rule created through node A's API (the time until every other node
  serves it is measured), then `--transfers` client transfers (default 1000) created at
  once through the nodes' APIs in turn, sending small files to one partner, a receiving
  gatewayd on SQLite, whose limit (`--limit`, default 2) counts across the nodes. Checks:
  every row DONE, each launched exactly once (the nodes' logs), each file received once
  (the partner's own rows and folder), the partner never saw more than the limit at
  once (its rows' start and stop), the RUNNING rows of the partner never above it
  (sampled from the database every 10 ms).
- pause-latency: a pause sent to node B of a transfer running on node A, `--rounds`
  times (default 20), with LISTEN/NOTIFY and with polling only
  (`daemon.cluster_notify: false`): the seconds until the API answered PAUSED.

The last line is JSON: {"soak": "cluster", "passes", "failures", "seconds",
"exactly_once": {...}, "pause_latency": {"notify": {...}, "poll": {...}}}.
Run it with `scripts/soak cluster` (`-- --transfers 1000 --nodes 3`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from tests.cluster_support import Cluster, Node, call, max_overlap  # noqa: E402
from tests.gateway_env import make_file  # noqa: E402
from tests.pg_support import PgServer, start_server  # noqa: E402

MiB = 1 << 20


async def new_database(server: PgServer, name: str) -> str:
    admin = await asyncpg.connect(server.dsn(), ssl=False)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server.dsn(name, sslmode="disable")


async def sample_running(dsn: str, partner: str, done: asyncio.Event) -> int:
    most = 0
    conn = await asyncpg.connect(dsn)
    try:
        while not done.is_set():
            n = await conn.fetchval(
                "SELECT count(*) FROM transfers WHERE status = 'RUNNING' AND partner = $1",
                partner,
            )
            most = max(most, int(n))
            await asyncio.sleep(0.01)
        return most
    finally:
        await conn.close()


async def exactly_once(
    root: Path, dsn: str, transfers: int, nodes: int, limit: int
) -> dict[str, Any]:
    c = Cluster(root, dsn)
    receiver = await c.start_receiver()
    c.partners["recv"]["max_transfers"] = limit
    names = [f"f{i:05d}.bin" for i in range(transfers)]
    for i, name in enumerate(names):
        make_file(c.data / "bulk" / name, 16 * 1024 + i, seed=i)
    started = await c.start(*(f"node-{chr(97 + i)}" for i in range(nodes)))
    problems: list[str] = []
    figures: dict[str, Any] = {"transfers": transfers, "nodes": nodes, "limit": limit}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            rule = {
                "name": "bulk",
                "direction": "send",
                "path": "/bulk",
                "shared_folder": True,
                "allow": {"partners": ["recv"]},
            }
            status, body, _ = await call(s, "POST", f"{started[0].api}/api/rules", rule)
            assert status == 201, body
            began = time.monotonic()
            for node in started[1:]:
                async with asyncio.timeout(10):
                    while True:
                        status, _, _ = await call(s, "GET", f"{node.api}/api/rules/bulk")
                        if status == 200:
                            break
                        await asyncio.sleep(0.01)
            figures["rule_loaded_s"] = round(time.monotonic() - began, 3)

            done = asyncio.Event()
            sampler = asyncio.ensure_future(sample_running(dsn, "recv", done))
            began = time.monotonic()
            created = await asyncio.gather(
                *(
                    call(
                        s,
                        "POST",
                        f"{started[i % nodes].api}/api/transfers",
                        {"rule": "bulk", "partner": "recv", "file": name},
                    )
                    for i, name in enumerate(names)
                )
            )
            figures["create_s"] = round(time.monotonic() - began, 3)
            refused = [b for st, b, _ in created if st != 201]
            if refused:
                problems.append(f"{len(refused)} creations refused: {refused[:3]}")
            ids = sorted(b["id"] for st, b, _ in created if st == 201)
            async with asyncio.timeout(max(120.0, transfers * 0.5)):
                while True:
                    rows = await await_pg(
                        dsn, "SELECT status, count(*) FROM transfers GROUP BY status"
                    )
                    counts = {r[0]: int(r[1]) for r in rows}
                    if sum(counts.get(x, 0) for x in ("DONE", "ERROR", "CANCELLED")) >= len(ids):
                        break
                    await asyncio.sleep(0.2)
            figures["run_s"] = round(time.monotonic() - began, 3)
            done.set()
            figures["most_running_in_database"] = await sampler
    finally:
        codes = await c.stop()
    if any(codes.values()):
        problems.append(f"exit statuses {codes}")
    rows = await await_pg(dsn, "SELECT id, status, owner, start, stop FROM transfers ORDER BY id")
    spans = sorted(
        (datetime.fromisoformat(r[4]) - datetime.fromisoformat(r[3])).total_seconds()
        for r in rows
        if r[3] and r[4]
    )
    if spans:
        figures["run_median_s"] = round(statistics.median(spans), 4)
        figures["run_max_s"] = round(spans[-1], 4)
    figures["statuses"] = {st: sum(1 for r in rows if r[1] == st) for st in {r[1] for r in rows}}
    figures["by_node"] = {n: sum(1 for r in rows if r[2] == n) for n in c.nodes}
    launched = [e["transfer_id"] for n in started for e in n.log_events("transfer launched")]
    twice = sorted({i for i in launched if launched.count(i) > 1})
    never = sorted(set(ids) - set(launched))
    figures["launched_twice"], figures["never_launched"] = len(twice), len(never)
    received = [r for r in receiver.rows() if r["is_server"]]
    figures["received"] = len(received)
    uploads = sorted(
        (datetime.fromisoformat(r["stop"]) - datetime.fromisoformat(r["start"])).total_seconds()
        for r in received
        if r["start"] and r["stop"]
    )
    if uploads:
        figures["partner_upload_median_s"] = round(statistics.median(uploads), 4)
        figures["partner_busy_s"] = round(sum(uploads), 3)
    figures["received_files"] = len(list(receiver.inbox.iterdir()))
    figures["partner_most_at_once"] = max_overlap([(r["start"], r["stop"]) for r in received])
    if figures["statuses"] != {"DONE": transfers}:
        problems.append(f"statuses {figures['statuses']}")
    if twice or never:
        problems.append(f"launched twice {twice[:5]}, never {never[:5]}")
    if sorted(r["dest_filename"] for r in received) != names:
        problems.append("the partner did not receive each file exactly once")
    if figures["received_files"] != transfers:
        problems.append(f"{figures['received_files']} files in the partner's folder")
    if figures["partner_most_at_once"] > limit or figures["most_running_in_database"] > limit:
        problems.append("the partner limit was exceeded")
    figures["problems"] = problems
    return figures


async def await_pg(dsn: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def wait_row(
    s: aiohttp.ClientSession, node: Node, transfer_id: int, check: Any, timeout: float = 30
) -> dict[str, Any]:
    row: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                _, row, _ = await call(s, "GET", f"{node.api}/api/transfers/{transfer_id}")
                if check(row):
                    return dict(row)
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"transfer {transfer_id} never got there: {row}") from None


async def pause_latency(root: Path, dsn: str, rounds: int, notify: bool) -> dict[str, Any]:
    """Node A keeps a long transfer to the partner `slow` running, so that node B (whose
    limit for `slow` is 1) never claims the transfers each round creates on A."""
    c = Cluster(root, dsn, daemon_extra={"cluster_notify": notify})
    slow = {"protocol": "local", "root": str(c.share), "max_rate": 1 * MiB, "max_transfers": 50}
    c.partners["slow"] = slow
    c.rules["out"] = {
        "name": "out",
        "direction": "send",
        "path": "/out",
        "shared_folder": True,
        "allow": {"partners": ["slow"]},
    }
    make_file(c.data / "out" / "keeper.bin", (rounds * 3 + 30) * MiB, seed=1)
    for i in range(rounds):
        make_file(c.data / "out" / f"r{i}.bin", 4 * MiB, seed=2 + i)
    latencies: list[float] = []
    problems: list[str] = []
    [a] = await c.start("node-a")
    try:
        async with aiohttp.ClientSession() as s:
            body = {"rule": "out", "partner": "slow", "file": "keeper.bin"}
            _, keeper, _ = await call(s, "POST", f"{a.api}/api/transfers", body)
            await wait_row(s, a, keeper["id"], lambda r: r["status"] == "RUNNING")
            c.partners["slow"] = {**slow, "max_transfers": 1}
            [b] = await c.start("node-b")
            for i in range(rounds):
                if i and not notify:
                    await asyncio.sleep(0.3)  # pauses at every point of the poll cycle
                body = {"rule": "out", "partner": "slow", "file": f"r{i}.bin"}
                _, t, _ = await call(s, "POST", f"{a.api}/api/transfers", body)
                await wait_row(s, a, t["id"], lambda r: r["progress"] > 0)
                status, paused, seconds = await call(
                    s, "PUT", f"{b.api}/api/transfers/{t['id']}/pause"
                )
                if status != 202 or paused.get("status") != "PAUSED":
                    problems.append(f"round {i}: {status} {paused}")
                    continue
                latencies.append(seconds)
                await call(s, "PUT", f"{a.api}/api/transfers/{t['id']}/cancel")
            # Nothing left running at the stop (a node counts every RUNNING row).
            await call(s, "PUT", f"{a.api}/api/transfers/{keeper['id']}/cancel")
            owners = await await_pg(dsn, "SELECT DISTINCT owner FROM transfers")
            if {r[0] for r in owners} != {"node-a"}:
                problems.append(f"owners {[r[0] for r in owners]}: B claimed a transfer")
    except AssertionError as exc:
        problems.append(str(exc))
        print(c.output(), flush=True)
    finally:
        codes = await c.stop()
    if any(codes.values()):
        problems.append(f"exit statuses {codes}")
        print(c.output(), flush=True)
    figures: dict[str, Any] = {"rounds": rounds, "problems": problems}
    if latencies:
        ordered = sorted(latencies)
        figures.update(
            median_s=round(statistics.median(ordered), 4),
            p90_s=round(ordered[int(0.9 * (len(ordered) - 1))], 4),
            max_s=round(ordered[-1], 4),
            min_s=round(ordered[0], 4),
        )
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cases", default="exactly-once,pause-latency")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    began = time.monotonic()
    server = start_server()
    root = Path(tempfile.mkdtemp(prefix="gatewayd-soak-cluster-"))
    result: dict[str, Any] = {"soak": "cluster"}
    failures = passes = 0
    try:
        if "exactly-once" in cases:
            dsn = await new_database(server, "soak_once")
            figures = await exactly_once(root / "once", dsn, args.transfers, args.nodes, args.limit)
            print(json.dumps({"case": "exactly-once", **figures}), flush=True)
            result["exactly_once"] = figures
            failures += bool(figures["problems"])
            passes += not figures["problems"]
        if "pause-latency" in cases:
            result["pause_latency"] = {}
            for mode, notify in (("notify", True), ("poll", False)):
                dsn = await new_database(server, f"soak_pause_{mode}")
                figures = await pause_latency(root / f"pause-{mode}", dsn, args.rounds, notify)
                print(json.dumps({"case": f"pause-latency-{mode}", **figures}), flush=True)
                result["pause_latency"][mode] = figures
                failures += bool(figures["problems"])
                passes += not figures["problems"]
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)
        if not failures:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept for inspection: {root}", flush=True)
    result.update(passes=passes, failures=failures, seconds=round(time.monotonic() - began, 1))
    print(json.dumps(result), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
