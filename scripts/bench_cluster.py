"""Cluster benchmark: aggregate SFTP upload throughput of several nodes on this machine,
and claims per second of due transfers on PostgreSQL against SQLite.

Upload: `--sessions` OpenSSH `sftp` clients at once (default 8), each uploading one
file of `--size-mib` (default 1024), all on 127.0.0.1, to:

- 1 node:   one `gatewayd serve` (every session to its port);
- 2 nodes:  two nodes on one PostgreSQL database and one home (state, data and rules
            folders shared), the sessions split between them: half to each node's own
            port (`ports`), or all to one port both listen on with SO_REUSEPORT
            (`reuseport`, the kernel spreads them) — `--two` picks which (both: each
            is a case);
- OpenSSH:  a private `sshd` with its `sftp-server` (one process per session).

Every gatewayd node is running in every case (the 1-node case leaves the others idle),
so that the cases of a round run back to back. Rounds are interleaved (the order of the
cases rotates); the table gives medians of the aggregate MiB/s (all bytes over the time
from the first start to the last end) and the ratios. The clients run on the same
cores as the servers: with 2 cores, a second node cannot double anything.

Claims: `scripts/bench_claims.py` (SQLite, PostgreSQL, PostgreSQL with 2 nodes), run
with the same number of rounds; its ratio PostgreSQL/SQLite (one node) is reported.

The last line is machine-readable:
    cluster: 2v1 1.35 2vssh 1.02 claims-pg/sqlite 0.8

    scripts/bench cluster [-- --rounds 3 --size-mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "scripts"))

import asyncpg  # noqa: E402
from bench_sftp import free_port, make_data, wait_port  # noqa: E402

MiB = 1 << 20
NODES = ("gw-1", "gw-2")


@dataclass
class Case:
    """Where the sessions of one case go: (port, user, remote folder, local folder) each."""

    name: str
    slots: list[tuple[int, str, str, Path]]
    rates: list[float] = field(default_factory=list)
    # Sessions each node took, per round (gatewayd cases).
    split: list[str] = field(default_factory=list)
    # CPU seconds per GiB uploaded, of the servers and of the clients, per round.
    server_cpu: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)


def _proc_cpu(pid: int, children: bool = False) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), after the name.
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    """CPU seconds of this script's ended children: the sftp clients and their ssh."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ClusterBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = Path(args.workdir) if args.workdir else None
        self.root = Path(tempfile.mkdtemp(prefix="gatewayd-bench-cluster-", dir=base))
        self.key = self.root / "client_key"
        self.data = self.root / "data.bin"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sshd: subprocess.Popen[bytes] | None = None
        self.pg = None
        self.dsn: str | None = None
        self.cases: list[Case] = []

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        a = self.args
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        print(f"scratch folder {self.root}; writing the test data...", flush=True)
        make_data(self.data, a.size_mib * MiB)
        from tests.pg_support import start_server

        self.pg = start_server()
        dsn = self.dsn = self.pg.dsn() + "?sslmode=disable"
        own = [free_port() for _ in NODES]
        shared = free_port()
        for index, node in enumerate(NODES):
            self._node(node, dsn, own[index], shared)
        up = self.root / "gatewayd" / "var" / "data" / "up" / "bench"
        n = a.sessions
        self.cases.append(Case("1 node", [(own[0], "bench", "/up", up)] * n))
        if "ports" in a.two:
            split = [(own[i % 2], "bench", "/up", up) for i in range(n)]
            self.cases.append(Case("2 nodes, own ports", split))
        if "reuseport" in a.two:
            self.cases.append(Case("2 nodes, SO_REUSEPORT", [(shared, "bench", "/up", up)] * n))
        port, user, folder = self._openssh()
        self.cases.append(Case("OpenSSH", [(port, user, str(folder), folder)] * n))

    def _node(self, node: str, dsn: str, port: int, shared: int) -> None:
        home = self.root / "gatewayd"
        (home / "etc").mkdir(parents=True, exist_ok=True)
        (home / "rules").mkdir(exist_ok=True)
        public = (self.key.with_suffix(".pub")).read_text().strip()
        config = home / "etc" / f"{node}.yaml"
        config.write_text(
            textwrap.dedent(f"""\
                daemon: {{home: .., state_dir: var, data_dir: var/data, rules_dir: rules,
                          node: {node}}}
                database: {{backend: postgresql, dsn: "{dsn}"}}
                logging: {{level: {self.args.log_level}}}
                api: {{enabled: true, address: 127.0.0.1, port: {free_port()}}}
                servers:
                  sftp: {{protocol: sftp, address: 127.0.0.1, port: {port}}}
                  shared: {{protocol: sftp, address: 127.0.0.1, port: {shared},
                            reuse_port: true}}
                accounts:
                  bench: {{public_keys: ["{public}"]}}
            """)
        )
        rule = home / "rules" / "up.yaml"
        if not rule.exists():
            rule.write_text("name: up\ndirection: receive\npath: /up\nallow: {accounts: [bench]}\n")
        env = {k: v for k, v in os.environ.items() if k != "GATEWAYD_CONFIG"}
        env["PYTHONPATH"] = str(CHECKOUT)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "serve", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.procs.append(proc)
        wait_port(port, proc, f"gatewayd {node}", timeout=60)

    def _openssh(self) -> tuple[int, str, Path]:
        home = self.root / "openssh"
        up = home / "up"
        up.mkdir(parents=True)
        port = free_port()
        host_key = home / "host_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        (home / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        server = shutil.which("sftp-server") or "/usr/lib/openssh/sftp-server"
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
                MaxStartups 100
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
        self.procs.append(proc)
        self.sshd = proc
        wait_port(port, proc, "sshd")
        user = (
            os.environ.get("USER")
            or subprocess.run(
                ["id", "-un"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        return port, user, up

    # ------------------------------------------------------------------ runs

    def _clients(self, case: Case, tag: str) -> list[subprocess.Popen[str]]:
        started = []
        for index, (port, user, folder, _) in enumerate(case.slots):
            batch = self.root / f"batch-{index}"
            batch.write_text(f"put {self.data} {folder}/{tag}-{index}.bin\n")
            argv = [
                "sftp", "-q", "-b", str(batch), "-P", str(port), "-i", str(self.key),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", f"Ciphers={self.args.cipher}",
                "-o", "Compression=no", f"{user}@127.0.0.1",
            ]  # fmt: skip
            started.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        return started

    def run_case(self, case: Case, round_number: int) -> float:
        for _, _, _, local in case.slots:
            if local.exists():
                for item in local.iterdir():
                    item.unlink()
        subprocess.run(["sync"], check=True)
        tag = f"c{self.cases.index(case)}r{round_number}"
        servers, clients_before = self._server_cpu(case), _children_cpu()
        began = time.perf_counter()
        clients = self._clients(case, tag)
        for client in clients:
            out, _ = client.communicate(timeout=3600)
            if client.returncode != 0:
                raise SystemExit(f"sftp ({case.name}) failed:\n{out}")
        elapsed = time.perf_counter() - began
        gib = len(case.slots) * self.args.size_mib / 1024
        case.server_cpu.append((self._server_cpu(case) - servers) / gib)
        case.client_cpu.append((_children_cpu() - clients_before) / gib)
        landed = {local for _, _, _, local in case.slots}
        count = sum(1 for folder in landed for _ in folder.glob(f"{tag}-*.bin"))
        if count != len(case.slots):
            raise SystemExit(f"{case.name}: {count} files landed of {len(case.slots)}")
        if case.name != "OpenSSH":
            case.split.append(asyncio.run(self._owners(tag)))
        return len(case.slots) * self.args.size_mib / elapsed

    def _server_cpu(self, case: Case) -> float:
        """CPU seconds used so far by the servers of `case`: the gatewayd nodes (every
        thread), or sshd with its ended sessions (which it has waited for)."""
        if case.name == "OpenSSH":
            assert self.sshd is not None
            return _proc_cpu(self.sshd.pid, children=True)
        return sum(_proc_cpu(proc.pid) for proc in self.procs if proc is not self.sshd)

    async def _owners(self, tag: str) -> str:
        """How many of the uploads tagged `tag` each node took, e.g. "5/3"."""
        assert self.dsn is not None
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT owner, count(*) FROM transfers WHERE dest_filename LIKE $1 GROUP BY owner",
                f"{tag}-%",
            )
        finally:
            await conn.close()
        counts = {row[0]: int(row[1]) for row in rows}
        return "/".join(str(counts.get(node, 0)) for node in NODES)

    def run(self) -> None:
        for n in range(self.args.rounds):
            shift = n % len(self.cases)
            for case in self.cases[shift:] + self.cases[:shift]:
                rate = self.run_case(case, n)
                case.rates.append(rate)
                split = f"  sessions per node {case.split[-1]}" if case.split else ""
                cpu = (
                    f"  CPU-s/GiB server {case.server_cpu[-1]:.1f} client {case.client_cpu[-1]:.1f}"
                )
                print(f"round {n + 1} {case.name:22} {rate:8.1f} MiB/s{cpu}{split}", flush=True)

    def claims(self) -> float | None:
        """PostgreSQL's claims/s over SQLite's (one node each), from bench_claims."""
        if self.args.claim_rows <= 0:
            return None
        done = subprocess.run(
            [sys.executable, str(CHECKOUT / "scripts" / "bench_claims.py"),
             "--rounds", str(self.args.rounds), "--rows", str(self.args.claim_rows)],
            capture_output=True, text=True,
        )  # fmt: skip
        print(done.stdout, end="")
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        if done.returncode != 0 or not last.startswith("claims:"):
            print(done.stderr, end="", file=sys.stderr)
            return None
        figures = dict(zip(last.split()[1::2], last.split()[2::2], strict=True))
        return float(figures["postgresql"]) / float(figures["sqlite"])

    # ------------------------------------------------------------------ report

    def report(self, claims: float | None) -> None:
        a = self.args
        medians = {case.name: statistics.median(case.rates) for case in self.cases}
        one, ssh = medians["1 node"], medians["OpenSSH"]
        print()
        print(
            f"SFTP upload, {a.sessions} sessions x {a.size_mib} MiB at once, {a.rounds} "
            f"interleaved rounds, medians; client: OpenSSH sftp, cipher {a.cipher}; "
            f"{os.cpu_count()} cores shared by clients and servers"
        )
        rows = [
            (case.name, f"{medians[case.name]:.1f} MiB/s", f"{medians[case.name] / one:.2f}x",
             f"{medians[case.name] / ssh:.2f}x",
             f"{statistics.median(case.server_cpu):.1f}",
             f"{statistics.median(case.client_cpu):.1f}",
             " ".join(f"{r:.0f}" for r in case.rates), " ".join(case.split))
            for case in self.cases
        ]  # fmt: skip
        header = ("case", "aggregate", "vs 1 node", "vs OpenSSH", "server CPU-s/GiB",
                  "client CPU-s/GiB", "rounds (MiB/s)", "per node")  # fmt: skip
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        two = max(v for k, v in medians.items() if k.startswith("2 nodes"))
        line = f"cluster: 2v1 {two / one:.2f} 2vssh {two / ssh:.2f}"
        for name, value in medians.items():
            if name.startswith("2 nodes"):
                mode = "ports" if "ports" in name else "reuseport"
                line += f" {mode}-2v1 {value / one:.2f}"
        if claims is not None:
            line += f" claims-pg/sqlite {claims:.2f}"
        print(line)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.pg is not None:
            self.pg.stop()
            shutil.rmtree(self.pg.root, ignore_errors=True)
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each upload")
    parser.add_argument("--two", default="ports,reuseport", help="2-node cases: ports,reuseport")
    parser.add_argument("--claim-rows", type=int, default=5000, help="0: no claims case")
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument("--workdir", help="parent of the scratch folder (default: $TMPDIR)")
    parser.add_argument("--log-level", default="warning", help="gatewayd's logging level")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    for tool in ("sftp", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench_cluster: {tool} is missing (Debian: openssh-client)")
    if not Path("/usr/sbin/sshd").exists():
        raise SystemExit("bench_cluster: /usr/sbin/sshd is missing (Debian: openssh-server)")
    bench = ClusterBench(args)
    try:
        bench.prepare()
        bench.run()
        claims = bench.claims()
        bench.report(claims)
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
