"""A private PostgreSQL server for the test session, and a fresh database per test.

Debian's `postgresql` package (installed by scripts/test, its own cluster never
started) gives `initdb` and `pg_ctl` in /usr/lib/postgresql/*/bin. PostgreSQL refuses
to run as root, so as root the server runs as the package's `postgres` user (`runuser`),
in a temporary folder owned by it: its own data folder, socket folder and port, listening
on 127.0.0.1 only, with TLS on (a CA of the session's own) and a password login. It is
stopped (`pg_ctl stop -m fast`) when the session ends.

Without PostgreSQL the tests that need it are skipped, saying why; in CI (`CI` set) they
fail instead: CI runs scripts/test, which installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from tests.sftp_peers import free_port

if TYPE_CHECKING:
    from tests.http_support import CertFiles

USER = "gatewayd_test"
START_TIMEOUT = 60


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(found[-1]).parent if found else None


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


@dataclass
class PgServer:
    """A running private server; `dsn(name)` reaches one of its databases over TCP with
    the password login."""

    root: Path
    bin: Path
    port: int
    password: str
    ca: CertFiles
    as_user: str | None

    host = "127.0.0.1"
    user = USER

    def dsn(self, dbname: str = "postgres", **query: str) -> str:
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}" + (
            f"?{extra}" if extra else ""
        )

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.as_user, "--"] if self.as_user else []
        return subprocess.run(
            [*prefix, *args], check=check, capture_output=True, text=True, timeout=START_TIMEOUT
        )

    def stop(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast", check=False)


def start_server() -> PgServer:
    """initdb and start a server in a new temporary folder (see the module's docstring)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "scripts/test installs Debian's postgresql when run as root"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from tests.http_support import make_cert

    as_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="gatewayd-pg-"))
    ca = make_cert(root / "tls", "ca", common_name="gatewayd test CA", ca=True)
    server_cert = make_cert(root / "tls", "server", issuer=ca)
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    (root / "sockets").mkdir()
    if as_user is not None:
        owner = pwd.getpwnam(as_user)
        for path in (root, root / "sockets", root / "pwfile", *(root / "tls").iterdir()):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chown(root / "tls", owner.pw_uid, owner.pw_gid)
    root.chmod(0o700)
    server = PgServer(root, bin_dir, free_port(), password, ca, as_user)
    server.run(
        str(bin_dir / "initdb"), "-D", str(server.data), "-U", USER,
        f"--pwfile={root / 'pwfile'}", "--auth-local=trust", "--auth-host=scram-sha-256",
        "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    options = " ".join(
        (
            f"-p {server.port}",
            f"-k {root / 'sockets'}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c full_page_writes=off",
            "-c synchronous_commit=off",
            "-c max_connections=200",
            "-c ssl=on",
            f"-c ssl_cert_file={server_cert.cert}",
            f"-c ssl_key_file={server_cert.key}",
        )
    )
    started = server.run(
        str(bin_dir / "pg_ctl"), "-D", str(server.data), "-l", str(server.log),
        "-w", "-t", str(START_TIMEOUT), "-o", options, "start", check=False,
    )  # fmt: skip
    if started.returncode != 0:
        log = server.log.read_text(errors="replace") if server.log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log}")
    return server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_server()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


_counter = 0


@pytest.fixture
async def pg_database(pg_server: PgServer) -> AsyncIterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    global _counter
    _counter += 1
    name = f"test_{os.getpid()}_{_counter}"
    admin = await asyncpg.connect(pg_server.dsn(), ssl=False)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn(name, sslmode="disable")
    admin = await asyncpg.connect(pg_server.dsn(), ssl=False)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_raw(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """A query through a connection of the test's own, outside the store."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()
