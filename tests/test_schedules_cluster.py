"""A schedule on two real `gatewayd serve` nodes sharing one PostgreSQL database: one
node fires it (the leader, gatewayd.automation.leader), every firing once (one record,
one transfer); after `kill -9` of that node the other takes over once its lease ran
out, catches up the latest firing missed meanwhile (once) and goes on alone."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
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
        # One record per firing, each with its own transfer, all made by the leader.
        times = [r[0] for r in both]
        assert len(set(times)) == len(times)
        ids = [r[1] for r in both]
        assert None not in ids and len(set(ids)) == len(ids)
        assert {r[2] for r in both} == {"node-a"}, both
        assert not b.log_events("schedule fired"), "the node on standby fired"
        assert not b.log_events("schedule firing made already"), "the standby node tried"

        await a.daemon.kill()
        before = len(await runs(pg_database))
        after = await wait_runs(pg_database, before + 3, "after kill -9 of node-a", c)
        assert {r[2] for r in after[before:]} == {"node-b"}
        # Its first firing is the catch-up of the latest time missed while node-a's
        # lease ran out (once, however many were missed); then each time as usual.
        [caught] = b.log_events("catching up a missed firing")
        first = datetime.fromisoformat(after[before][0])
        assert datetime.fromisoformat(caught["fire_time"]) == first
        last_of_a = datetime.fromisoformat(after[before - 1][0])
        assert first - last_of_a > timedelta(seconds=EVERY), "nothing was missed: no takeover"
        counts = await pg_raw(
            pg_database,
            "SELECT count(*), count(DISTINCT transfer_id), count(DISTINCT fire_time) "
            "FROM schedule_runs",
        )
        assert counts[0][0] == counts[0][1] == counts[0][2]
        total = (await pg_raw(pg_database, "SELECT count(*) FROM transfers"))[0][0]
        assert total == counts[0][0], "one transfer per firing, nothing else"
    finally:
        await c.stop()
