#!/usr/bin/env python3
"""Claims of due transfers per second (`Store.claim_due`): SQLite, PostgreSQL with one
node, and PostgreSQL with two nodes claiming from the same queue at once.

Each case fills a fresh database with `--rows` due transfers spread over `--partners`
partners, then drains it the way the scheduler does: claim up to `--slots` rows (the
node's free slots, within the partner limits counted across nodes), end each claimed
row (saved DONE, which frees its slots), claim again, until nothing is due. The table
shows, per case, the median over `--rounds` interleaved rounds of: claims per second
of the whole drain (claim + end of every row), and of the time spent inside
`claim_due` alone.

PostgreSQL is a private server started for the run (as tests/pg_support.py does: Debian's
postgresql, run as the `postgres` user when root; fsync off as in the tests), or the
database `--dsn` names (it must be empty: the benchmark creates and drops its own
databases there, so give a role that may CREATE DATABASE).

    scripts/bench claims [-- --rows 5000 --rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

import asyncpg  # noqa: E402

from gatewayd.model import Status, Transfer  # noqa: E402
from gatewayd.store.base import Store  # noqa: E402
from gatewayd.store.postgres import PgTarget, PostgresStore  # noqa: E402
from gatewayd.store.sqlite import SqliteStore  # noqa: E402

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
WINDOW = 256  # rows a claim reads at a time: the scheduler's SCAN_BATCH


@dataclass
class Figures:
    drain: list[float] = field(default_factory=list)  # claims/s of the whole drain
    claim: list[float] = field(default_factory=list)  # claims/s inside claim_due


def rows(count: int, partners: int) -> list[Transfer]:
    return [
        Transfer(
            rule="out",
            is_server=False,
            is_send=True,
            requester="gw",
            requested=f"p{i % partners}",
            protocol="sftp",
            partner=f"p{i % partners}",
            start=NOW - timedelta(seconds=i % 97),
        )
        for i in range(count)
    ]


async def drain(store: Store, node: str, slots: int, limit: int) -> tuple[int, float]:
    """Claim and end rows until none is due; returns (rows claimed, seconds in claims)."""
    claimed = 0
    in_claims = 0.0
    while True:
        began = time.perf_counter()
        got = await store.claim_due(NOW, WINDOW, node, slots, {}, limit)
        in_claims += time.perf_counter() - began
        if not got:
            if await store.count_due(NOW) == 0:
                return claimed, in_claims
            await asyncio.sleep(0.001)  # the other node holds the rest
            continue
        claimed += len(got)
        for t in got:
            t.status = Status.DONE
        await asyncio.gather(*(store.save_transfer(t) for t in got))


async def run_case(stores: list[Store], args: argparse.Namespace) -> tuple[float, float]:
    for s in stores:
        await s.open()
    try:
        await stores[0].insert_transfers(rows(args.rows, args.partners))
        began = time.perf_counter()
        results = await asyncio.gather(
            *(drain(s, f"node-{i}", args.slots, args.partner_limit) for i, s in enumerate(stores))
        )
        elapsed = time.perf_counter() - began
    finally:
        for s in stores:
            await s.close()
    total = sum(n for n, _ in results)
    if total != args.rows:
        raise SystemExit(f"claimed {total} rows of {args.rows}: a claim is broken")
    # Nodes claim side by side: their time in claims overlaps; count the longest.
    return total / elapsed, total / max(t for _, t in results)


class PgDatabases:
    """Fresh databases on a server: a private one, or the one --dsn names."""

    def __init__(self, dsn: str | None) -> None:
        self._server = None
        self._admin = dsn
        self._count = 0

    def start(self) -> None:
        if self._admin is None:
            from tests.pg_support import start_server

            self._server = start_server()
            self._admin = self._server.dsn() + "?sslmode=disable"

    async def drop_all(self) -> None:
        assert self._admin is not None
        conn = await asyncpg.connect(self._admin)
        try:
            for i in range(1, self._count + 1):
                await conn.execute(f'DROP DATABASE IF EXISTS "bench_claims_{i}" WITH (FORCE)')
        finally:
            await conn.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            shutil.rmtree(self._server.root, ignore_errors=True)

    async def fresh(self) -> str:
        assert self._admin is not None
        self._count += 1
        name = f"bench_claims_{self._count}"
        conn = await asyncpg.connect(self._admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        base, _, query = self._admin.partition("?")
        return base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")


async def main(args: argparse.Namespace) -> None:
    pg = PgDatabases(args.dsn)
    pg.start()
    figures = {case: Figures() for case in ("sqlite", "postgresql", "postgresql, 2 nodes")}
    scratch = Path(tempfile.mkdtemp(prefix="bench-claims-"))
    try:
        for round_number in range(1, args.rounds + 1):
            for case, fig in figures.items():
                if case == "sqlite":
                    path = scratch / f"r{round_number}.db"
                    stores: list[Store] = [SqliteStore(path)]
                else:
                    dsn = await pg.fresh()
                    nodes = 2 if "2 nodes" in case else 1
                    stores = [
                        PostgresStore(PgTarget(dsn=dsn), node=f"node-{i}") for i in range(nodes)
                    ]
                drained, claimed = await run_case(stores, args)
                fig.drain.append(drained)
                fig.claim.append(claimed)
                print(
                    f"round {round_number}: {case:<20} {drained:8.0f} claims/s drained, "
                    f"{claimed:8.0f} in claim_due",
                    file=sys.stderr,
                )
    finally:
        await pg.drop_all()
        pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n{args.rows} due rows, {args.partners} partners (limit {args.partner_limit} each), "
        f"{args.slots} slots per node, medians of {args.rounds} rounds"
    )
    print(f"{'case':<22}{'claims/s (drain)':>18}{'claims/s (claim_due)':>22}")
    for case, fig in figures.items():
        print(
            f"{case:<22}{statistics.median(fig.drain):>18.0f}{statistics.median(fig.claim):>22.0f}"
        )
    # Machine-readable (scripts/bench_cluster.py reads it): drain claims/s per case.
    names = {"sqlite": "sqlite", "postgresql": "postgresql", "postgresql, 2 nodes": "postgresql-2"}
    print(
        "claims: "
        + " ".join(f"{names[c]} {statistics.median(f.drain):.0f}" for c, f in figures.items())
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--partners", type=int, default=20)
    parser.add_argument("--partner-limit", type=int, default=8)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a PostgreSQL server to use instead of a private one")
    asyncio.run(main(parser.parse_args()))
