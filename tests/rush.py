"""A real `gatewayd serve` under a rush of partners, for the stop and login tests and
the soak scripts (scripts/soak_shutdown.py, scripts/soak_logins.py).

One receive rule `inbox` (its post task may hold a completion for a while), an SFTP
server and an HTTP server; the account `alice` uploads (an SFTP key, a cheap password
over HTTP), the account `rush` (and `rush-0`, `rush-1`... for a rush of distinct
partners) logs in with a password whose hash has real argon2 parameters, each account
its own hash so that the credential cache answers none of them. Partners are real
programs: OpenSSH `sftp` (through sshpass for passwords) and curl. Every upload
remembers what its partner was told, so that the checks can hold the gateway to it:
an OK means a file DONE exactly once, an error means a resume or a re-send that makes
no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayd.passwords import DEFAULT_PARAMETERS, Argon2Parameters, hash_password
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import GatewayEnv, exec_task, make_file
from tests.http_support import PASSWORD, password_hash, run_curl
from tests.sftp_peers import Result, keygen, listening_port, sftp

RUSH_PASSWORD = "rush-hour-pw"
FINAL = ("DONE", "ERROR", "CANCELLED", "PAUSED", "INTERRUPTED")


@dataclass
class Upload:
    """One partner's upload and what its partner was told."""

    protocol: str  # "sftp" or "http"
    name: str
    local: Path
    size: int
    rate: int = 0  # bytes/s the partner is limited to (0: as fast as it goes)
    account: str = "alice"  # `rush`: its password check costs a real argon2 hash
    ok: bool | None = None  # None: not finished
    said: str = ""  # the partner's last words (exit status, HTTP status, output)
    seconds: float = 0.0


@dataclass
class Login:
    ok: bool = False
    seconds: float = 0.0
    said: str = ""


@dataclass
class Rush:
    """The files of one gateway and its daemon, under `root`."""

    root: Path
    post_sleep: float = 0.0
    shutdown_timeout: float = 10.0
    extra_daemon: dict[str, Any] = field(default_factory=dict)
    passwords: dict[str, Any] = field(default_factory=dict)
    login_timeout: float = 60.0
    # Hashes of RUSH_PASSWORD for the accounts rush-0, rush-1... (see `rush_hashes`).
    rush_hashes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = GatewayEnv(self.root)
        self.key = self.root / "keys" / "alice"
        self.env.accounts["alice"] = {
            "password": password_hash(),
            "public_keys": [keygen(self.key)],
        }
        # Real parameters (those of the shipped demo hashes): a login costs what it costs.
        self.env.accounts["rush"] = {"password": hash_password(RUSH_PASSWORD)}
        for i, hashed in enumerate(self.rush_hashes):
            self.env.accounts[f"rush-{i}"] = {"password": hashed}
        self.env.daemon.update(
            shutdown_timeout=self.shutdown_timeout, progress_interval=0.1, **self.extra_daemon
        )
        self.env.extra["logging"] = {"format": "json"}
        self.env.extra["servers"] = {
            "sftp": {
                "protocol": "sftp",
                "port": 0,
                "login_timeout": self.login_timeout,
                "max_uploads_per_account": 0,
            },
            "web": {"protocol": "http", "port": 0, "max_uploads_per_account": 0},
        }
        if self.passwords:
            self.env.extra["passwords"] = self.passwords
        post = [exec_task(f"sleep {self.post_sleep}")] if self.post_sleep else []
        self.env.rule("inbox", "receive", post=post)
        loaded = self.env.load()
        self.db = loaded.paths.database
        self.inbox = loaded.paths.rule_folder(loaded.config.rules["inbox"])
        self.local = self.root / "local"
        self.daemon: DaemonProcess | None = None
        self.daemons: list[DaemonProcess] = []  # every one started, for their logs
        self.sftp_port = self.http_port = 0

    # ------------------------------------------------------------------ the daemon

    async def start(self, timeout: float = 30.0) -> DaemonProcess:
        self.daemon = await DaemonProcess.start(self.env.config_file)
        self.daemons.append(self.daemon)
        await self.daemon.wait_for("gatewayd ready", timeout=timeout)
        self.sftp_port = await listening_port(self.daemon, "sftp")
        self.http_port = await listening_port(self.daemon, "web")
        return self.daemon

    async def kill_all(self) -> None:
        """SIGKILL whatever daemon is still running, with its helpers (its process
        group): what a failed test or round leaves must not go on running."""
        for daemon in self.daemons:
            if daemon.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.proc.pid, signal.SIGKILL)
                await daemon.finish()

    async def sigterm(self, timeout: float = 60.0) -> tuple[int, str]:
        """SIGTERM; the exit status and the `gatewayd stopped` line."""
        assert self.daemon is not None
        status = await self.daemon.stop(signal.SIGTERM, timeout)
        stopped = [line for line in self.daemon.lines if "gatewayd stopped" in line]
        return status, stopped[-1] if stopped else ""

    # ------------------------------------------------------------------ partners

    def upload(
        self,
        protocol: str,
        name: str,
        size: int,
        rate: int = 0,
        seed: int = 1,
        account: str = "alice",
    ) -> Upload:
        local = self.local / name
        make_file(local, size, seed=seed)
        return Upload(protocol, name, local, size, rate, account)

    async def send(self, up: Upload, *, resume: bool = False) -> Upload:
        """Run the partner's upload to its end and record what it was told. `resume`:
        continue what the gateway holds (OpenSSH `reput`; HTTP: HEAD, then a PUT from
        its Upload-Offset), as a partner does after an error."""
        started = time.monotonic()
        if up.protocol == "sftp":
            options = ("-l", str(max(8, up.rate * 8 // 1000))) if up.rate else ()
            result = await self._sftp_put(up, "reput" if resume else "put", options)
            if resume and result.returncode != 0:
                # Nothing held ("No such file"), or all of it held but never closed
                # ("same size or larger": reput sends nothing): the partner sends it again.
                result = await self._sftp_put(up, "put", options)
            up.ok, up.said = result.returncode == 0, result.output.strip()[-300:]
        else:
            url = f"http://127.0.0.1:{self.http_port}/inbox/{up.name}"
            password = PASSWORD if up.account == "alice" else RUSH_PASSWORD
            credentials = f"{up.account}:{password}"
            args = ["-u", credentials, "-T", str(up.local)]
            if resume:
                head = await run_curl("-u", credentials, "-I", url)
                offset = head.headers.get("upload-offset")
                # All of it held but never completed: nothing to resume, send it again.
                if offset is not None and 0 < int(offset) < up.size:
                    args += ["-C", offset]
            if up.rate:
                args += ["--limit-rate", str(up.rate)]
            answer = await run_curl(*args, url, timeout=600)
            up.ok = answer.status == 201
            up.said = f"curl {answer.returncode} HTTP {answer.status} {answer.stderr.strip()}"
        up.seconds = time.monotonic() - started
        return up

    async def _sftp_put(self, up: Upload, command: str, options: tuple[str, ...]) -> Result:
        return await sftp(
            self.sftp_port,
            "alice",
            [f"{command} {up.local} /inbox/{up.name}"],
            key=self.key,
            options=options,
            timeout=600,
        )

    async def login(self, account: str = "rush") -> Login:
        """One password login over SFTP (`pwd`); how long it took."""
        started = time.monotonic()
        result = await sftp(
            self.sftp_port,
            account,
            ["pwd"],
            password=RUSH_PASSWORD,
            timeout=self.login_timeout + 60,
        )
        return Login(result.returncode == 0, time.monotonic() - started, result.output[-300:])

    async def wait_connections(self, port: int, count: int, timeout: float = 60.0) -> None:
        """Until at least `count` TCP connections to our `port` are established (the
        kernel's table: partners that reached the daemon, whatever it does with them)."""
        try:
            async with asyncio.timeout(timeout):
                while established(port) < count:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(
                f"{established(port)} connections to port {port}, not {count}"
            ) from None

    # ------------------------------------------------------------------ the rows

    def rows(self) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY id")]

    def rows_of(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.rows() if r["src_filename"] == name]

    async def wait_rows(self, check: Any, what: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll the daemon's database (another process: its commits are the events)."""
        try:
            async with asyncio.timeout(timeout):
                while not check(rows := self.rows()):
                    await asyncio.sleep(0.02)
                return rows
        except TimeoutError:
            summary = Counter((r["status"], r["step"]) for r in self.rows())
            output = self.daemon.output[-4000:] if self.daemon else ""
            raise AssertionError(f"never {what}: {summary}\n{output}") from None

    def running(self) -> list[dict[str, Any]]:
        return [r for r in self.rows() if r["status"] == "RUNNING"]

    # ------------------------------------------------------------------ the checks

    def file(self, up: Upload) -> Path:
        return self.inbox / up.account / up.name

    def duplicates(self) -> list[str]:
        """Files of the folders that are a second copy of an upload (`name_1.bin`)."""
        found = []
        for account in ("alice", "rush"):
            folder = self.inbox / account
            names = sorted(os.listdir(folder)) if folder.exists() else []
            found += [f"{account}/{n}" for n in names if "_1" in n or n.endswith(".part")]
        return found

    def broken_promises(self, uploads: list[Upload]) -> list[str]:
        """Uploads whose partner was told OK but whose file is not DONE exactly once."""
        found = []
        for up in uploads:
            if not up.ok:
                continue
            done = [r for r in self.rows_of(up.name) if r["status"] == "DONE"]
            path = self.file(up)
            if len(done) != 1:
                found.append(f"{up.name}: told OK, {len(done)} DONE rows")
            elif not path.exists() or path.read_bytes() != up.local.read_bytes():
                found.append(f"{up.name}: told OK, file missing or different")
        return found

    def unfinished(self, uploads: list[Upload]) -> list[str]:
        """After the partners resumed: every upload DONE once, byte-identical."""
        found = []
        for up in uploads:
            done = [r for r in self.rows_of(up.name) if r["status"] == "DONE"]
            path = self.file(up)
            if len(done) != 1:
                states = [(r["status"], r["error_msg"]) for r in self.rows_of(up.name)]
                found.append(f"{up.name} ({up.protocol}): {states}; partner: {up.said}")
            elif not path.exists() or path.read_bytes() != up.local.read_bytes():
                found.append(f"{up.name}: file missing or different")
        return found


def established(port: int) -> int:
    """Established TCP connections whose local end is 127.0.0.1:`port` (/proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(
            1 for line in table if (fields := line.split())[1] == wanted and fields[3] == "01"
        )


def rush_hashes(count: int, params: Argon2Parameters = DEFAULT_PARAMETERS) -> list[str]:
    """`count` hashes of RUSH_PASSWORD with `params` (the default ones of new hashes
    unless told; different salts), made on every core."""
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor() as pool:
        return list(pool.map(hash_password, [RUSH_PASSWORD] * count, [params] * count))
