"""`serve` starts no listener before everything is known to be startable: every server
is prepared (keys, certificates loaded) and the API's TLS context built before any of
them listens. A failure is one clear line naming the server and the file, exit status 1,
and nothing listened."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from gatewayd.gateway import Gateway, StartError
from gatewayd.store import make_store
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import GatewayEnv
from tests.http_support import CertFiles, free_port, make_cert


def two_servers(root: Path) -> tuple[GatewayEnv, CertFiles, int]:
    """A gateway with an SFTP server on a fixed free port and an HTTPS server `web`."""
    env = GatewayEnv(root)
    certs = make_cert(root / "certs", "web")
    sftp_port = free_port()
    env.extra["servers"] = {
        "sftp": {"protocol": "sftp", "port": sftp_port},
        "web": {
            "protocol": "https",
            "cert_file": str(certs.cert),
            "key_file": str(certs.key),
        },
    }
    return env, certs, sftp_port


async def accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Prober:
    """Tries to connect to a port again and again until stopped; remembers a success."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts = 0
        self.accepted = False
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self.attempts += 1
            if await accepts(self.port):
                self.accepted = True
            await asyncio.sleep(0.01)  # a probe's pace, not a synchronisation

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ----------------------------------------------------------------------- in-process


async def test_a_server_that_cannot_prepare_stops_the_start_before_anything_listens(
    tmp_path: Path,
) -> None:
    env, certs, sftp_port = two_servers(tmp_path)
    loaded = env.load()  # valid: the key is there
    certs.key.unlink()
    store = make_store(loaded.config.database, loaded.paths.database)
    await store.open()
    gateway = Gateway(loaded, store)
    try:
        with pytest.raises(StartError) as caught:
            await gateway.start()
        assert str(caught.value) == (
            f"server 'web': cannot read {certs.key}: No such file or directory"
        )
        assert gateway.servers == {} and gateway.api is None
        assert not await accepts(sftp_port)
        # The SFTP server was prepared (its host keys generated) but never listened.
        assert (loaded.paths.state_dir / "sftp" / "sftp" / "ssh_host_ed25519_key").exists()
    finally:
        await gateway.stop(5)
        await store.close()


async def test_the_api_tls_context_is_prepared_before_the_servers_listen(
    tmp_path: Path,
) -> None:
    env, _, sftp_port = two_servers(tmp_path)
    del env.extra["servers"]["web"]
    api_certs = make_cert(tmp_path / "certs", "api")
    env.extra["api"] = {
        "port": 0,
        "tls_cert": str(api_certs.cert),
        "tls_key": str(api_certs.key),
    }
    loaded = env.load()
    api_certs.cert.write_text("replaced by something else\n")
    store = make_store(loaded.config.database, loaded.paths.database)
    await store.open()
    gateway = Gateway(loaded, store)
    try:
        with pytest.raises(StartError) as caught:
            await gateway.start()
        assert str(caught.value) == f"the API: {api_certs.cert} holds no PEM certificate"
        assert gateway.servers == {} and not await accepts(sftp_port)
    finally:
        await gateway.stop(5)
        await store.close()


# ------------------------------------------------------------------ a real daemon


def _held_database(db: Path) -> sqlite3.Connection:
    """A connection holding the write lock of `db`: a daemon starting on it waits (its
    busy timeout) where it first writes, after it has loaded its configuration and
    taken its lock, before its gateway starts."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def _wait_locked_by(lock_file: Path, daemon: DaemonProcess, timeout: float = 30) -> None:
    """Until the daemon's pid is in its lock file: it has loaded its configuration."""
    pid = str(daemon.proc.pid)
    try:
        async with asyncio.timeout(timeout):
            while not (lock_file.exists() and lock_file.read_text().strip() == pid):
                if daemon.proc.returncode is not None:
                    raise AssertionError(f"gatewayd exited early:\n{daemon.output}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"gatewayd never took its lock:\n{daemon.output}") from None


async def test_serve_whose_key_disappears_exits_with_one_line_and_never_listened(
    tmp_path: Path,
) -> None:
    env, certs, sftp_port = two_servers(tmp_path)
    env.extra["database"] = {"busy_timeout_ms": 60_000}
    loaded = env.load()  # what check-config would say: valid
    store = make_store(loaded.config.database, loaded.paths.database)
    await store.open()
    await store.close()

    held: sqlite3.Connection | None = _held_database(loaded.paths.database)
    daemon = await DaemonProcess.start(env.config_file)
    prober: Prober | None = None
    try:
        await _wait_locked_by(loaded.paths.lock_file, daemon)
        # The daemon has checked its configuration: now the key goes away.
        certs.key.unlink()
        prober = Prober(sftp_port)
        assert held is not None
        held.rollback()
        held.close()
        held = None
        status = await daemon.finish(timeout=60)
        await prober.stop()
    finally:
        if held is not None:
            held.close()
        if prober is not None:
            await prober.stop()
        if daemon.proc.returncode is None:
            await daemon.kill()
    assert status == 1, daemon.output
    failures = [line for line in daemon.lines if "cannot start" in line]
    assert len(failures) == 1, daemon.output
    assert (
        f"cannot start: server 'web': cannot read {certs.key}: No such file or directory"
        in (failures[0])
    )
    assert "Traceback" not in daemon.output and "listening" not in daemon.output
    assert prober.attempts > 0 and not prober.accepted


async def test_serve_refuses_a_config_whose_files_do_not_load(tmp_path: Path) -> None:
    env, certs, sftp_port = two_servers(tmp_path)
    env.write()
    certs.key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    daemon = await DaemonProcess.start(env.config_file)
    prober = Prober(sftp_port)
    try:
        status = await daemon.finish(timeout=60)
    finally:
        await prober.stop()
    assert status == 1, daemon.output
    key_line = next(
        number
        for number, line in enumerate(env.config_file.read_text().splitlines(), 1)
        if "key_file" in line
    )
    assert f"{env.config_file}:{key_line}: {certs.key} holds no PEM private key" in daemon.output
    assert "Traceback" not in daemon.output and not prober.accepted
