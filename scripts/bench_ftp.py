#!/usr/bin/env python3
"""FTP and FTPS throughput of gatewayd next to vsftpd, measured in the same interleaved run.

Rows: an upload and a download of one big file with curl, over plain FTP and explicit
FTPS (curl --ssl-reqd; the data connections resume the TLS session, as both servers
require), and 1,000 small files uploaded in one lftp session over FTP and over FTPS
(`mput`; see `_lftp_mput` for why not curl). Every transfer
writes a real file. Each round runs every case once on each server, one after the other
(the order flips every round), so that the machine's noise hits them all alike; the
table shows medians, MB/s (files/s for the small files) and the ratio to vsftpd.

gatewayd does more per file than vsftpd: it fsyncs every upload, hashes it, records it
in its database and places it before answering 226. Over plain FTP it also waits a
grace time before completing an upload (a killed client must not pass for a finished
one: four round trips of the control connection, at least 10 ms): "small ftp" shows
that cost. Each round also times a copy of the big file written, hashed and fsynced as
gatewayd writes an upload, no network (bench_http's `durable_copy`): on a disk slower
than the page cache, what a durable upload is up against; printed under the table.

gatewayd runs as a `gatewayd serve` subprocess per event loop asked for (`--loops`).
Needs Debian's vsftpd, curl and lftp, and root (vsftpd logs in a system user of its own,
created for the run and removed after).

    scripts/bench ftp [-- --size-mib 1024 --rounds 3 --small 1000]

The last line is machine-readable, the ratios gatewayd/vsftpd (a figure's name ends in
its event loop when `--loops` names several):
    ftp: upload-ftp 0.91 download-ftp 1.02 ... small-ftp 0.21 small-ftps 0.30
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))
sys.path.insert(0, str(CHECKOUT / "scripts"))

from bench_http import DURABLE_COPY, durable_copy, durable_line, summary  # noqa: E402

from gatewayd.passwords import hash_password  # noqa: E402

PASSWORD = "bench-password"
CASES = (
    "upload ftp", "download ftp", "upload ftps", "download ftps", "small ftp", "small ftps",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} does not listen on port {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Peer:
    """One server under test: where to get the big file, where uploads go and land."""

    name: str
    port: int
    user: str
    download: str  # URL path of the big file
    upload_dir: str  # URL path of the folder uploads go to
    landed: Path  # the local folder uploads land in
    proc: subprocess.Popen[bytes] | None = None

    def url(self, path: str) -> str:
        return f"ftp://127.0.0.1:{self.port}{path}"


class Bench:
    def __init__(self, work: Path, size: int, small: int) -> None:
        self.work, self.size, self.small = work, size, small
        self.cert, self.key = work / "tls.crt", work / "tls.key"
        self.offered = work / "offered"
        self.source = work / "bench.bin"
        self.small_dir = work / "small"
        self.system_user = ""

    def prepare(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        block = os.urandom(1 << 20)
        with self.source.open("wb") as f:
            for i in range(self.size >> 20):
                f.write(block[i % 64 :] + block[: i % 64])
            f.write(block[: self.size & ((1 << 20) - 1)])
        self.offered.mkdir()
        shutil.copyfile(self.source, self.offered / "bench.bin")
        self.small_dir.mkdir()
        for i in range(1, self.small + 1):
            (self.small_dir / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
        (self.work / "downloads").mkdir()

    def vsftpd(self) -> Peer:
        folder = self.work / "vsftpd"
        root = folder / "root"
        (folder / "empty").mkdir(parents=True)
        root.mkdir()
        root.chmod(0o777)
        self.offered.chmod(0o755)
        os.symlink(self.offered / "bench.bin", root / "bench.bin")
        (root / "up").mkdir()
        (root / "up").chmod(0o777)
        self.system_user = f"gwb{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        subprocess.run(["useradd", "--no-create-home", "-d", str(root), "--shell", "/bin/sh",
                        self.system_user], check=True, capture_output=True)  # fmt: skip
        subprocess.run(["chpasswd"], input=f"{self.system_user}:{password}", text=True, check=True)
        peer = Peer("vsftpd", free_port(), f"{self.system_user}:{password}", "/bench.bin",
                    "/up/", root / "up")  # fmt: skip
        pasv = free_port()
        (folder / "vsftpd.conf").write_text(
            "\n".join([
                "listen=YES", "listen_address=127.0.0.1", f"listen_port={peer.port}",
                "background=NO", "anonymous_enable=NO", "local_enable=YES", "write_enable=YES",
                f"local_root={root}", f"secure_chroot_dir={folder / 'empty'}",
                "pasv_address=127.0.0.1", f"pasv_min_port={pasv}", f"pasv_max_port={pasv + 50}",
                "seccomp_sandbox=NO", "pam_service_name=vsftpd", "xferlog_enable=NO",
                "ssl_enable=YES", f"rsa_cert_file={self.cert}", f"rsa_private_key_file={self.key}",
                "force_local_logins_ssl=NO", "force_local_data_ssl=NO", "require_ssl_reuse=YES",
                "ssl_ciphers=HIGH", "max_per_ip=0", "max_clients=0",
            ]) + "\n"
        )  # fmt: skip
        peer.proc = subprocess.Popen(
            ["/usr/sbin/vsftpd", str(folder / "vsftpd.conf")], start_new_session=True
        )
        wait_port(peer.port, peer.proc, "vsftpd")
        return peer

    def gatewayd(self, loop: str) -> Peer:
        home = self.work / f"gatewayd-{loop}"
        (home / "etc").mkdir(parents=True)
        (home / "rules").mkdir()
        landed = home / "in" / "bench"
        peer = Peer(f"gatewayd ({loop})", free_port(), f"bench:{PASSWORD}", "/out/bench.bin",
                    "/in/", landed)  # fmt: skip
        (home / "etc" / "gatewayd.yaml").write_text(
            f"""
daemon: {{home: .., event_loop: {loop}}}
logging: {{level: warning}}
api: {{enabled: false}}
servers:
  ftp:
    protocol: ftp
    address: 127.0.0.1
    port: {peer.port}
    tls: explicit
    cert_file: {self.cert}
    key_file: {self.key}
    max_uploads_per_account: 0
accounts:
  bench: {{password: "{hash_password(PASSWORD)}"}}
"""
        )
        (home / "rules" / "out.yaml").write_text(
            f"name: out\ndirection: send\npath: /out\nfolder: {self.offered}\n"
            "shared_folder: true\nallow: {accounts: [bench]}\n"
        )
        (home / "rules" / "in.yaml").write_text(
            f"name: in\ndirection: receive\npath: /in\nfolder: {home / 'in'}\n"
            "on_collision: overwrite\nallow: {accounts: [bench]}\n"
        )
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONPATH"] = str(CHECKOUT)
        peer.proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "serve", "-c", str(home / "etc" / "gatewayd.yaml")],
            start_new_session=True, env=env,
        )  # fmt: skip
        wait_port(peer.port, peer.proc, peer.name)
        return peer

    def _lftp_mput(self, peer: Peer, scheme: str) -> list[str]:
        """The small files in one lftp session (`mput`). Not curl: curl 7.88 (Debian 12)
        waits a whole second, now and then, between a 229 reply and connecting the data
        connection ("ftp_perform ends with SECONDARY: 0", then its 1 s poll ends), with
        vsftpd as with gatewayd, so that its small-file figures measured curl's stalls."""
        user, password = peer.user.split(":", 1)
        tls = (
            f"set ftp:ssl-force true; set ftp:ssl-protect-data true; set ssl:ca-file {self.cert}; "
            if scheme == "ftps"
            else "set ftp:ssl-allow false; "
        )
        script = (
            f"{tls}set net:max-retries 1; set xfer:clobber true; "
            f"open -u {user},{password} -p {peer.port} 127.0.0.1; "
            f"cd {peer.upload_dir.strip('/')}; lcd {self.small_dir}; mput f*.bin"
        )
        return ["lftp", "-c", script]

    def run(self, peer: Peer, case: str) -> float:
        """Seconds of one case with curl; checks what arrived."""
        kind, scheme = case.split()
        args = ["curl", "-q", "-sS", "--fail", "--noproxy", "*", "-u", peer.user]
        if scheme == "ftps":
            # TLS 1.2 for both: vsftpd 3.0.3 refuses some TLS 1.3 resumptions of curl's
            # (522 "session reuse required"), which would make its rows retries.
            args += ["--ssl-reqd", "--cacert", str(self.cert), "--tls-max", "1.2"]
        if kind == "download":
            target = self.work / "downloads" / "bench.bin"
            args += ["-o", str(target), peer.url(peer.download)]
        elif kind == "upload":
            target = peer.landed / "bench-up.bin"
            args += ["-T", str(self.source), peer.url(peer.upload_dir + "bench-up.bin")]
        else:
            args = self._lftp_mput(peer, scheme)
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"{peer.name} {case}: {args[0]} failed ({done.returncode}): {done.stderr}"
            )
        elapsed = time.perf_counter() - start
        if kind == "small":
            got = len(list(peer.landed.glob("f*.bin")))
            for path in peer.landed.glob("f*.bin"):
                path.unlink()
            if got != self.small:
                raise SystemExit(f"{peer.name} {case}: {got} files instead of {self.small}")
            return elapsed
        size = target.stat().st_size if target.exists() else -1
        target.unlink(missing_ok=True)
        if size != self.size:
            raise SystemExit(f"{peer.name} {case}: {size} bytes instead of {self.size}")
        return elapsed

    def cleanup(self) -> None:
        if self.system_user:
            subprocess.run(["userdel", self.system_user], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small", type=int, default=1000, help="small files per 'small' case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loops", default="uvloop", help="gatewayd event loops (asyncio,uvloop)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated rows")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder's parent")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_ftp: run as root (vsftpd logs in a system user of its own)")
    cases = [c.strip() for c in args.cases.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gatewayd-bench-ftp-", dir=args.workdir))
    work.chmod(0o755)
    bench = Bench(work, args.size_mib << 20, args.small)
    peers: list[Peer] = []
    try:
        bench.prepare()
        peers.append(bench.vsftpd())
        for loop in args.loops.split(","):
            peers.append(bench.gatewayd(loop.strip()))
        times: dict[tuple[str, str], list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            for case in cases:
                for peer in peers if round_number % 2 else reversed(peers):
                    os.sync()  # no case pays for the writeback an earlier one left
                    times.setdefault((case, peer.name), []).append(bench.run(peer, case))
            if any(case.startswith("upload") for case in cases):
                times.setdefault(DURABLE_COPY, []).append(durable_copy(bench.source, work))
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
        report(bench, args.rounds, cases, peers, times)
    finally:
        for peer in peers:
            if peer.proc is not None:
                stop(peer.proc)
        bench.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    bench: Bench,
    rounds: int,
    cases: list[str],
    peers: list[Peer],
    times: dict[tuple[str, str], list[float]],
) -> None:
    mib = bench.size >> 20
    print(f"\nFTP: {mib} MiB with curl, {bench.small} files of 4 KiB with lftp, over 127.0.0.1, "
          f"median of {rounds} interleaved rounds")  # fmt: skip
    header = f"{'case':<16}{'vsftpd':>12}"
    for peer in peers[1:]:
        header += f"{peer.name:>22}{'ratio':>7}"
    print(header + "   (MB/s; files/s for small)")
    for case in cases:
        amount = bench.small if case.startswith("small") else bench.size / 1e6
        reference = amount / statistics.median(times[(case, "vsftpd")])
        line = f"{case:<16}{reference:>12.0f}"
        for peer in peers[1:]:
            rate = amount / statistics.median(times[(case, peer.name)])
            line += f"{rate:>22.0f}{rate / reference:>7.2f}"
        print(line)
    if DURABLE_COPY in times:
        print(durable_line(bench.size, cases, peers, times))
    print(summary(cases, peers, times, bench="ftp"))


if __name__ == "__main__":
    raise SystemExit(main())
