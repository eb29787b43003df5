"""Real peers for the FTP tests: gateways with FTP servers, curl, lftp, Python's ftplib,
and a private vsftpd."""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gateway_env import GatewayEnv, environ_without_proxy
from tests.http_support import PASSWORD, CertFiles, free_port, make_cert, password_hash, wait_port

__all__ = [
    "PASSWORD",
    "CertFiles",
    "Vsftpd",
    "curl",
    "free_port",
    "ftp_gateway",
    "ftplib_client",
    "lftp",
    "make_cert",
]


def ftp_gateway(
    root: Path,
    *,
    tls: str = "none",
    certs: CertFiles | None = None,
    port: int = 0,
    **server: Any,
) -> GatewayEnv:
    """A GatewayEnv with accounts `alice` and `bob` (PASSWORD), rules `inbox` (receive,
    alice) and `outbox` (send, alice, shared folder), and an FTP server `ftp`."""
    env = GatewayEnv(root)
    env.accounts["alice"] = {"password": password_hash()}
    env.accounts["bob"] = {"password": password_hash()}
    env.rule("inbox", "receive", allow={"accounts": ["alice"]})
    env.rule("outbox", "send", allow={"accounts": ["alice"]}, shared_folder=True)
    config: dict[str, Any] = {
        "protocol": "ftp",
        "address": "127.0.0.1",
        "port": port,
        "tls": tls,
        "data_timeout": 20,
    }
    if certs is not None:
        config.update(cert_file=str(certs.cert), key_file=str(certs.key))
    config.update(server)
    env.extra["servers"] = {"ftp": config}
    return env


def ftp_port(env: GatewayEnv, name: str = "ftp") -> int:
    return env.gw.servers[name].bound_port


# ------------------------------------------------------------------ clients


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run(argv: list[str], timeout: float = 60, stdin: bytes | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ_without_proxy(),
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} still running after {timeout}s: {argv}") from None
    return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


async def curl(*args: str, timeout: float = 60) -> Result:
    """curl (no ~/.curlrc, no proxy) with `args`; -v output in stderr."""
    return await run(["curl", "-q", "-sS", "-v", "--noproxy", "*", *args], timeout)


async def lftp(port: int, script: str, *, tls: bool = False, ca: Path | None = None,
               implicit: bool = False, login: str = "alice", password: str = PASSWORD,
               timeout: float = 60) -> Result:  # fmt: skip
    """lftp running `script` against 127.0.0.1:port (no ~/.lftprc)."""
    settings = [
        "set cmd:interactive false",
        "set net:max-retries 1",
        "set net:timeout 15",
        "set ftp:passive-mode true",
        f"set ftp:ssl-allow {'true' if tls or implicit else 'false'}",
        f"set ftp:ssl-force {'true' if tls else 'false'}",
        "set ftp:ssl-protect-data true",
        "set ssl:verify-certificate true",
    ]
    if ca is not None:
        settings.append(f"set ssl:ca-file {ca}")
    scheme = "ftps" if implicit else "ftp"
    commands = ";\n".join(
        [*settings, f"open -u {login},{password} {scheme}://127.0.0.1:{port}", script]
    )
    home = tempfile.mkdtemp(prefix="lftp-home-")
    try:
        env = {"HOME": home}
        proc = await asyncio.create_subprocess_exec(
            "lftp", "-c", commands,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**environ_without_proxy(), **env},
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"lftp still running after {timeout}s") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


def ftplib_client(port: int, *, tls: bool = False, ca: Path | None = None,
                  login: str = "alice", password: str = PASSWORD) -> ftplib.FTP:  # fmt: skip
    """A logged-in ftplib client (FTP_TLS with PROT P when `tls`). Blocking: call it
    through asyncio.to_thread."""
    if tls:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
        client: ftplib.FTP = ftplib.FTP_TLS(context=context, timeout=20)
    else:
        client = ftplib.FTP(timeout=20)
    client.connect("127.0.0.1", port)
    client.login(login, password)
    if isinstance(client, ftplib.FTP_TLS):
        client.prot_p()
    return client


# ------------------------------------------------------------------ vsftpd


class Vsftpd:
    """A private vsftpd (Debian's) on a free port, with a system user of its own whose
    home is `root` (a password login needs one), passive ports on 127.0.0.1."""

    def __init__(self, folder: Path, user: str, certs: CertFiles | None = None,
                 *, rate: int = 0) -> None:  # fmt: skip
        self.folder = folder
        self.user = user
        self.certs = certs
        self.port = free_port()
        self.pasv = free_port()
        self.rate = rate
        # Outside the test's tmp_path, whose parents only root may cross.
        self.root = Path(tempfile.mkdtemp(prefix="gatewayd-vsftpd-"))
        self.root.chmod(0o777)
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        empty = self.folder / "empty"
        empty.mkdir(parents=True, exist_ok=True)
        lines = [
            "listen=YES",
            "listen_address=127.0.0.1",
            f"listen_port={self.port}",
            "background=NO",
            "anonymous_enable=NO",
            "local_enable=YES",
            "write_enable=YES",
            f"local_root={self.root}",
            f"secure_chroot_dir={empty}",
            "pasv_enable=YES",
            "pasv_address=127.0.0.1",
            f"pasv_min_port={self.pasv}",
            f"pasv_max_port={self.pasv + 20}",
            "seccomp_sandbox=NO",
            "pam_service_name=vsftpd",
            "local_umask=022",
            f"vsftpd_log_file={self.folder / 'vsftpd.log'}",
            "xferlog_enable=YES",
            "dual_log_enable=YES",
            "log_ftp_protocol=YES",
        ]
        if self.rate:
            lines.append(f"local_max_rate={self.rate}")
        if self.certs is not None:
            lines += [
                "ssl_enable=YES",
                f"rsa_cert_file={self.certs.cert}",
                f"rsa_private_key_file={self.certs.key}",
                "force_local_logins_ssl=YES",
                "force_local_data_ssl=YES",
                "require_ssl_reuse=YES",
                "ssl_ciphers=HIGH",
            ]
        return "\n".join(lines) + "\n"

    async def start(self, password: str) -> None:
        subprocess.run(
            ["useradd", "--no-create-home", "-d", str(self.root), "--shell", "/bin/sh", self.user],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["chpasswd"], input=f"{self.user}:{password}", text=True, check=True)
        conf = self.folder / "vsftpd.conf"
        self.folder.mkdir(parents=True, exist_ok=True)
        conf.write_text(self._config())
        self.proc = subprocess.Popen(
            ["/usr/sbin/vsftpd", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            await wait_port(self.port)
        except AssertionError:
            await self.stop()
            raise

    def log(self) -> str:
        path = self.folder / "vsftpd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["userdel", self.user], check=True, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
