#!/usr/bin/env python3
"""HTTP(S) throughput of gatewayd next to nginx, measured in the same interleaved run.

Rows: a download with curl from gatewayd and from nginx (http and https), and an upload
with curl to gatewayd and to nginx's WebDAV PUT (http and https); every transfer writes
a real file (curl's output, gatewayd's received file, nginx's PUT target). Each round
runs every case once, one after the other, so that the machine's noise hits them all
alike; the table shows medians, MB/s and the ratio to nginx.

gatewayd runs as `gatewayd serve` subprocesses, one per event loop asked for
(`--loops asyncio,uvloop`), side by side. Needs Debian's nginx and curl, and root (nginx
workers run as root here so that they can write the scratch folder).

    scripts/bench http [-- --size-mib 1024 --rounds 5]
    .venv/bin/python scripts/bench_http.py --downloads-to-null --upload-dir /dev/shm

The last form leaves the disk out (curl's downloads go to /dev/null, uploads land in
tmpfs): what the protocol code itself costs, next to nginx.

The last line is machine-readable, the ratios gatewayd/nginx (a figure's name ends in
its event loop when `--loops` names several):
    http: download-http-asyncio 1.05 download-http-uvloop 1.11 ... upload-https-uvloop 0.45
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from gatewayd.passwords import hash_password  # noqa: E402

PASSWORD = "bench-password"
TARGETS = {"download http": 0.8, "download https": 0.7, "upload http": 0.6, "upload https": 0.6}


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


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Peer:
    """One server under test: where to GET the file and where to PUT one."""

    name: str
    http: int
    https: int
    download_path: str
    upload_path: str
    user: str = ""
    received: Path | None = None  # where an upload lands, removed after each round
    proc: subprocess.Popen[bytes] | None = None

    def url(self, scheme: str, path: str) -> str:
        port = self.http if scheme == "http" else self.https
        return f"{scheme}://127.0.0.1:{port}{path}"


@dataclass
class Bench:
    work: Path
    size: int
    to_null: bool = False  # downloads to /dev/null: the protocols' ceiling, not the disk's
    upload_dir: Path | None = None  # where uploads land (default: the scratch folder)
    cert: Path = field(init=False)
    key: Path = field(init=False)
    source: Path = field(init=False)

    def prepare(self) -> None:
        self.cert, self.key = self.work / "tls.crt", self.work / "tls.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.source = self.work / "www" / "bench.bin"
        self.source.parent.mkdir(parents=True)
        block = os.urandom(1 << 20)
        with self.source.open("wb") as f:
            for i in range(self.size >> 20):
                f.write(block[i % 64 :] + block[: i % 64])
            f.write(block[: self.size & ((1 << 20) - 1)])
        if self.upload_dir is not None:
            (self.upload_dir / "nginx-up").mkdir(parents=True, exist_ok=True)
            (self.work / "www" / "up").symlink_to(self.upload_dir / "nginx-up")
        else:
            (self.work / "www" / "up").mkdir()
        (self.work / "downloads").mkdir()

    def nginx(self) -> Peer:
        folder = self.work / "nginx"
        folder.mkdir()
        peer = Peer("nginx", free_port(), free_port(), "/bench.bin", "/up/bench-up.bin")
        peer.received = self.work / "www" / "up" / "bench-up.bin"
        # nginx writes a PUT body to its temp folder, then renames it into place.
        body = self.upload_dir / "nginx-body" if self.upload_dir else folder / "body"
        (folder / "nginx.conf").write_text(
            f"""
worker_processes 1;
user root;
error_log {folder}/error.log warn;
pid {folder}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {body};
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    default_type application/octet-stream;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{peer.http};
        listen 127.0.0.1:{peer.https} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        root {self.work / "www"};
        location / {{ dav_methods PUT; create_full_put_path on; }}
    }}
}}
"""
        )
        peer.proc = subprocess.Popen(
            ["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
            start_new_session=True,
        )
        wait_port(peer.http, peer.proc, "nginx")
        return peer

    def gatewayd(self, loop: str) -> Peer:
        home = self.work / f"gatewayd-{loop}"
        (home / "etc").mkdir(parents=True)
        (home / "rules").mkdir()
        peer = Peer(
            f"gatewayd ({loop})", free_port(), free_port(), "/out/bench.bin",
            "/in/bench-up.bin", user=f"bench:{PASSWORD}",
        )  # fmt: skip
        received = home / "in" if self.upload_dir is None else self.upload_dir / f"in-{loop}"
        peer.received = received / "bench" / "bench-up.bin"
        account = hash_password(PASSWORD)
        (home / "etc" / "gatewayd.yaml").write_text(
            f"""
daemon: {{home: .., event_loop: {loop}}}
logging: {{level: warning}}
api: {{enabled: false}}
servers:
  web: {{protocol: http, address: 127.0.0.1, port: {peer.http}}}
  webs:
    protocol: https
    address: 127.0.0.1
    port: {peer.https}
    cert_file: {self.cert}
    key_file: {self.key}
accounts:
  bench: {{password: "{account}"}}
"""
        )
        (home / "rules" / "out.yaml").write_text(
            f"name: out\ndirection: send\npath: /out\nfolder: {self.work / 'www'}\n"
            "shared_folder: true\nallow: {accounts: [bench]}\n"
        )
        (home / "rules" / "in.yaml").write_text(
            f"name: in\ndirection: receive\npath: /in\nfolder: {received}\n"
            "on_collision: overwrite\nallow: {accounts: [bench]}\n"
        )
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONPATH"] = str(CHECKOUT)
        peer.proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "serve", "-c", str(home / "etc" / "gatewayd.yaml")],
            start_new_session=True, env=env,
        )  # fmt: skip
        wait_port(peer.http, peer.proc, peer.name)
        wait_port(peer.https, peer.proc, peer.name)
        return peer

    def run(self, peer: Peer, case: str) -> float:
        """Seconds of one transfer with curl; checks the size that arrived."""
        direction, scheme = case.split()
        args = ["curl", "-q", "-sS", "--fail", "--noproxy", "*", "--cacert", str(self.cert)]
        if peer.user:
            args += ["-u", peer.user]
        target: Path | None
        if direction == "download":
            target = None if self.to_null else self.work / "downloads" / "bench.bin"
            output = str(target) if target else "/dev/null"
            args += ["-o", output, "-w", "%{size_download}", peer.url(scheme, peer.download_path)]
        else:
            assert peer.received is not None
            target = peer.received
            args += ["-o", "/dev/null", "-w", "%{size_upload}"]
            args += ["-T", str(self.source), peer.url(scheme, peer.upload_path)]
        start = time.perf_counter()
        done = subprocess.run(args, check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        got = int(done.stdout.strip() or 0)
        if target is not None:
            got = min(got, target.stat().st_size)
            target.unlink()
        if got != self.size:
            raise SystemExit(f"{peer.name} {case}: {got} bytes instead of {self.size}")
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loops", default="asyncio,uvloop", help="gatewayd event loops")
    parser.add_argument("--cases", default=",".join(TARGETS), help="comma-separated rows")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder's parent")
    parser.add_argument(
        "--downloads-to-null",
        action="store_true",
        help="curl writes downloads to /dev/null instead of a new file",
    )
    parser.add_argument(
        "--upload-dir",
        type=Path,
        default=None,
        help="where uploads land, for both servers (e.g. /dev/shm to leave the disk out)",
    )
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",")]
    work = Path(tempfile.mkdtemp(prefix="gatewayd-bench-http-", dir=args.workdir))
    bench = Bench(work, args.size_mib << 20, args.downloads_to_null, args.upload_dir)
    peers: list[Peer] = []
    try:
        bench.prepare()
        peers.append(bench.nginx())
        for loop in args.loops.split(","):
            peers.append(bench.gatewayd(loop.strip()))
        times: dict[tuple[str, str], list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            for case in cases:
                for peer in peers if round_number % 2 else reversed(peers):
                    os.sync()  # no case pays for the writeback an earlier one left
                    times.setdefault((case, peer.name), []).append(bench.run(peer, case))
            if any(case.startswith("upload") for case in cases):
                times.setdefault(DURABLE_COPY, []).append(
                    durable_copy(bench.source, bench.upload_dir or work)
                )
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
        report(bench.size, args.rounds, cases, peers, times, args.downloads_to_null)
    finally:
        for peer in peers:
            if peer.proc is not None:
                stop(peer.proc, signal.SIGQUIT if peer.name == "nginx" else signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    size: int,
    rounds: int,
    cases: list[str],
    peers: list[Peer],
    times: dict[tuple[str, str], list[float]],
    to_null: bool,
) -> None:
    mib = size >> 20
    print(f"\nHTTP: {mib} MiB with curl over 127.0.0.1, median of {rounds} interleaved rounds")
    if to_null:
        print("(downloads written to /dev/null)")
    header = f"{'case':<16}{'nginx MB/s':>12}"
    for peer in peers[1:]:
        header += f"{peer.name + ' MB/s':>26}{'ratio':>7}"
    print(header + f"{'target':>8}")
    for case in cases:
        reference = size / statistics.median(times[(case, "nginx")]) / 1e6
        line = f"{case:<16}{reference:>12.0f}"
        for peer in peers[1:]:
            rate = size / statistics.median(times[(case, peer.name)]) / 1e6
            line += f"{rate:>26.0f}{rate / reference:>7.2f}"
        print(line + f"{TARGETS.get(case, 0):>8.1f}")
    if DURABLE_COPY in times:
        print(durable_line(size, cases, peers, times))
    print(summary(cases, peers, times))


# The key of `durable_copy`'s times among a bench's (case, peer) ones.
DURABLE_COPY = ("durable", "copy")


def durable_copy(source: Path, folder: Path) -> float:
    """Seconds of copying `source` (from the page cache) to a new file in `folder` the
    way gatewayd writes an upload, the network aside: 1 MiB writes, each block hashed
    (SHA-256), an fdatasync a second and one at the end. nginx, vsftpd and OpenSSH do
    not fsync uploads, so their upload rows do not pay it; benches print it under their
    tables as what this disk makes durable. A reference, not a bound: the copy is one
    thread, while gatewayd writes and fsyncs in worker threads beside the network, and
    may go faster. (`dd conv=fsync`, used before, syncs only at the end.)"""
    target = folder / "durable-copy.bin"
    hasher = hashlib.sha256()
    os.sync()  # not timed: the writeback the cases before it left is not its own
    start = time.perf_counter()
    with source.open("rb", buffering=0) as src:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            synced, offset = start, 0
            while block := src.read(1 << 20):
                os.pwrite(fd, block, offset)
                hasher.update(block)
                offset += len(block)
                if time.perf_counter() - synced >= 1.0:
                    os.fdatasync(fd)
                    synced = time.perf_counter()
            os.fdatasync(fd)
        finally:
            os.close(fd)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def durable_line(
    size: int, cases: list[str], peers: Sequence[Any], times: dict[tuple[str, str], list[float]]
) -> str:
    """The durable copy's rate (`durable_copy`, median) and what share of it each upload
    row of gatewayd reaches."""
    floor = size / 1e6 / statistics.median(times[DURABLE_COPY])
    reached = [
        f"{case}{'' if len(peers) == 2 else ' ' + peer.name} "
        f"{size / 1e6 / statistics.median(times[(case, peer.name)]) / floor:.2f}"
        for case in cases
        if case.startswith("upload")
        for peer in peers[1:]
    ]
    return (
        f"durable copy (one thread: written, hashed, fsynced each second; no network): "
        f"{floor:.0f} MB/s (median); "
        f"gatewayd's uploads reach {', '.join(reached)} of it"
    )


def summary(
    cases: list[str],
    peers: Sequence[Any],
    times: dict[tuple[str, str], list[float]],
    bench: str = "http",
) -> str:
    """The machine-readable last line: the ratio gatewayd/reference (`peers[0]`) per case
    (the same work each side, so the ratio of the median times inverted); with several
    event loops, each figure's name ends in its loop: `http: download-http-uvloop 1.11 ...`.
    bench_ftp's too (`bench="ftp"`)."""
    figures = []
    for case in cases:
        reference = statistics.median(times[(case, peers[0].name)])
        for peer in peers[1:]:
            key = case.replace(" ", "-")
            if len(peers) > 2:
                key += "-" + peer.name.removeprefix("gatewayd (").removesuffix(")")
            figures.append(f"{key} {reference / statistics.median(times[(case, peer.name)]):.2f}")
    return f"{bench}: " + " ".join(figures)


if __name__ == "__main__":
    raise SystemExit(main())
