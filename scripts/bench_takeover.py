#!/usr/bin/env python3
"""Takeover of a killed node: how long until another node has its transfers, and until
they are all DONE.

Two `gatewayd serve` nodes on one private PostgreSQL database and one data folder (as
tests/test_cluster_nodes.py builds them). Each round: `--transfers` client sends of
`--size-mib` each to a throttled `local` partner are created through node A's API and
claimed by A; once all of them are RUNNING, half of them at least with bytes recorded
(the `local` protocol records its progress every 4 MiB), B starts and A is killed with
SIGKILL.
Measured from the kill: when node B has taken over those still running (their
`taken_over_by` set), when the first resumes there, when all are DONE; and whether each file arrived
byte-identical. Then the nodes are restarted for the next round.

    scripts/bench takeover [-- --transfers 100 --lease 10 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402

from tests.gateway_env import make_file  # noqa: E402
from tests.pg_support import pg_raw, start_server  # noqa: E402
from tests.test_cluster_nodes import Cluster, MiB, _auth  # noqa: E402


async def until(what: str, check: object, timeout: float, dsn: str) -> float:
    """Poll `check()` (a coroutine function) until true; returns when it became so."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            rows = await pg_raw(
                dsn,
                "SELECT status, owner, taken_over_by, count(*) FROM transfers "
                "GROUP BY status, owner, taken_over_by ORDER BY 1, 2, 3",
            )
            found = "; ".join(" ".join(str(v) for v in r) for r in rows)
            raise SystemExit(f"timed out waiting for {what}: {found}")
        await asyncio.sleep(0.05)
    return time.monotonic()


async def one_round(root: Path, dsn: str, args: argparse.Namespace) -> dict[str, float]:
    cluster = Cluster(root, dsn, rate=args.rate_mib * MiB, lease=args.lease)
    cluster.max_transfers = args.transfers
    sums = {}
    for i in range(args.transfers):
        data = make_file(cluster.data / "out" / f"f{i}.bin", args.size_mib * MiB + i, seed=i)
        sums[f"f{i}.bin"] = hashlib.sha256(data).hexdigest()
    try:
        a = await cluster.start("gw-a")
        async with aiohttp.ClientSession(headers=_auth()) as session:
            for name in sums:
                body = {"rule": "out", "partner": "share", "file": name}
                async with session.post(f"{a.api}/api/transfers", json=body) as answer:
                    assert answer.status == 201, await answer.text()

        async def all_running() -> bool:
            [(n, sent)] = await pg_raw(
                dsn,
                "SELECT count(*), count(*) FILTER (WHERE progress > 0) FROM transfers "
                "WHERE status = 'RUNNING' AND owner = 'gw-a'",
            )
            return int(n) == args.transfers and 2 * int(sent) >= args.transfers

        await until("every transfer running on gw-a", all_running, 120, dsn)
        b = await cluster.start("gw-b")  # only now: A runs them all
        await a.daemon.kill()
        killed = time.monotonic()
        [(running,)] = await pg_raw(
            dsn, "SELECT count(*) FROM transfers WHERE status = 'RUNNING' AND owner = 'gw-a'"
        )

        async def all_taken() -> bool:
            [(n,)] = await pg_raw(
                dsn, "SELECT count(*) FROM transfers WHERE taken_over_by = 'gw-b'"
            )
            return int(n) == int(running)

        async def all_done() -> bool:
            [(n,)] = await pg_raw(dsn, "SELECT count(*) FROM transfers WHERE status = 'DONE'")
            [(bad,)] = await pg_raw(
                dsn, "SELECT count(*) FROM transfers WHERE status IN ('ERROR', 'CANCELLED')"
            )
            if bad:
                raise SystemExit(f"{bad} transfers failed after the takeover")
            return int(n) == args.transfers

        taken = await until("the takeover", all_taken, 120, dsn)
        await b.daemon.wait_for('"data starts"', timeout=60)
        first = time.monotonic()
        done = await until("every transfer DONE", all_done, 600, dsn)
        for name, digest in sums.items():
            got = hashlib.sha256((cluster.share / name).read_bytes()).hexdigest()
            assert got == digest, f"{name} differs"
        assert await b.daemon.stop() == 0, b.daemon.output
        return {
            "running at the kill": float(running),
            "takeover": taken - killed,
            "first resumed": first - killed,
            "all DONE": done - killed,
        }
    finally:
        await cluster.close()


async def main(args: argparse.Namespace) -> None:
    server = start_server()
    results: list[dict[str, float]] = []
    try:
        for n in range(args.rounds):
            conn = await asyncpg.connect(server.dsn())
            await conn.execute(f"CREATE DATABASE takeover_{n}")
            await conn.close()
            root = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
            try:
                results.append(await one_round(root, server.dsn(f"takeover_{n}"), args))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            print(f"round {n + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()))
    finally:
        server.stop()
    print(
        f"\n{args.transfers} transfers of {args.size_mib} MiB at {args.rate_mib} MiB/s each, "
        f"lease {args.lease:g}s, {args.rounds} rounds (medians; seconds after the kill -9):"
    )
    for key in results[0]:
        print(f"  {key:14} {statistics.median(r[key] for r in results):6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=50)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--rate-mib", type=int, default=1, help="per transfer")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
