"""Crash soak: real `gatewayd serve` daemons killed with -9 (SIGKILL of the process
group) outside DATA and in the middle of a gateway-to-gateway send, round after round.

Cases (each round in a fresh folder, the daemons, peers and clients all real):

- post-tasks-sftp, post-tasks-http: a partner uploads with OpenSSH `sftp` / curl; the
  daemon is killed while a post task runs (an EXEC that waits the first time), then
  restarted: the transfer must end DONE on its own, the interrupted task run again,
  every other post task once (the archive COPY after it: one file, no temp file left).
- post-tasks-random: as post-tasks-sftp, but the kill comes at a random moment of POST
  TASKS (chain: COPY of 16 MiB to an archive folder, then an EXEC), 0-150 ms after the row
  shows the step; it measures the windows a fixed kill point cannot reach.
- after-place-sftp, after-place-http: the daemon kills itself (crash point
  `after-place`) between placing the received file and committing it; restarted, the
  transfer ends DONE with the file's size and SHA-256 right, its post task run once.
- copy-published: the daemon kills itself (crash point `task-published`) after a post
  COPY published its file, before the row says the task is done: the rerun of the COPY
  takes its own copy for done (the transfer ends DONE, one archived file).
- gw-send-part, gw-send-final: gateway A (a daemon) sends 10 MiB at 4 MiB/s over SFTP
  to gateway B; A is killed at a random point of DATA (10-80 %), then restarted: both
  end DONE, B holding the file byte-identical under its own name, no `_1` (A's partner
  with `.part` names, and with `upload_to_final_name: true`).

A failed round keeps its folder (printed) for inspection. The last line is JSON:
{"soak": "crash", "passes", "failures", "seconds", "cases": {case: {"rounds", "passes",
"failures", "median_s", "max_s", "errors"}}}. Run it with `scripts/soak crash`
(`-- --rounds 20 --cases post-tasks-sftp,gw-send-part`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from gatewayd import crashpoints  # noqa: E402
from gatewayd.model import Status, Transfer  # noqa: E402
from gatewayd.store.base import TransferFilter  # noqa: E402
from tests.crash_support import (  # noqa: E402
    all_rows,
    died_by_itself,
    end_sleeper,
    hidden_files,
    kill_9,
    start_daemon,
    wait_file,
    wait_new_row,
    window_task,
)
from tests.daemon_proc import DaemonProcess, read_row, wait_row  # noqa: E402
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task  # noqa: E402
from tests.http_support import PASSWORD, password_hash, run_curl  # noqa: E402
from tests.sftp_peers import keygen, listening_port, sftp  # noqa: E402

MiB = 1 << 20


class RoundFailed(Exception):
    """What went wrong in a round (one line)."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise RoundFailed(what)


# ------------------------------------------------------------------ a receiving gateway


class Receiver:
    """Gateway receiving uploads of `acme` into rule `inbox` over sftp or http."""

    def __init__(self, root: Path, protocol: str, post: list[dict[str, Any]]) -> None:
        self.protocol = protocol
        self.env = env = GatewayEnv(root)
        env.extra["logging"] = {"format": "json"}
        self.key = root / "keys" / "acme"
        if protocol == "sftp":
            env.accounts["acme"] = {"public_keys": [keygen(self.key)]}
            env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
        else:
            env.accounts["acme"] = {"password": password_hash()}
            env.extra["servers"] = {"web": {"protocol": "http", "address": "127.0.0.1", "port": 0}}
        env.rule("inbox", "receive", post=post)
        loaded = env.load()
        self.db = loaded.paths.database
        self.inbox = loaded.paths.rule_folder(loaded.config.rules["inbox"]) / "acme"
        self.tmp = loaded.paths.rule_tmp_folder(loaded.config.rules["inbox"])

    async def upload(self, daemon: DaemonProcess, local: Path, name: str) -> bool:
        if self.protocol == "sftp":
            port = await listening_port(daemon, "sftp")
            result = await sftp(port, "acme", [f"put {local} /inbox/{name}"], key=self.key)
            return result.returncode == 0
        port = await listening_port(daemon, "web")
        url = f"http://127.0.0.1:{port}/inbox/{name}"
        answer = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(local), url)
        return answer.returncode == 0 and answer.status == 201

    async def restart_until_end(self) -> dict[str, Any]:
        daemon = await start_daemon(self.env.config_file)
        try:
            return await wait_row(
                self.db, 1, lambda r: r["status"] in ("DONE", "ERROR"), "ended", daemon
            )
        finally:
            code = await daemon.stop()
            check(code == 0, f"the restarted daemon exited with {code}")

    def check_received(self, row: dict[str, Any], data: bytes) -> None:
        check(row["status"] == "DONE", f"ended {row['status']}: {row['error_msg']}")
        check(row["sha256"] == hashlib.sha256(data).hexdigest(), "SHA-256 of the row differs")
        names = sorted(p.name for p in self.inbox.iterdir())
        check(names == ["order.bin"], f"inbox holds {names}")
        check((self.inbox / "order.bin").read_bytes() == data, "received file differs")
        check(list(self.tmp.iterdir()) == [], "a temp file of the upload is left")
        check(len(all_rows(self.db)) == 1, "more than one transfer row")


async def post_tasks(root: Path, protocol: str) -> None:
    out, archive = root / "out", root / "archive"
    post = [
        window_task(out),
        {"type": "COPY", "args": {"path": str(archive)}},
        trace_task(out, "post"),
    ]
    r = Receiver(root, protocol, post)
    data = make_file(root / "local" / "order.bin", 2 * MiB + 3, seed=random.randrange(1 << 30))
    first = await start_daemon(r.env.config_file)
    client = None
    try:
        await first.wait_for("gatewayd ready")
        client = asyncio.ensure_future(r.upload(first, root / "local" / "order.bin", "order.bin"))
        await wait_file(out / "window.pid", "the window task", first)
    finally:
        await kill_9(first)
        end_sleeper(out)
        if client is not None:
            await client
    at_kill = read_row(r.db, 1)
    check(at_kill["step"] == "POST TASKS", f"killed at {at_kill['step']}, not POST TASKS")
    row = await r.restart_until_end()
    r.check_received(row, data)
    trace = lines(out / "trace")
    expected = ["window order.bin", "window order.bin", "post order.bin"]
    check(trace == expected, f"post tasks ran as {trace}")
    archived = sorted(p.name for p in archive.iterdir())
    check(archived == ["order.bin"], f"archive holds {archived}")
    check((archive / "order.bin").read_bytes() == data, "archived copy differs")


async def post_tasks_random(root: Path) -> str:
    """Returns where the kill landed (status, step, task number of the row)."""
    out, archive = root / "out", root / "archive"
    post = [{"type": "COPY", "args": {"path": str(archive)}}, trace_task(out, "post")]
    r = Receiver(root, "sftp", post)
    data = make_file(root / "local" / "order.bin", 16 * MiB, seed=random.randrange(1 << 30))
    first = await start_daemon(r.env.config_file)
    client = None
    try:
        await first.wait_for("gatewayd ready")
        client = asyncio.ensure_future(r.upload(first, root / "local" / "order.bin", "order.bin"))
        await wait_new_row(r.db, first)
        await wait_row(
            r.db, 1, lambda t: t["step"] in ("POST TASKS", "NONE"), "reached POST TASKS", first
        )
        await asyncio.sleep(random.uniform(0, 0.15))
    finally:
        await kill_9(first)
        if client is not None:
            await client
    at_kill = read_row(r.db, 1)
    landed = f"{at_kill['status']} {at_kill['step']} #{at_kill['task_number']}"
    if archive.exists() and at_kill["status"] != "DONE":
        # What the COPY had done: its temp file written, or its copy published.
        landed += " temp" * bool(hidden_files(archive))
        landed += " copied" * (archive / "order.bin").exists()
    if at_kill["status"] == "DONE":
        return landed  # the kill came too late: nothing to resume
    row = await r.restart_until_end()
    r.check_received(row, data)
    # The task the kill interrupted runs again (at least once); every other task once.
    runs = ["post order.bin"]
    allowed = [runs, runs * 2] if at_kill["task_number"] == 1 else [runs]
    check(lines(out / "trace") in allowed, f"trace {lines(out / 'trace')}, killed at {landed}")
    archived = sorted(p.name for p in archive.iterdir())
    check(archived == ["order.bin"], f"archive holds {archived} (hidden: {hidden_files(archive)})")
    check(hidden_files(archive) == [], f"archive keeps {hidden_files(archive)}")
    return landed


async def after_place(root: Path, protocol: str) -> None:
    out = root / "out"
    r = Receiver(root, protocol, [trace_task(out, "post")])
    data = make_file(root / "local" / "order.bin", 3 * MiB + 7, seed=random.randrange(1 << 30))
    first = await start_daemon(r.env.config_file, crash_at=crashpoints.AFTER_PLACE)
    try:
        await first.wait_for("gatewayd ready")
        client = asyncio.ensure_future(r.upload(first, root / "local" / "order.bin", "order.bin"))
        await died_by_itself(first)
        await client
    finally:
        await kill_9(first)
    at_crash = read_row(r.db, 1)
    check(at_crash["step"] == "DATA", f"crashed at {at_crash['step']}")
    row = await r.restart_until_end()
    r.check_received(row, data)
    check(row["filesize"] == len(data), f"filesize {row['filesize']}")
    check(lines(out / "trace") == ["post order.bin"], f"trace {lines(out / 'trace')}")


async def copy_published(root: Path) -> None:
    """Crash point `task-published`: the COPY's file has its name, the row does not say
    the task is done; the rerun takes its own copy for done."""
    out, archive = root / "out", root / "archive"
    post = [{"type": "COPY", "args": {"path": str(archive)}}, trace_task(out, "post")]
    r = Receiver(root, "http", post)
    data = make_file(root / "local" / "order.bin", 2 * MiB, seed=random.randrange(1 << 30))
    first = await start_daemon(r.env.config_file, crash_at=crashpoints.TASK_PUBLISHED)
    try:
        await first.wait_for("gatewayd ready")
        client = asyncio.ensure_future(r.upload(first, root / "local" / "order.bin", "order.bin"))
        await died_by_itself(first)
        await client
    finally:
        await kill_9(first)
    row = await r.restart_until_end()
    r.check_received(row, data)
    check(sorted(p.name for p in archive.iterdir()) == ["order.bin"], "archive")
    check(lines(out / "trace") == ["post order.bin"], f"trace {lines(out / 'trace')}")


# ------------------------------------------------------------------ gateway to gateway


async def gw_send(root: Path, final_name: bool) -> None:
    b = GatewayEnv(root / "b")
    key = root / "keys" / "gwa"
    b.accounts["gwa"] = {"public_keys": [keygen(key)]}
    b.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    b.daemon["progress_interval"] = 0.1
    b.rule("in", "receive", post=[trace_task(b.out, "B got")])
    await b.start()
    try:
        host_key = (b.root / "var" / "sftp" / "sftp" / "ssh_host_ed25519_key.pub").read_text()
        a = GatewayEnv(root / "a")
        a.daemon["progress_interval"] = 0.2
        a.extra["logging"] = {"format": "json"}
        a.partners["b"] = {
            "protocol": "sftp", "address": "127.0.0.1", "port": b.gw.servers["sftp"].bound_port,
            "login": "gwa", "private_key": str(key), "host_keys": [host_key.strip()],
            "remote_dir": "/in", "max_rate": 4 * MiB, "sync_interval": 0.2,
            "upload_to_final_name": final_name,
        }  # fmt: skip
        a.rule("out", "send", post=[trace_task(a.out, "A sent")])
        loaded = a.load()
        folder = loaded.paths.rule_folder(loaded.config.rules["out"])
        data = make_file(folder / "big.bin", 10 * MiB, seed=random.randrange(1 << 30))
        sent = await a.plan({"rule": "out", "partner": "b", "file": "big.bin"})
        assert sent.id is not None
        db = loaded.paths.database
        cut_at = int(len(data) * random.uniform(0.1, 0.8))

        first = await start_daemon(a.config_file)
        try:
            await first.wait_for("gatewayd ready")
            await wait_row(db, sent.id, lambda r: r["progress"] >= cut_at, "made progress", first)
        finally:
            await kill_9(first)

        async def b_settled() -> list[Transfer]:
            """B's rows once its last one is no longer running (polled: B's commits
            are the events)."""
            async with asyncio.timeout(30):
                while True:
                    found, _ = await b.gw.store.list_transfers(TransferFilter(sort="id"))
                    if found and found[-1].status != Status.RUNNING:
                        return found
                    await asyncio.sleep(0.02)

        cut = (await b_settled())[-1]
        second = await start_daemon(a.config_file)
        try:
            done = await wait_row(
                db, sent.id, lambda r: r["status"] in ("DONE", "ERROR"), "ended", second
            )
        finally:
            code = await second.stop()
        check(code == 0, f"the restarted sender exited with {code}")
        check(done["status"] == "DONE", f"sender ended {done['status']}: {done['error_msg']}")
        rows = await b_settled()
        check(len(rows) == 1 and rows[0].id == cut.id, f"B has {len(rows)} transfers")
        check(rows[0].status == Status.DONE, f"B ended {rows[0].status}: {rows[0].error_msg}")
        landed = b.folder("in") / "gwa"
        names = sorted(p.name for p in landed.iterdir())
        check(names == ["big.bin"], f"B holds {names}")
        check((landed / "big.bin").read_bytes() == data, "B's file differs")
        check(rows[0].sha256 == done["sha256"] == hashlib.sha256(data).hexdigest(), "SHA-256")
        check(lines(b.out / "trace") == ["B got big.bin"], "B's post tasks")
        check(lines(a.out / "trace") == ["A sent big.bin"], "A's post tasks")
    finally:
        await b.stop()


# ------------------------------------------------------------------ the runner

# A case raises RoundFailed (or AssertionError) for a failed round; it may return a note
# (where the kill landed) that the figures count.
CASES: dict[str, Callable[[Path], Awaitable[str | None]]] = {
    "post-tasks-sftp": lambda root: post_tasks(root, "sftp"),
    "post-tasks-http": lambda root: post_tasks(root, "http"),
    "post-tasks-random": post_tasks_random,
    "after-place-sftp": lambda root: after_place(root, "sftp"),
    "after-place-http": lambda root: after_place(root, "http"),
    "copy-published": copy_published,
    "gw-send-part": lambda root: gw_send(root, final_name=False),
    "gw-send-final": lambda root: gw_send(root, final_name=True),
}


@dataclass
class Figures:
    durations: list[float] = field(default_factory=list)
    passes: int = 0
    errors: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        extra = {"landed": self.notes} if self.notes else {}
        return {
            "rounds": len(self.durations),
            "passes": self.passes,
            "failures": len(self.durations) - self.passes,
            "median_s": round(statistics.median(self.durations), 2) if self.durations else 0,
            "max_s": round(max(self.durations), 2) if self.durations else 0,
            "errors": self.errors,
            **extra,
        }


async def one_round(case: str) -> tuple[bool, float, str, str | None]:
    root = Path(tempfile.mkdtemp(prefix=f"gatewayd-soak-{case}-"))
    started = time.monotonic()
    try:
        async with asyncio.timeout(180):
            note = await CASES[case](root)
    except (RoundFailed, AssertionError, TimeoutError) as exc:
        first_line = (str(exc) or repr(exc)).splitlines()[0][:300]
        return False, time.monotonic() - started, f"{first_line} (kept in {root})", None
    shutil.rmtree(root, ignore_errors=True)
    return True, time.monotonic() - started, "", note


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    for command in ("sftp", "curl", "ssh-keygen"):
        if shutil.which(command) is None:
            print(f"soak_crash: {command} is not installed (scripts/test installs it)")
            return 2
    # Gateway B runs in this process: its log lines would drown the rounds' verdicts.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    random.seed(seed)
    print(f"soak_crash: {args.rounds} rounds of {', '.join(cases)} (seed {seed})", flush=True)
    figures = {case: Figures() for case in cases}
    started = time.monotonic()
    for case in cases:
        for number in range(1, args.rounds + 1):
            ok, seconds, error, note = await one_round(case)
            figures[case].durations.append(seconds)
            if note is not None:
                figures[case].notes[note] = figures[case].notes.get(note, 0) + 1
            if ok:
                figures[case].passes += 1
            else:
                figures[case].errors.append(error)
            verdict = ("ok" + (f" ({note})" if note else "")) if ok else f"FAILED: {error}"
            print(f"{case} {number}/{args.rounds}: {verdict} ({seconds:.2f} s)", flush=True)
    total = {case: f.summary() for case, f in figures.items()}
    for case, f in total.items():
        print(
            f"{case:18} rounds {f['rounds']:3}  passes {f['passes']:3}  "
            f"median {f['median_s']:6.2f} s  max {f['max_s']:6.2f} s"
        )
    passes = sum(f["passes"] for f in total.values())
    failures = sum(f["failures"] for f in total.values())
    result = {
        "soak": "crash",
        "seed": seed,
        "passes": passes,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 1),
        "cases": total,
    }
    print(json.dumps(result), flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
