"""Real peers for the HTTP tests: certificates, curl, nginx, gateways with HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.gateway_env import GatewayEnv, environ_without_proxy

PASSWORD = "s3cret-pw"
_HASH: str | None = None


def password_hash() -> str:
    """A cheap argon2id hash of PASSWORD (m=8 KiB, t=1): every HTTP request verifies
    the password, and real parameters would make the tests slow for nothing."""
    global _HASH
    if _HASH is None:
        _HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    return _HASH


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    def fingerprint(self) -> str:
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        return cert.fingerprint(hashes.SHA256()).hex()


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_cert(
    folder: Path,
    name: str,
    *,
    common_name: str = "127.0.0.1",
    issuer: CertFiles | None = None,
    ca: bool = False,
    client: bool = False,
) -> CertFiles:
    """A P-256 certificate for 127.0.0.1/localhost: self-signed, or signed by `issuer`."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    if issuer is not None:
        issuer_cert = x509.load_pem_x509_certificate(issuer.cert.read_bytes())
        issuer_key: Any = serialization.load_pem_private_key(issuer.key.read_bytes(), None)
        issuer_name = issuer_cert.subject
    else:
        issuer_key, issuer_name = key, subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
    cert = builder.sign(issuer_key, hashes.SHA256())
    files = CertFiles(folder / f"{name}.crt", folder / f"{name}.key")
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, files.key)
    return files


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
    except TimeoutError:
        raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s") from None


@dataclass
class CurlResult:
    returncode: int
    status: int
    headers: dict[str, str]  # of the last response, names in lower case
    body: bytes  # empty when it went to a file
    stderr: str

    def json(self) -> Any:
        return json.loads(self.body)


async def run_curl(*args: str, output: Path | None = None, timeout: float = 60) -> CurlResult:
    """curl with `args` (no proxy, no ~/.curlrc). The body goes to `output`, or is
    captured; the status and the headers of the last response are parsed."""
    with tempfile.TemporaryDirectory() as scratch:
        body_file = output or Path(scratch) / "body"
        proc = await asyncio.create_subprocess_exec(
            "curl", "-q", "-sS", "--noproxy", "*", "-D", "-", "-o", str(body_file),
            "-w", "HTTP_CODE=%{http_code}\n", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environ_without_proxy(),
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"curl {' '.join(args)} still running after {timeout}s") from None
        body = b""
        if output is None and body_file.exists():
            body = body_file.read_bytes()
    status, headers = 0, {}
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("HTTP/"):
            headers = {}
        elif line.startswith("HTTP_CODE="):
            status = int(line.split("=", 1)[1] or 0)
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return CurlResult(proc.returncode or 0, status, headers, body, stderr.decode(errors="replace"))


class Nginx:
    """A private nginx (Debian's) on a free port: WebDAV PUT into `root`, GET with Range."""

    def __init__(self, folder: Path, *, rate: str = "", listings: bool = False) -> None:
        self.folder = folder
        self.root = folder / "www"
        self.port = free_port()
        self.rate = rate
        # Folders listed as JSON (`autoindex_format json`), files moved with MOVE.
        self.listings = listings
        self.proc: asyncio.subprocess.Process | None = None

    def _config(self) -> str:
        limit = f"limit_rate {self.rate};" if self.rate else ""
        methods = "PUT DELETE MOVE" if self.listings else "PUT DELETE"
        index = "autoindex on; autoindex_format json;" if self.listings else ""
        return f"""
worker_processes 1;
user root;
error_log {self.folder}/error.log warn;
pid {self.folder}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$request_method $uri $status range=$http_range';
    access_log {self.folder}/access.log ranges;
    sendfile on;
    client_body_temp_path {self.folder}/body;
    proxy_temp_path {self.folder}/proxy;
    fastcgi_temp_path {self.folder}/fastcgi;
    uwsgi_temp_path {self.folder}/uwsgi;
    scgi_temp_path {self.folder}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        client_max_body_size 0;
        {limit}
        location / {{
            dav_methods {methods};
            {index}
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
"""

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nginx.conf"
        conf.write_text(self._config())
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = await asyncio.create_subprocess_exec(
            nginx, "-p", str(self.folder), "-c", str(conf), "-g", "daemon off;",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            await wait_port(self.port)
        except AssertionError:
            await self.stop()
            log = (
                (self.folder / "error.log").read_text()
                if (self.folder / "error.log").exists()
                else ""
            )
            raise AssertionError(f"nginx did not start: {log}") from None

    def requests(self) -> list[str]:
        """The access log: `METHOD URI STATUS range=RANGE` per request."""
        log = self.folder / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGQUIT)
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


# ------------------------------------------------------------------ gateways


def http_gateway(
    root: Path,
    *,
    protocol: str = "http",
    certs: CertFiles | None = None,
    port: int = 0,
    **server: Any,
) -> GatewayEnv:
    """A GatewayEnv with an account `alice` (PASSWORD), rules `inbox` (receive) and
    `outbox` (send), and an HTTP(S) server `web`."""
    env = GatewayEnv(root)
    env.accounts["alice"] = {"password": password_hash()}
    env.accounts["bob"] = {"password": password_hash()}
    env.rule("inbox", "receive", allow={"accounts": ["alice"]})
    env.rule("outbox", "send", allow={"accounts": ["alice"]}, shared_folder=True)
    web: dict[str, Any] = {"protocol": protocol, "address": "127.0.0.1", "port": port}
    if certs is not None:
        web.update(cert_file=str(certs.cert), key_file=str(certs.key))
    web.update(server)
    env.extra["servers"] = {"web": web}
    return env
