"""A schedule on two real `gatewayd serve` nodes sharing one PostgreSQL database: every
firing happens once (one record, one transfer) though both nodes try each one, and
after `kill -9` of one node the other goes on firing alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from tests.cluster_support import Cluster
from tests.pg_support import pg_raw

pytestmark = pytest.mark.timeout(120)

EVERY = 1  # seconds between firings ("*/1 * * * * *")


async def runs(dsn: str) -> list[tuple[str, int | None, str]]:
    rows = await pg_raw(
        dsn, "SELECT fire_time, transfer_id, node FROM schedule_runs ORDER BY fire_time"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def wait_runs(
    dsn: str, count: int, what: str, cluster: Cluster
) -> list[tuple[str, int | None, str]]:
    found: list[tuple[str, int | None, str]] = []
    try:
        async with asyncio.timeout(EVERY * count + 30):
            while len(found := await runs(dsn)) < count:
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}: {len(found)} firings\n{cluster.output()}") from None
    return found


async def test_two_nodes_fire_each_time_once_and_one_goes_on_alone(
    tmp_path: Path, pg_database: str
) -> None:
    c = Cluster(tmp_path / "c", pg_database, daemon_extra={"lease": 2})
    c.partners["share"] = {"protocol": "local", "root": str(c.share)}
    c.rules["reports"] = {
        "name": "reports",
        "direction": "send",
        "path": "/reports",
        "shared_folder": True,
        "allow": "all",
    }
    (c.data / "reports").mkdir(parents=True)
    (c.data / "reports" / "daily.csv").write_text("a,b\n")
    folder = c.root / "schedules"
    folder.mkdir(parents=True)
    schedule = {
        "name": "often",
        "cron": f"*/{EVERY} * * * * *",
        "timezone": "UTC",
        "transfer": {"rule": "reports", "partner": "share", "file": "daily.csv"},
    }
    (folder / "often.yaml").write_text(yaml.safe_dump(schedule))
    a, b = await c.start("node-a", "node-b")
    try:
        both = await wait_runs(pg_database, 3, "with two nodes", c)
        # One record per firing, each with its own transfer, EVERY seconds apart.
        times = [r[0] for r in both]
        assert len(set(times)) == len(times)
        ids = [r[1] for r in both]
        assert None not in ids and len(set(ids)) == len(ids)
        # Both nodes tried: the loser of each firing made no transfer.
        fired = [e for n in (a, b) for e in n.log_events("schedule fired")]
        fired_times = sorted(e["fire_time"] for e in fired)
        assert len(fired_times) == len(set(fired_times)), "a firing made twice"
        # ...and the other node tried each one too: its insert found the record.
        lost = [e for n in (a, b) for e in n.log_events("schedule firing made already")]
        assert lost, "only one node tried"
        assert {e["fire_time"] for e in lost} <= set(fired_times)

        await b.daemon.kill()
        before = len(await runs(pg_database))
        after = await wait_runs(pg_database, before + 2, "after kill -9 of node-b", c)
        assert {r[2] for r in after[before:]} == {"node-a"}
        counts = await pg_raw(
            pg_database,
            "SELECT count(*), count(DISTINCT transfer_id) FROM schedule_runs",
        )
        assert counts[0][0] == counts[0][1]
        total = (await pg_raw(pg_database, "SELECT count(*) FROM transfers"))[0][0]
        assert total == counts[0][0], "one transfer per firing, nothing else"
    finally:
        await c.stop()
