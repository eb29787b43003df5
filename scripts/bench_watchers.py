#!/usr/bin/env python3
"""What a local folder watcher's scan costs, by the number of files in its folder.

For each `--files` N, in a real gateway (in process, SQLite, a `local` partner; the
scheduler stopped, so that only the watcher is measured): N files dropped at once;
the scans that take them (the settle time 0), then the steady scan once all N are
recorded ("already sent": one listing, one read of the records, no write). The table
shows, per N, the median over `--rounds` of: the listing alone, a whole steady scan,
and the scan that takes the N files (record + transfers in one commit).

    scripts/bench watchers [-- --files 1000 10000 --rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

import yaml  # noqa: E402

from gatewayd.automation.scan import list_folder  # noqa: E402
from gatewayd.safepath import Beneath  # noqa: E402
from tests.gateway_env import GatewayEnv  # noqa: E402


async def one(n: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = GatewayEnv(Path(tmp))
        env.rule("out", "send")
        (env.root / "watchers").mkdir()
        spec = {
            "name": "w",
            "rule": "out",
            "partner": "share",
            "settle": 0,
            "interval": 3600,
            "batch": n,
        }
        (env.root / "watchers" / "w.yaml").write_text(yaml.safe_dump(spec))
        await env.start()
        # Only the watcher is measured: the transfers it makes wait.
        await env.gw.scheduler.stop()
        try:
            folder = env.folder("out")
            for i in range(n):
                (folder / f"f{i:06}.dat").write_bytes(b"x" * 100)
            began = time.perf_counter()
            result = await env.gw.watchers.fire("w")
            take = time.perf_counter() - began
            assert result.outcomes["taken"] == n, result
            began = time.perf_counter()
            await asyncio.to_thread(
                list_folder, Beneath(folder), recursive=False, include=("*",), exclude=()
            )
            listing = time.perf_counter() - began
            began = time.perf_counter()
            steady = await env.gw.watchers.fire("w")
            scan = time.perf_counter() - began
            assert steady.outcomes["already_sent"] == n, steady
        finally:
            await env.stop()
    return listing, scan, take


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'files':>8} {'listing ms':>11} {'steady scan ms':>15} {'taking scan ms':>15}")
    for n in args.files:
        runs = [await one(n) for _ in range(args.rounds)]
        listing, scan, take = (statistics.median(r[i] for r in runs) * 1000 for i in range(3))
        print(f"{n:>8} {listing:>11.1f} {scan:>15.1f} {take:>15.1f}")


if __name__ == "__main__":
    asyncio.run(main())
