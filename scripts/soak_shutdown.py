#!/usr/bin/env python3
"""Soak: SIGTERM of a real `gatewayd serve` during a login rush and a wave of uploads.

Each round starts a fresh gateway (tests/rush.py: an SFTP and an HTTP server, a receive
rule whose post task holds each completion for a moment), then at once: 100 SFTP
password logins with a real argon2 hash (OpenSSH `sftp` through sshpass) and 50
uploads (half SFTP with a key, half HTTP with curl, sizes from 64 KiB to 8 MiB, a third
of them slowed down so that the stop finds them in the middle of their data). SIGTERM
comes at a random moment of the rush. Then, per round:

- the stop must be clean (exit status 0, `clean=True`) and leave no row RUNNING;
- every partner told OK must have its file DONE exactly once (the file identical);
- after a restart, every partner told an error resumes (`reput`, or HEAD and a PUT from
  Upload-Offset), and then every upload is DONE exactly once with no `_1` duplicate.

    .venv/bin/python scripts/soak_shutdown.py --rounds 10

Prints one line per round, and a last line of JSON figures for the soak runner; exits 1
when a round failed. Not part of the CI run (a round takes about 30-60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from tests.rush import Rush, Upload  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20


async def one_round(number: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    rush = Rush(root, post_sleep=args.post_sleep, shutdown_timeout=args.shutdown_timeout)
    try:
        return await _round(number, rush, args)
    finally:
        await rush.kill_all()


async def _round(number: int, rush: Rush, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + number)
    uploads: list[Upload] = []
    for i in range(args.uploads):
        protocol = "sftp" if i % 2 == 0 else "http"
        size = rng.randint(64 * KiB, 8 * MiB)
        rate = 400_000 if i % 3 == 0 else 0
        uploads.append(rush.upload(protocol, f"r{number}-{i}.bin", size, rate=rate, seed=i))
    await rush.start()
    began = time.monotonic()
    logins = [asyncio.ensure_future(rush.login()) for _ in range(args.logins)]
    sending = [asyncio.ensure_future(rush.send(up)) for up in uploads]
    await asyncio.sleep(rng.uniform(args.sigterm_after[0], args.sigterm_after[1]))
    sigterm_at = time.monotonic() - began
    status, stopped = await rush.sigterm(timeout=args.shutdown_timeout + 30)
    await asyncio.wait(sending + logins, timeout=300)
    clean = bool(stopped) and json.loads(stopped).get("clean") is True
    stop_seconds = _stop_seconds(rush)
    running = rush.running()
    broken = rush.broken_promises(uploads)
    told_ok = sum(1 for up in uploads if up.ok)
    told_error = [up for up in uploads if not up.ok]
    logged_in = sum(1 for login in logins if login.done() and login.result().ok)
    interrupted = sum(1 for r in rush.rows() if r["status"] == "INTERRUPTED")

    # The partners told an error come back.
    await rush.start()
    again = [Upload(u.protocol, u.name, u.local, u.size, account=u.account) for u in told_error]
    await asyncio.gather(*(rush.send(up, resume=True) for up in again))
    resend_failed = [f"{up.name}: {up.said}" for up in again if not up.ok]
    status_2, stopped_2 = await rush.sigterm(timeout=args.shutdown_timeout + 30)
    unfinished = rush.unfinished(uploads)
    duplicates = rush.duplicates()
    problems = []
    if status != 0 or not clean:
        problems.append(f"stop: status {status}, {stopped.strip()}")
    if running:
        problems.append(f"{len(running)} rows RUNNING after the stop")
    problems += broken + resend_failed + unfinished
    if duplicates:
        problems.append(f"duplicates: {duplicates}")
    if status_2 != 0:
        problems.append(f"second stop: status {status_2}, {stopped_2.strip()}")
    if problems and args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        saved = args.logs / f"round-{number}.log"
        saved.write_text("\n\n".join(d.output for d in rush.daemons))
        problems.append(f"daemon logs: {saved}")
    return {
        "round": number,
        "ok": not problems,
        "problems": problems[:20],
        "sigterm_at": round(sigterm_at, 2),
        "stop_seconds": stop_seconds,
        "running_after_stop": len(running),
        "told_ok": told_ok,
        "told_error": len(told_error),
        "interrupted": interrupted,
        "broken_promises": len(broken),
        "duplicates": len(duplicates),
        "logins_ok": logged_in,
        "logins": args.logins,
    }


def _stop_seconds(rush: Rush) -> float:
    assert rush.daemon is not None
    for line in reversed(rush.daemon.lines):
        if '"gateway stopped"' in line:
            return float(json.loads(line)["seconds"])
    return -1.0


async def main(args: argparse.Namespace) -> int:
    results = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="soak-shutdown-") as scratch:
            result = await one_round(number, Path(scratch), args)
        results.append(result)
        flag = "ok" if result["ok"] else "FAILED"
        print(
            f"round {number}: {flag} sigterm at {result['sigterm_at']} s, stop "
            f"{result['stop_seconds']} s, told ok {result['told_ok']}, told error "
            f"{result['told_error']} (interrupted {result['interrupted']}), RUNNING after "
            f"stop {result['running_after_stop']}, broken promises "
            f"{result['broken_promises']}, duplicates {result['duplicates']}, logins ok "
            f"{result['logins_ok']}/{result['logins']}",
            flush=True,
        )
        for problem in result["problems"]:
            print(f"    {problem}", flush=True)
    stops = [r["stop_seconds"] for r in results]
    figures = {
        "soak": "shutdown",
        "rounds": len(results),
        "failed_rounds": sum(1 for r in results if not r["ok"]),
        "running_after_stop": sum(r["running_after_stop"] for r in results),
        "broken_promises": sum(r["broken_promises"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "told_ok": sum(r["told_ok"] for r in results),
        "told_error": sum(r["told_error"] for r in results),
        "interrupted": sum(r["interrupted"] for r in results),
        "stop_seconds_median": round(statistics.median(stops), 3),
        "stop_seconds_max": round(max(stops), 3),
        "shutdown_timeout": args.shutdown_timeout,
    }
    print(json.dumps(figures), flush=True)
    return 0 if figures["failed_rounds"] == 0 else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--logins", type=int, default=100)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--post-sleep", type=float, default=1.0, help="seconds per completion")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    parser.add_argument(
        "--sigterm-after",
        type=float,
        nargs=2,
        default=(2.0, 10.0),
        metavar=("MIN", "MAX"),
        help="SIGTERM at a random moment in this range of seconds after the rush begins",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--logs", type=Path, default=None, help="keep the daemons' logs of failed rounds here"
    )
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
