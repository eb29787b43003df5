"""SFTP benchmark: gatewayd's SFTP server against OpenSSH's own, with the same client.

The OpenSSH `sftp` client, with the same cipher, talks to (a) `gatewayd serve` and
(b) OpenSSH's `sftp-server` behind a private `sshd`, both on 127.0.0.1 and both writing
real files in a scratch folder on disk:

- up:    one large file uploaded (default 1 GiB);
- down:  the same file downloaded into a local file;
- small: 1,000 files of 4 KiB uploaded in one session.

Rounds are interleaved (a, b, a, b...; which goes first alternates) and medians are
reported with the ratio gatewayd/OpenSSH. gatewayd does more per file than OpenSSH: each
upload is a transfer row, its data fsynced and renamed into place before the close is
acknowledged. Not a test: run it with `scripts/bench sftp`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


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
    times: dict[str, list[float]] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = Path(args.workdir) if args.workdir else None
        self.root = Path(tempfile.mkdtemp(prefix="gatewayd-bench-", dir=base))
        self.key = self.root / "client_key"
        self.big = self.root / "big.bin"
        self.small_dir = self.root / "small"
        self.targets: list[Target] = []

    # ------------------------------------------------------------------ setup

    def prepare(self) -> None:
        a = self.args
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        print(f"scratch folder {self.root}; writing the test data...", flush=True)
        make_data(self.big, a.size_mib * MiB)
        self.small_dir.mkdir()
        for i in range(a.small_files):
            (self.small_dir / f"f{i:05d}.dat").write_bytes(os.urandom(a.small_size))
        self.targets = [self._gatewayd(), self._openssh()]

    def _gatewayd(self) -> Target:
        home = self.root / "gatewayd"
        (home / "etc").mkdir(parents=True)
        (home / "rules").mkdir()
        port, api_port = free_port(), free_port()
        public = (self.key.with_suffix(".pub")).read_text().strip()
        (home / "etc" / "gatewayd.yaml").write_text(
            textwrap.dedent(f"""\
                daemon: {{home: .., state_dir: var, data_dir: var/data, rules_dir: rules}}
                logging: {{level: {self.args.log_level}}}
                api: {{enabled: true, address: 127.0.0.1, port: {api_port}}}
                servers:
                  sftp: {{protocol: sftp, address: 127.0.0.1, port: {port}}}
                accounts:
                  bench: {{public_keys: ["{public}"]}}
            """)
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
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "serve", "-c", str(home / "etc" / "gatewayd.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        wait_port(port, proc, "gatewayd")
        return Target(
            "gatewayd", port, "bench", "/up", "/down/big.bin",
            home / "var" / "data" / "up" / "bench", proc,
        )  # fmt: skip

    def _openssh(self) -> Target:
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
        return Target("OpenSSH", port, user, str(up), str(self.big), up, proc)

    # ------------------------------------------------------------------ runs

    def sftp(self, target: Target, commands: str) -> float:
        batch = self.root / "batch"
        batch.write_text(commands)
        argv = [
            "sftp", "-q", "-b", str(batch), "-P", str(target.port), "-i", str(self.key),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", f"Ciphers={self.args.cipher}",
            "-o", "Compression=no", f"{target.user}@127.0.0.1",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"sftp against {target.name} failed:\n{done.stdout}{done.stderr}")
        return elapsed

    def clean(self, target: Target) -> None:
        if target.local_up_dir.exists():
            for item in target.local_up_dir.iterdir():
                item.unlink()
        for item in self.root.glob("got-*"):
            item.unlink()

    def scenarios(self) -> dict[str, Callable[[Target, int], float]]:
        def up(t: Target, n: int) -> float:
            return self.sftp(t, f"put {self.big} {t.up_dir}/big-{n}.bin\n")

        def down(t: Target, n: int) -> float:
            return self.sftp(t, f"get {t.down_path} {self.root}/got-{n}.bin\n")

        def small(t: Target, n: int) -> float:
            return self.sftp(t, f"put {self.small_dir}/* {t.up_dir}/\n")

        chosen = {"up": up, "down": down, "small": small}
        return {k: v for k, v in chosen.items() if k in self.args.only}

    def run(self) -> None:
        scenarios = self.scenarios()
        for n in range(self.args.rounds):
            order = self.targets if n % 2 == 0 else self.targets[::-1]
            for name, scenario in scenarios.items():
                for target in order:
                    self.clean(target)
                    subprocess.run(["sync"], check=True)
                    elapsed = scenario(target, n)
                    target.times.setdefault(name, []).append(elapsed)
                    print(f"round {n + 1} {name:5} {target.name:8} {elapsed:7.2f} s", flush=True)
        for target in self.targets:
            self.clean(target)

    # ------------------------------------------------------------------ report

    def report(self) -> None:
        a = self.args
        gw, ssh = self.targets
        rows = []
        for name in self.scenarios():
            g, o = statistics.median(gw.times[name]), statistics.median(ssh.times[name])
            if name == "small":
                unit, gv, ov = "files/s", a.small_files / g, a.small_files / o
            else:
                unit, gv, ov = "MiB/s", a.size_mib / g, a.size_mib / o
            label = {
                "up": f"upload {a.size_mib} MiB",
                "down": f"download {a.size_mib} MiB",
                "small": f"{a.small_files} x {a.small_size} B up",
            }[name]
            rows.append((label, f"{gv:.1f} {unit}", f"{ov:.1f} {unit}", f"{gv / ov:.2f}x"))
        print()
        print(
            f"SFTP, {a.rounds} interleaved rounds, medians; client: OpenSSH sftp, cipher {a.cipher}"
        )
        header = ("scenario", "gatewayd", "OpenSSH", "gatewayd/OpenSSH")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for row in [header, tuple("-" * w for w in widths), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))

    def stop(self) -> None:
        for target in self.targets:
            if target.proc is not None and target.proc.poll() is None:
                target.proc.send_signal(signal.SIGTERM)
                try:
                    target.proc.wait(30)
                except subprocess.TimeoutExpired:
                    target.proc.kill()
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024, help="large file size")
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--small-size", type=int, default=4096)
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument("--only", default="up,down,small", help="comma-separated scenarios")
    parser.add_argument("--workdir", help="parent of the scratch folder (default: $TMPDIR)")
    parser.add_argument("--log-level", default="info", help="gatewayd's logging level")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    args.only = args.only.split(",")
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
