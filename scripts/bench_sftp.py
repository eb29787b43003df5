"""SFTP benchmark: gatewayd's SFTP server against OpenSSH's own, with the same client.

The OpenSSH `sftp` client, with the same cipher, talks to (a) `gatewayd serve` and
(b) OpenSSH's `sftp-server` behind a private `sshd`, both on 127.0.0.1 and both writing
real files in a scratch folder on disk:

- up:          one large file uploaded (default 1 GiB);
- down:        the same file downloaded into a local file;
- small:       1,000 files of 4 KiB uploaded in one session;
- small-fsync: the same with `put -f`: the client asks for an fsync of every file
               (fsync@openssh.com), which OpenSSH's server then does, as gatewayd
               always does;
- many:        16 `sftp` clients at once, each uploading 100 files of 4 KiB with
               `put -f`: aggregate files/s, all files over the time from the first
               upload's start to the last one's end (the clients read the clock around
               their `put` with a shell escape), where files of concurrent sessions may
               share a commit; `many-wall` counts from the first client's start to the
               last one's end, logins included (OpenSSH execs a server per login);
- rss:         memory per session: 300 SFTP sessions held open and idle (asyncssh
               clients in this process), then 100 of them uploading at once
               (`--active-files` files of `--active-kib` each). gatewayd: the growth
               of the daemon's VmRSS (/proc/PID/status); OpenSSH: the sum of the VmRSS
               of the processes of its sessions (sshd's per-connection processes and
               sftp-server), which counts their shared pages once per process. PSS
               (/proc/PID/smaps_rollup) is shown too: it shares those pages out.
               Idle MiB/session = (idle - before) / idle sessions; active MiB/session
               = idle MiB/session + (peak while active - idle) / active sessions.
               Not run by default (`--only rss`, or `--only all`).

`many` also runs against a second gatewayd on PostgreSQL (`--pg`, the scenarios the
PostgreSQL daemon runs; `--pg ''` for none): a private server started for the run as
tests/pg_support.py does, then restarted durable (fsync, synchronous_commit and
full_page_writes on, unlike the tests' server), so that both stores keep their promise.

Rounds are interleaved (the order of the servers rotates every round) and medians are
reported with the ratio gatewayd/OpenSSH (for rss: lower is better). gatewayd does more
per file than OpenSSH: each upload is a transfer row, its data fsynced and renamed into
place before the close is acknowledged. With `up`, each round also times a copy of the
big file written, hashed and fsynced as gatewayd writes an upload (bench_http's
`durable_copy`; OpenSSH's server does not fsync an upload unless asked): printed under
the table as what this disk makes durable.
Not a test: run it with `scripts/bench sftp`.

The last line is machine-readable, the ratios gatewayd/OpenSSH:
    sftp: up 0.99 down 0.69 small 0.42 small-fsync 0.40 many 1.05 many-pg 0.90 ...
(a figure of the PostgreSQL daemon ends in -pg; rss-idle and rss-active: lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT / "scripts"))

from bench_http import durable_copy  # noqa: E402

MiB = 1 << 20
DEFAULT = "up,down,small,small-fsync,many"
ALL = DEFAULT + ",rss"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on port {port} after {timeout}s")


def make_data(path: Path, size: int) -> None:
    """Incompressible bytes (compression is off anyway), written in 16 MiB pieces."""
    block = os.urandom(16 * MiB)
    with path.open("wb") as f:
        left = size
        while left:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))


# ---------------------------------------------------------------------- memory


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in KiB; (0, 0) once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0, 0

    def field_kib(text: str, name: str) -> int:
        for line in text.splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return 0

    return field_kib(status, "VmRSS"), field_kib(rollup, "Pss")


def descendants(root: int) -> list[int]:
    """Every process below `root` (not `root` itself), from /proc's parent links."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class PeakSampler:
    """Samples a memory figure every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, measure: Callable[[], tuple[int, int]], interval: float = 0.05) -> None:
        self.measure, self.interval = measure, interval
        self.peak = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self.measure()
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss, pss = self.measure()
        self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))


# ---------------------------------------------------------------------- PostgreSQL


def durable_pg_server() -> Any:
    """A private PostgreSQL server (tests/pg_support.py's), restarted with fsync,
    synchronous_commit and full_page_writes at their defaults (on): the tests turn
    them off, which would leave gatewayd's records out of the durability promise."""
    sys.path.insert(0, str(CHECKOUT))
    from tests.pg_support import start_server

    try:
        server = start_server()
    except BaseException as e:  # pytest's skip/fail are BaseExceptions
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        raise SystemExit(f"bench_sftp: no PostgreSQL server ({e}); `--pg ''` runs without") from e
    server.stop()
    options = " ".join(
        (
            f"-p {server.port}",
            f"-k {server.root / 'sockets'}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
        )
    )
    started = server.run(
        str(server.bin / "pg_ctl"), "-D", str(server.data), "-l", str(server.log),
        "-w", "-t", "60", "-o", options, "start", check=False,
    )  # fmt: skip
    if started.returncode != 0:
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        shutil.rmtree(server.root, ignore_errors=True)
        raise SystemExit(f"PostgreSQL did not restart: {started.stderr}\n{log}")
    return server


async def create_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# ---------------------------------------------------------------------- targets


@dataclass
class Target:
    """One SFTP server under test, and where its uploads land / downloads come from."""

    name: str
    port: int
    user: str
    up_dir: str  # remote folder for uploads
    down_path: str  # remote path of the large file
    local_up_dir: Path  # where the uploads land on disk (emptied between rounds)
    proc: subprocess.Popen[bytes] | None = None
    scenarios: tuple[str, ...] = ()  # the scenarios it runs
    suffix: str = ""  # of its figures' names on the machine-readable line
    is_reference: bool = False
    # Per metric (a scenario, or rss-idle, pss-active...), one figure per round.
    results: dict[str, list[float]] = field(default_factory=dict)
    restart: Callable[[], subprocess.Popen[bytes]] | None = None

    def sessions(self) -> int:
        """Sessions the server holds: gatewayd's open sockets (the listeners and the
        API's included: a count to compare before and after); OpenSSH's sftp-servers."""
        assert self.proc is not None
        if self.is_reference:
            names = []
            for pid in descendants(self.proc.pid):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    names.append(Path(f"/proc/{pid}/comm").read_text().strip())
            return names.count("sftp-server")
        sockets = 0
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                sockets += os.readlink(fd).startswith("socket:")
        return sockets

    def memory(self) -> tuple[int, int]:
        """KiB (RSS, PSS) of the server: gatewayd's daemon; OpenSSH's session processes
        (its listening sshd excluded: it does not grow per session)."""
        assert self.proc is not None
        if not self.is_reference:
            return memory_kib(self.proc.pid)
        figures = [memory_kib(pid) for pid in descendants(self.proc.pid)]
        return sum(f[0] for f in figures), sum(f[1] for f in figures)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = Path(args.workdir) if args.workdir else None
        self.root = Path(tempfile.mkdtemp(prefix="gatewayd-bench-", dir=base))
        self.key = self.root / "client_key"
        self.big = self.root / "big.bin"
        self.small_dir = self.root / "small"
        self.many_dir = self.root / "many"
        self.active_file = self.root / "active.bin"
        self.targets: list[Target] = []
        self.floor: list[float] = []  # durable_copy of the big file, once a round
        self.pg: Any = None

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        a = self.args
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        print(f"scratch folder {self.root}; writing the test data...", flush=True)
        make_data(self.big, a.size_mib * MiB if {"up", "down"} & set(a.only) else 0)
        self.small_dir.mkdir()
        for i in range(a.small_files):
            (self.small_dir / f"f{i:05d}.dat").write_bytes(os.urandom(a.small_size))
        for s in range(a.sessions):
            folder = self.many_dir / f"s{s:03d}"
            folder.mkdir(parents=True)
            for i in range(a.files_per_session):
                (folder / f"s{s:03d}-f{i:05d}.dat").write_bytes(os.urandom(a.small_size))
        make_data(self.active_file, a.active_kib * 1024)
        self.targets = [self._gatewayd("gatewayd", None, tuple(a.only), "")]
        pg_runs = tuple(s for s in a.only if s in a.pg)
        if pg_runs:
            self.pg = durable_pg_server()
            admin = self.pg.dsn() + "?sslmode=disable"
            asyncio.run(create_database(admin, "bench_sftp"))
            dsn = self.pg.dsn("bench_sftp") + "?sslmode=disable"
            self.targets.append(self._gatewayd("gatewayd (pg)", dsn, pg_runs, "-pg"))
        self.targets.append(self._openssh(tuple(a.only)))

    def _gatewayd(
        self, name: str, dsn: str | None, scenarios: tuple[str, ...], suffix: str
    ) -> Target:
        home = self.root / ("gatewayd" + suffix)
        (home / "etc").mkdir(parents=True)
        (home / "rules").mkdir()
        port, api_port = free_port(), free_port()
        public = (self.key.with_suffix(".pub")).read_text().strip()
        database = f'database: {{backend: postgresql, dsn: "{dsn}"}}' if dsn else ""
        node = ", node: bench" if dsn else ""
        # No per-account upload limit: the sessions of `many` and `rss` are one account's.
        (home / "etc" / "gatewayd.yaml").write_text(
            textwrap.dedent(f"""\
                daemon: {{home: .., state_dir: var, data_dir: var/data, rules_dir: rules{node}}}
                logging: {{level: {self.args.log_level}}}
                api: {{enabled: true, address: 127.0.0.1, port: {api_port}}}
                servers:
                  sftp: {{protocol: sftp, address: 127.0.0.1, port: {port},
                          max_uploads_per_account: 0}}
                accounts:
                  bench: {{public_keys: ["{public}"]}}
            """)
            + database
            + "\n"
        )
        (home / "rules" / "up.yaml").write_text(
            "name: up\ndirection: receive\npath: /up\nallow: {accounts: [bench]}\n"
        )
        (home / "rules" / "down.yaml").write_text(
            "name: down\ndirection: send\npath: /down\nshared_folder: true\n"
            "allow: {accounts: [bench]}\n"
        )
        down = home / "var" / "data" / "down"
        down.mkdir(parents=True)
        os.link(self.big, down / "big.bin")
        env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
        env["PYTHONPATH"] = str(CHECKOUT)

        config = home / "etc" / "gatewayd.yaml"

        def start() -> subprocess.Popen[bytes]:
            # The console goes nowhere, as in the earlier figures: the log's cost on a disk
            # is not the server's.
            proc = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "serve", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
            try:
                wait_port(port, proc, name, timeout=60)
            except SystemExit as e:
                check = [sys.executable, "-m", "gatewayd", "check-config", "-c", str(config)]
                said = subprocess.run(check, env=env, capture_output=True, text=True)
                raise SystemExit(f"{e}; check-config says:\n{said.stdout}{said.stderr}") from None
            return proc

        return Target(
            name, port, "bench", "/up", "/down/big.bin",
            home / "var" / "data" / "up" / "bench", start(), scenarios, suffix, restart=start,
        )  # fmt: skip

    def _openssh(self, scenarios: tuple[str, ...]) -> Target:
        home = self.root / "openssh"
        up = home / "up"
        up.mkdir(parents=True)
        port = free_port()
        host_key = home / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        (home / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        server = shutil.which("sftp-server") or "/usr/lib/openssh/sftp-server"
        # MaxStartups: the rss case opens its sessions many at a time.
        (home / "sshd_config").write_text(
            textwrap.dedent(f"""\
                Port {port}
                ListenAddress 127.0.0.1
                HostKey {host_key}
                PidFile {home / "sshd.pid"}
                AuthorizedKeysFile {home / "authorized_keys"}
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PubkeyAuthentication yes
                PermitRootLogin prohibit-password
                StrictModes no
                UsePAM no
                MaxStartups 1000
                Subsystem sftp {server}
            """)
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(port, proc, "sshd")
        user = (
            os.environ.get("USER")
            or subprocess.run(
                ["id", "-un"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        return Target(
            "OpenSSH", port, user, str(up), str(self.big), up, proc, scenarios,
            is_reference=True,
        )  # fmt: skip

    # ------------------------------------------------------------------ runs

    def sftp_argv(self, target: Target, batch: Path) -> list[str]:
        return [
            "sftp", "-q", "-b", str(batch), "-P", str(target.port), "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", f"Ciphers={self.args.cipher}",
            "-o", "Compression=no", f"{target.user}@127.0.0.1",
        ]  # fmt: skip

    def sftp(self, target: Target, commands: str) -> float:
        batch = self.root / "batch"
        batch.write_text(commands)
        start = time.perf_counter()
        done = subprocess.run(self.sftp_argv(target, batch), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"sftp against {target.name} failed:\n{done.stdout}{done.stderr}")
        return elapsed

    def many(self, target: Target) -> dict[str, float]:
        """Seconds of the `many` case: `many-wall` from the first client's start to the
        last one's end (logins included: OpenSSH forks and execs a server per login,
        gatewayd does not), `many` from the first upload's start to the last one's end
        (the clients' shell escapes read the clock around their `put`)."""
        a = self.args
        argvs = []
        for s in range(a.sessions):
            batch = self.root / f"batch-{s:03d}"
            batch.write_text(
                f"!echo bench-start $(date +%s.%N)\n"
                f"put -f {self.many_dir / f's{s:03d}'}/* {target.up_dir}/\n"
                f"!echo bench-end $(date +%s.%N)\n"
            )
            argvs.append(self.sftp_argv(target, batch))
        start = time.perf_counter()
        clients = [
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for argv in argvs
        ]
        outputs = [client.communicate(timeout=3600)[0] for client in clients]
        elapsed = time.perf_counter() - start
        marks: dict[str, list[float]] = {"bench-start": [], "bench-end": []}
        for client, out in zip(clients, outputs, strict=True):
            if client.returncode != 0:
                raise SystemExit(f"sftp against {target.name} failed:\n{out}")
            for line in out.splitlines():
                if line.split(" ", 1)[0] in marks:
                    marks[line.split()[0]].append(float(line.split()[1]))
        if any(len(m) != a.sessions for m in marks.values()):
            raise SystemExit(f"{target.name}: the clients' clock marks are missing: {outputs[0]}")
        self.check_landed(target, a.sessions * a.files_per_session)
        return {"many": max(marks["bench-end"]) - min(marks["bench-start"]), "many-wall": elapsed}

    def check_landed(self, target: Target, expected: int) -> None:
        landed = sum(1 for p in target.local_up_dir.iterdir() if not p.name.startswith("."))
        if landed != expected:
            raise SystemExit(f"{target.name}: {landed} files landed instead of {expected}")

    def clean(self, target: Target) -> None:
        if target.local_up_dir.exists():
            for item in target.local_up_dir.iterdir():
                item.unlink()
        for item in self.root.glob("got-*"):
            item.unlink()

    def rss(self, target: Target) -> dict[str, float]:
        """Memory per idle and per active session (see the module's docstring). gatewayd
        is restarted first, so that what earlier rounds left in its heap does not serve
        these sessions."""
        if target.restart is not None:
            assert target.proc is not None
            stop(target.proc)
            target.proc = target.restart()
        return asyncio.run(self._rss(target))

    async def _rss(self, target: Target) -> dict[str, float]:
        import asyncssh

        a = self.args
        opening = asyncio.Semaphore(a.open_at_once)

        async def session() -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
            async with opening:
                conn = await asyncssh.connect(
                    "127.0.0.1", target.port, username=target.user,
                    client_keys=[str(self.key)], known_hosts=None,
                    encryption_algs=[a.cipher], compression_algs=["none"],
                )  # fmt: skip
                return conn, await conn.start_sftp_client()

        async def active(index: int, client: asyncssh.SFTPClient) -> None:
            for n in range(a.active_files):
                remote = f"{target.up_dir}/active-{index:03d}-{n:03d}.bin"
                # The OpenSSH client's window: 64 requests of 32 KiB.
                await client.put(str(self.active_file), remote, block_size=32768, max_requests=64)

        before, held_before = target.memory(), target.sessions()
        sessions = await asyncio.gather(*(session() for _ in range(a.idle_sessions)))
        try:
            idle = await asyncio.to_thread(target.memory)
            held = target.sessions() - held_before
            if held < a.idle_sessions:
                raise SystemExit(f"{target.name} holds {held} sessions of {a.idle_sessions}")
            with PeakSampler(target.memory) as sampler:
                await asyncio.gather(*(active(i, sessions[i][1]) for i in range(a.active_sessions)))
            peak = sampler.peak
        finally:
            for conn, client in sessions:
                client.exit()
                conn.close()
            await asyncio.gather(*(conn.wait_closed() for conn, _ in sessions))
        self.check_landed(target, a.active_sessions * a.active_files)
        figures = {}
        for i, kind in enumerate(("rss", "pss")):
            per_idle = (idle[i] - before[i]) / 1024 / a.idle_sessions
            per_active = per_idle + (peak[i] - idle[i]) / 1024 / max(a.active_sessions, 1)
            figures[f"{kind}-idle"] = per_idle
            figures[f"{kind}-active"] = per_active
        return figures

    def scenarios(self) -> dict[str, Callable[[Target, int], dict[str, float]]]:
        def up(t: Target, n: int) -> dict[str, float]:
            return {"up": self.sftp(t, f"put {self.big} {t.up_dir}/big-{n}.bin\n")}

        def down(t: Target, n: int) -> dict[str, float]:
            return {"down": self.sftp(t, f"get {t.down_path} {self.root}/got-{n}.bin\n")}

        def small(t: Target, n: int) -> dict[str, float]:
            elapsed = self.sftp(t, f"put {self.small_dir}/* {t.up_dir}/\n")
            self.check_landed(t, self.args.small_files)
            return {"small": elapsed}

        def small_fsync(t: Target, n: int) -> dict[str, float]:
            elapsed = self.sftp(t, f"put -f {self.small_dir}/* {t.up_dir}/\n")
            self.check_landed(t, self.args.small_files)
            return {"small-fsync": elapsed}

        chosen = {
            "up": up,
            "down": down,
            "small": small,
            "small-fsync": small_fsync,
            "many": lambda t, n: self.many(t),
            "rss": lambda t, n: self.rss(t),
        }
        return {k: v for k, v in chosen.items() if k in self.args.only}

    def run(self) -> None:
        scenarios = self.scenarios()
        for n in range(self.args.rounds):
            for name, scenario in scenarios.items():
                # The order rotates among the servers of this scenario: each goes first
                # as often as the others.
                runs = [t for t in self.targets if name in t.scenarios]
                shift = n % len(runs)
                for target in runs[shift:] + runs[:shift]:
                    self.clean(target)
                    subprocess.run(["sync"], check=True)
                    figures = scenario(target, n)
                    for metric, value in figures.items():
                        target.results.setdefault(metric, []).append(value)
                    shown = "  ".join(
                        f"{m} {v:.3f} MiB/session"
                        if m[:3] in ("rss", "pss")
                        else (f"{m} " if len(figures) > 1 else "") + f"{v:7.2f} s"
                        for m, v in figures.items()
                    )
                    print(f"round {n + 1} {name:11} {target.name:14} {shown}", flush=True)
                if name == "up":
                    self.floor.append(durable_copy(self.big, self.root))
        for target in self.targets:
            self.clean(target)

    # ------------------------------------------------------------------ report

    def rate(self, metric: str, median: float) -> tuple[float, str]:
        """A metric's median as the table shows it: a rate, or MiB per session."""
        a = self.args
        if metric in ("up", "down"):
            return a.size_mib / median, "MiB/s"
        if metric in ("small", "small-fsync"):
            return a.small_files / median, "files/s"
        if metric in ("many", "many-wall"):
            return a.sessions * a.files_per_session / median, "files/s"
        return median, "MiB/session"

    def label(self, metric: str) -> str:
        a = self.args
        return {
            "up": f"upload {a.size_mib} MiB",
            "down": f"download {a.size_mib} MiB",
            "small": f"{a.small_files} x {a.small_size} B up",
            "small-fsync": f"{a.small_files} x {a.small_size} B up, put -f",
            "many": f"{a.sessions} sessions x {a.files_per_session} x {a.small_size} B, put -f",
            "many-wall": "same, logins included",
            "rss-idle": f"RSS, {a.idle_sessions} idle sessions",
            "rss-active": f"RSS, {a.active_sessions} active",
            "pss-idle": f"PSS, {a.idle_sessions} idle sessions",
            "pss-active": f"PSS, {a.active_sessions} active",
        }[metric]

    def report(self) -> None:
        a = self.args
        reference = next(t for t in self.targets if t.is_reference)
        ours = [t for t in self.targets if not t.is_reference]
        metrics = [m for m in reference.results if any(m in t.results for t in ours)]
        rows = []
        ratios: list[str] = []
        for metric in metrics:
            ref, unit = self.rate(metric, statistics.median(reference.results[metric]))
            cells = [self.label(metric)]
            shown = []
            for t in ours:
                if metric not in t.results:
                    cells.append("-")
                    shown.append("-")
                    continue
                value, _ = self.rate(metric, statistics.median(t.results[metric]))
                cells.append(f"{value:.1f} {unit}" if unit != "MiB/session" else f"{value:.3f}")
                # Memory ratios are small: three decimals.
                digits = 3 if unit == "MiB/session" else 2
                shown.append(f"{value / ref:.{digits}f}x")
                if not metric.startswith("pss"):
                    ratios.append(f"{metric}{t.suffix} {value / ref:.{digits}f}")
            cells.append(f"{ref:.1f} {unit}" if unit != "MiB/session" else f"{ref:.3f}")
            rows.append((*cells, *shown))
        print()
        print(
            f"SFTP, {a.rounds} interleaved rounds, medians; client: OpenSSH sftp, cipher "
            f"{a.cipher}; MiB/session for RSS and PSS (lower is better)"
        )
        header = ("scenario", *(t.name for t in ours), "OpenSSH")
        header += tuple(f"{t.name}/OpenSSH" for t in ours)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if self.floor:
            floor = a.size_mib / statistics.median(self.floor)
            reached = ", ".join(
                f"{t.name} {a.size_mib / statistics.median(t.results['up']) / floor:.2f}"
                for t in ours
                if "up" in t.results
            )
            print(
                f"durable copy of the big file (one thread: written, hashed, fsynced each second) "
                f"{floor:.1f} MiB/s (median; "
                f"OpenSSH's sftp-server does not fsync an upload); uploads reach {reached} of it"
            )
        print("sftp: " + " ".join(ratios))

    def stop(self) -> None:
        for target in self.targets:
            if target.proc is not None:
                stop(target.proc)
        if self.pg is not None:
            self.pg.stop()
            shutil.rmtree(self.pg.root, ignore_errors=True)
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024, help="large file size")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--small-size", type=int, default=4096)
    parser.add_argument("--sessions", type=int, default=16, help="many: clients at once")
    parser.add_argument("--files-per-session", type=int, default=100, help="many: files each")
    parser.add_argument("--idle-sessions", type=int, default=300, help="rss: sessions held")
    parser.add_argument("--active-sessions", type=int, default=100, help="rss: uploading")
    parser.add_argument("--active-files", type=int, default=10, help="rss: files per active")
    parser.add_argument("--active-kib", type=int, default=256, help="rss: size of each file")
    parser.add_argument("--open-at-once", type=int, default=16, help="rss: logins in flight")
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument(
        "--only", default=DEFAULT, help=f"comma-separated scenarios, or all ({ALL})"
    )
    parser.add_argument(
        "--pg", default="many", help="scenarios also run on PostgreSQL ('' for none)"
    )
    parser.add_argument("--workdir", help="parent of the scratch folder (default: $TMPDIR)")
    parser.add_argument("--log-level", default="info", help="gatewayd's logging level")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    args.only = ALL.split(",") if args.only == "all" else args.only.split(",")
    args.pg = [s for s in args.pg.split(",") if s]
    unknown = sorted(set(args.only + args.pg) - set(ALL.split(",")))
    if unknown:
        parser.error(f"unknown scenarios {', '.join(unknown)} (known: {ALL})")
    if args.active_sessions > args.idle_sessions:
        parser.error("--active-sessions are some of the --idle-sessions: not more")
    for tool in ("sftp", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_sftp: {tool} is missing (Debian: openssh-client)")
    if not Path("/usr/sbin/sshd").exists():
        raise SystemExit("bench_sftp: /usr/sbin/sshd is missing (Debian: openssh-server)")
    bench = Bench(args)
    try:
        bench.prepare()
        bench.run()
        bench.report()
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
