"""Real SSH peers for the SFTP tests, on 127.0.0.1: OpenSSH's `sftp` and `ssh` clients
(key login, or password login through sshpass) and a private `sshd` started with its
own configuration, host key and port."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess

SSHD = "/usr/sbin/sshd"


def need(*commands: str) -> None:
    """Skip the test when a peer program is missing (scripts/test installs them)."""
    for command in commands:
        if shutil.which(command) is None and not os.access(command, os.X_OK):
            pytest.skip(f"{command} is not installed (scripts/test installs it as root)")


def keygen(path: Path, kind: str = "ed25519") -> str:
    """A new passphrase-less key pair at `path`; returns the public key line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "test", "-f", str(path)], check=True
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    returncode: int
    output: str

    def ok(self) -> Result:
        assert self.returncode == 0, self.output
        return self


def _common_options(port: int) -> list[str]:
    return [
        "-F", "/dev/null", "-P", str(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
    ]  # fmt: skip


def _auth(key: Path | None, password: str | None) -> tuple[list[str], list[str]]:
    """(prefix, options) for a key or a password login."""
    if password is not None:
        return ["sshpass", "-p", password], [
            "-o", "BatchMode=no", "-o", "PreferredAuthentications=password",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
        ]  # fmt: skip
    assert key is not None
    return [], [
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "PreferredAuthentications=publickey",
    ]


async def _run(argv: list[str], timeout: float, stdin: bytes | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} still running after {timeout}s: {argv}") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"))


async def sftp(
    port: int,
    user: str,
    commands: list[str],
    *,
    key: Path | None = None,
    password: str | None = None,
    options: tuple[str, ...] = (),
    timeout: float = 60,
) -> Result:
    """Run OpenSSH `sftp -b` with `commands` (a leading `-` lets one fail and go on)."""
    prefix, auth = _auth(key, password)
    argv = [
        *prefix, "sftp", *_common_options(port), *auth, *options, "-b", "-", f"{user}@127.0.0.1",
    ]  # fmt: skip
    return await _run(argv, timeout, stdin="\n".join(commands).encode() + b"\n")


class SftpSession:
    """A long-running `sftp` reading its commands as they come (to kill it mid-way)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, port: int, user: str, key: Path, commands: list[str], options: tuple[str, ...] = ()
    ) -> SftpSession:
        _, auth = _auth(key, None)
        proc = await asyncio.create_subprocess_exec(
            "sftp", *_common_options(port), *auth, *options, "-b", "-", f"{user}@127.0.0.1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write("\n".join(commands).encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        return cls(proc)

    async def finish(self, timeout: float = 60) -> Result:
        try:
            async with asyncio.timeout(timeout):
                assert self.proc.stdout is not None
                out = await self.proc.stdout.read()
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(f"sftp still running after {timeout}s") from None
        assert self.proc.returncode is not None
        return Result(self.proc.returncode, out.decode(errors="replace"))

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def ssh(
    port: int,
    user: str,
    command: str,
    *,
    key: Path | None = None,
    password: str | None = None,
    stdin: bytes = b"",
    options: tuple[str, ...] = (),
    timeout: float = 30,
) -> Result:
    """Run one command with OpenSSH `ssh` (exec request)."""
    prefix, auth = _auth(key, password)
    common = [o if o != "-P" else "-p" for o in _common_options(port)]
    argv = [*prefix, "ssh", *common, *auth, *options, "-T", f"{user}@127.0.0.1", command]
    return await _run(argv, timeout, stdin=stdin)


class Sshd:
    """A private OpenSSH server: its own config, host key, port and authorized keys."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], port: int, host_key: str):
        self.root, self.proc, self.port, self.host_key = root, proc, port, host_key

    @classmethod
    async def start(
        cls, root: Path, authorized_keys: list[str], *, passwords: bool = False
    ) -> Sshd:
        need(SSHD)
        root.mkdir(parents=True, exist_ok=True)
        host_key = keygen(root / "ssh_host_ed25519_key")
        (root / "authorized_keys").write_text("\n".join(authorized_keys) + "\n")
        port = free_port()
        config = root / "sshd_config"
        sftp_server = "/usr/lib/openssh/sftp-server"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\n"
            f"HostKey {root / 'ssh_host_ed25519_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"PasswordAuthentication {'yes' if passwords else 'no'}\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"Subsystem sftp {sftp_server}\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd refuses to start without
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(root / "sshd.log").open("wb"),
            start_new_session=True,
        )
        sshd = cls(root, proc, port, host_key)
        await sshd._wait_listening()
        return sshd

    async def _wait_listening(self, timeout: float = 15) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.proc.poll() is not None:
                        raise AssertionError(f"sshd exited: {self.log()}")
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.02)
                        continue
                    writer.close()
                    return
        except TimeoutError:
            raise AssertionError(f"sshd not listening after {timeout}s: {self.log()}") from None

    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def listening_port(daemon: DaemonProcess, server: str = "sftp") -> int:
    """The port a `gatewayd serve` with JSON logs says server `server` listens on."""
    since = 0
    while True:
        line = await daemon.wait_for('"server listening"', since=since)
        record = json.loads(line)
        if record.get("server") == server:
            return int(record["port"])
        since = daemon.lines.index(line) + 1
