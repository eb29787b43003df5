#!/usr/bin/env python3
"""Soak: a login rush must neither time out nor stall the transfers' disk I/O.

One `gatewayd serve` (tests/rush.py) with 300 accounts, each with its own argon2 hash
of the default parameters of new hashes (or those of `--argon2 T,M,P`), so that no login
is answered by the credential cache. Each round measures, in the same round so that the
machine's noise hits both alike:

- unloaded: a 64 MiB HTTP upload (curl), three times; the median is the reference;
- loaded: 300 SFTP password logins at once (OpenSSH `sftp` through sshpass, one per
  account), and while they last, the same 64 MiB upload again and again.

A round passes when every login succeeds, the slowest well within the SFTP login
timeout (60 s), and the uploads during the rush keep at least half the unloaded speed
(the median of them; the slowest one is reported too). Rounds are apart by the
credential cache's lifetime (60 s after the last login), so that each rush costs 300
full checks again.

    .venv/bin/python scripts/soak_logins.py --rounds 10

The daemon is started once: loading a configuration checks every account's hash
against the demo passwords (three checks each), which takes minutes for 300 accounts.

Prints one line per round, and a last line of JSON figures for the soak runner; exits 1
when a round failed. Not part of the CI run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from gatewayd.passwords import (  # noqa: E402
    DEFAULT_PARAMETERS,
    Argon2Parameters,
    cores,
    default_workers,
    verify_password,
)
from tests.rush import RUSH_PASSWORD, Login, Rush, Upload, rush_hashes  # noqa: E402

MiB = 1 << 20
CACHE_TTL = 60.0  # gatewayd.pipeline.logins: CredentialCache()'s default lifetime


class Uploads:
    def __init__(self, rush: Rush, size_mib: int) -> None:
        self.rush = rush
        self.source = rush.upload("http", "big.bin", size_mib * MiB)
        self.count = 0

    async def one(self) -> float:
        """One upload of the file; MiB/s (curl's whole run: connection, login, data)."""
        self.count += 1
        src = self.source
        up = Upload("http", f"big-{self.count}.bin", src.local, src.size)
        await self.rush.send(up)
        if not up.ok:
            raise RuntimeError(f"upload failed: {up.said}")
        # Hundreds of 64 MiB uploads per soak: the disk would fill up (HTTP 507).
        await asyncio.to_thread(self.rush.file(up).unlink)
        return src.size / MiB / up.seconds


async def one_round(
    number: int, rush: Rush, uploads: Uploads, args: argparse.Namespace
) -> dict[str, Any]:
    unloaded = [await uploads.one() for _ in range(3)]
    reference = statistics.median(unloaded)
    # What one check costs on this machine now (it varies with the load of others).
    cpu = time.process_time()
    verify_password(rush.rush_hashes[0], RUSH_PASSWORD)
    check_cpu = time.process_time() - cpu

    began = time.monotonic()
    logins = [asyncio.ensure_future(rush.login(f"rush-{i}")) for i in range(args.logins)]
    loaded: list[float] = []
    timeline: list[tuple[float, float]] = []
    while not all(login.done() for login in logins):
        at = time.monotonic() - began
        loaded.append(await uploads.one())
        timeline.append((round(at, 1), round(loaded[-1], 1)))
    rush_seconds = time.monotonic() - began
    results: list[Login] = [login.result() for login in logins]
    if args.verbose:
        print("    uploads (start s, MiB/s):", timeline, flush=True)
        print("    logins (s):", sorted(round(r.seconds, 1) for r in results), flush=True)

    times = sorted(r.seconds for r in results if r.ok)
    failed = [r.said.strip()[-200:] for r in results if not r.ok]
    slowest = max(times) if times else float("inf")
    median_ratio = statistics.median(loaded) / reference if loaded else 0.0
    worst = min(loaded) / reference if loaded else 0.0
    problems = []
    if failed:
        problems.append(f"{len(failed)} logins failed, e.g. {failed[0]!r}")
    if slowest >= args.login_timeout * 0.9:
        problems.append(f"the slowest login took {slowest:.1f} s")
    if median_ratio < 0.5:
        problems.append(f"uploads during the rush kept {median_ratio:.0%} of their speed")
    return {
        "round": number,
        "ok": not problems,
        "problems": problems,
        "check_cpu_s": round(check_cpu, 3),
        # The least a rush can take: every check's CPU spread over the hashing workers.
        "rush_floor_s": round(args.logins * check_cpu / default_workers(), 1),
        "logins_ok": len(times),
        "login_median": round(statistics.median(times), 2) if times else None,
        "login_p95": round(times[int(len(times) * 0.95) - 1], 2) if times else None,
        "login_max": round(slowest, 2),
        "logins_per_second": round(len(times) / rush_seconds, 2),
        "rush_seconds": round(rush_seconds, 2),
        "unloaded_mib_s": round(reference, 1),
        "loaded_mib_s_median": round(statistics.median(loaded), 1) if loaded else None,
        "loaded_mib_s_min": round(min(loaded), 1) if loaded else None,
        "uploads_during_rush": len(loaded),
        "median_ratio": round(median_ratio, 2),
        "worst_ratio": round(worst, 2),
    }


async def main(args: argparse.Namespace) -> int:
    # One account per partner, each with its own hash: every login costs a full check.
    hashes = await asyncio.to_thread(rush_hashes, args.logins, args.argon2)
    results = []
    with tempfile.TemporaryDirectory(prefix="soak-logins-") as scratch:
        passwords = {"nice": args.nice} if args.nice is not None else {}
        rush = Rush(
            Path(scratch),
            login_timeout=args.login_timeout,
            rush_hashes=hashes,
            passwords=passwords,
        )
        uploads = Uploads(rush, args.size_mib)
        started = time.monotonic()
        try:
            await rush.start(timeout=1800)
            print(f"gatewayd ready after {time.monotonic() - started:.0f} s", flush=True)
            for number in range(1, args.rounds + 1):
                if number > 1:
                    await asyncio.sleep(CACHE_TTL + 1)  # every credential forgotten
                result = await one_round(number, rush, uploads, args)
                results.append(result)
                _print_round(result, args)
        finally:
            status, _ = await rush.sigterm()
            await rush.kill_all()
    figures = {
        "soak": "logins",
        "rounds": len(results),
        "failed_rounds": sum(1 for r in results if not r["ok"]) + (status != 0),
        "logins": args.logins,
        "logins_failed": sum(args.logins - r["logins_ok"] for r in results),
        "login_median_s": statistics.median(r["login_median"] or 0 for r in results),
        "login_p95_s": max(r["login_p95"] or 0 for r in results),
        "login_max_s": max(r["login_max"] for r in results),
        "login_timeout_s": args.login_timeout,
        "logins_per_second": statistics.median(r["logins_per_second"] for r in results),
        "check_cpu_s": statistics.median(r["check_cpu_s"] for r in results),
        "cores": cores(),
        "unloaded_mib_s": statistics.median(r["unloaded_mib_s"] for r in results),
        "loaded_mib_s_median": statistics.median(r["loaded_mib_s_median"] or 0 for r in results),
        "loaded_mib_s_min": min(r["loaded_mib_s_min"] or 0 for r in results),
        "median_ratio_min": min(r["median_ratio"] for r in results),
        "worst_ratio": min(r["worst_ratio"] for r in results),
        "clean_stop": status == 0,
    }
    print(json.dumps(figures), flush=True)
    return 0 if figures["failed_rounds"] == 0 else 1


def _print_round(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"round {result['round']}: {'ok' if result['ok'] else 'FAILED'} logins "
        f"{result['logins_ok']}/{args.logins} (median {result['login_median']} s, p95 "
        f"{result['login_p95']} s, max {result['login_max']} s, "
        f"{result['logins_per_second']}/s; one check {result['check_cpu_s']} CPU-s, floor "
        f"{result['rush_floor_s']} s); {args.size_mib} MiB upload "
        f"{result['unloaded_mib_s']} MiB/s unloaded, during the rush median "
        f"{result['loaded_mib_s_median']} ({result['median_ratio']:.0%}), slowest "
        f"{result['loaded_mib_s_min']} ({result['worst_ratio']:.0%}) over "
        f"{result['uploads_during_rush']} uploads",
        flush=True,
    )
    for problem in result["problems"]:
        print(f"    {problem}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--login-timeout", type=float, default=60.0)
    parser.add_argument("--verbose", action="store_true", help="print each upload and login")
    parser.add_argument(
        "--nice", type=int, default=None, help="passwords.nice of the gateway (default: its own)"
    )
    parser.add_argument(
        "--argon2",
        type=_argon2,
        default=DEFAULT_PARAMETERS,
        metavar="T,M,P",
        help="time_cost,memory_cost (KiB),parallelism of the accounts' hashes "
        "(default: those of new hashes, e.g. 3,65536,4 for RFC 9106's low-memory choice)",
    )
    return parser.parse_args()


def _argon2(value: str) -> Argon2Parameters:
    try:
        time_cost, memory_cost, parallelism = (int(part) for part in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected three integers: T,M,P") from None
    return Argon2Parameters(time_cost, memory_cost, parallelism)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
