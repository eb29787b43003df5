#!/usr/bin/env python3
"""Schedules and pollers at scale, in one in-process gateway on SQLite with a manual
clock (no real waiting): `--schedules` schedules all due the same minute (how long
until every firing has its transfer and record), a restart of all of them after a
missed day with `catch_up: once` (exactly one firing each), and a poller over a
`local` partner folder of `--files` files (how long the taking look lasts; a second
look takes nothing). The transfers are not run (the scheduler has no slots).

    python scripts/bench_schedules.py [--schedules 1000 --files 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from gatewayd.clock import ManualClock  # noqa: E402
from gatewayd.store.base import TransferFilter  # noqa: E402
from tests.gateway_env import GatewayEnv  # noqa: E402

T0 = datetime(2024, 6, 3, 1, 59, tzinfo=UTC)


async def count(env: GatewayEnv) -> int:
    _, total = await env.gw.store.list_transfers(TransferFilter(limit=1))
    return total


async def until(env: GatewayEnv, target: int, timeout: float = 600) -> float:
    began = time.perf_counter()
    async with asyncio.timeout(timeout):
        while await count(env) < target:  # noqa: ASYNC110 (a row count, not an event)
            await asyncio.sleep(0.01)
    return time.perf_counter() - began


def environment(root: Path, schedules: int, files: int) -> GatewayEnv:
    env = GatewayEnv(root)
    env.clock = ManualClock(T0)
    env.extra["scheduler"] = {"attempts": 0, "max_transfers": 1}
    env.daemon["timezone"] = "UTC"
    env.rule("reports", "send")
    env.rule("inbox", "receive")
    folder = root / "schedules"
    folder.mkdir(parents=True)
    for i in range(schedules):
        body = {
            "name": f"s{i:05d}",
            "cron": "0 2 * * *",
            "transfer": {"rule": "reports", "partner": "share", "file": f"f{i}.csv"},
        }
        (folder / f"s{i:05d}.yaml").write_text(yaml.safe_dump(body))
    feed = env.share / "feed"
    feed.mkdir(parents=True)
    for i in range(files):
        (feed / f"in{i:05d}.csv").write_text("x\n")
    return env


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-schedules-") as tmp:
        root = Path(tmp)
        env = environment(root, args.schedules, 0)
        began = time.perf_counter()
        await env.start()
        started = time.perf_counter() - began
        env.clock.advance(60)
        fired = await until(env, args.schedules)
        await env.stop()
        # A day later: each missed firing is caught up once.
        env.clock = ManualClock(datetime(2024, 6, 4, 12, 0, tzinfo=UTC))
        began = time.perf_counter()
        await env.start()
        caught = await until(env, 2 * args.schedules)
        caught += time.perf_counter() - began
        assert await count(env) == 2 * args.schedules
        await env.stop()

        penv = environment(root / "p", 0, args.files)
        (root / "p" / "pollers").mkdir()
        poller = {"name": "p", "partner": "share", "rule": "inbox"}
        poller |= {"remote_dir": "feed", "interval": 60}
        (root / "p" / "pollers" / "p.yaml").write_text(yaml.safe_dump(poller))
        await penv.start()
        pollers = penv.gw.pollers
        async with asyncio.timeout(60):
            while pollers.passes < 1:  # noqa: ASYNC110 (a counter of the service)
                await asyncio.sleep(0.01)
        penv.clock.advance(60)
        took = await until(penv, args.files)
        penv.clock.advance(60)
        async with asyncio.timeout(600):
            while pollers.passes < 3:  # noqa: ASYNC110 (a counter of the service)
                await asyncio.sleep(0.01)
        again = await count(penv)
        await penv.stop()
    print(f"{'case':44} {'seconds':>8} {'per second':>11}")
    print(f"{'start with ' + str(args.schedules) + ' schedules':44} {started:8.2f}")
    rate = args.schedules / fired
    print(f"{str(args.schedules) + ' firings due at once':44} {fired:8.2f} {rate:11.0f}")
    rate = args.schedules / caught
    print(
        f"{'restart: ' + str(args.schedules) + ' catch-ups (once)':44} {caught:8.2f} {rate:11.0f}"
    )
    rate = args.files / took
    print(
        f"{'poller: ' + str(args.files) + ' files taken in one look':44} {took:8.2f} {rate:11.0f}"
    )
    print(f"{'poller: transfers after a third look':44} {again:8d}")


if __name__ == "__main__":
    asyncio.run(main())
