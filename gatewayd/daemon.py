"""The daemon process: configuration, safety checks, lock, logging, signals.

Only process concerns live here. Everything that runs once the store is open belongs to
`gatewayd.gateway.Gateway`, which this module starts and stops.

Order of start-up, each step refusing to go on when it fails (exit status 1):
load the configuration (and check the files it names); refuse demo passwords on a
non-loopback address; create the folders; take the lock of the state folder (with
PostgreSQL, the node's); configure logging; open the store; prepare the gateway (every
server prepared, its keys and certificates loaded, the password workers started); join
the node's cluster (`gatewayd.cluster.nodes`: one daemon per node name, the shared data
folder checked, the heartbeat started); mark the transfers the previous run left
RUNNING as INTERRUPTED; start the gateway (the scheduler, then the listeners); tell
systemd READY (`gatewayd.systemd`, when started by it) and start its watchdog pings.
A node fenced (taken over by another) exits at once with status 3.

SIGTERM/SIGINT stop it (STOPPING): nothing new is accepted, uploads in the middle of
their data are interrupted with their bytes kept, those completing finish and their
partners get the answer, then sessions close (`Gateway.stop`, bounded by
`daemon.shutdown_timeout`). The last line says `gatewayd stopped clean=...`: clean (exit
status 0) only when no transfer was left running, in the engine or in the database.
SIGHUP re-reads the configuration and the rules in a
thread and hands a valid one to the gateway (RELOADING, then READY again), keeping the
old one when the new one is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gatewayd import __version__
from gatewayd.config import (
    ConfigError,
    LoadedConfig,
    demo_secrets_in_use,
    ensure_folders,
    load_config,
)
from gatewayd.config.demo import save_demo_checks
from gatewayd.config.schema import Config
from gatewayd.crypto.keyring import KeyringError
from gatewayd.logs import configure_logging
from gatewayd.systemd import Notifier

if TYPE_CHECKING:
    from gatewayd.gateway import Gateway

__all__ = [
    "DaemonLock",
    "LockHeld",
    "demo_secrets_refusal",
    "is_loopback",
    "listen_addresses",
    "run_daemon",
]

# Added to `daemon.shutdown_timeout` before the daemon gives up waiting for the gateway:
# the gateway's own deadline is "about" the timeout (answers still being written and
# sessions closing get a moment after it), this bounds it for certain.
_STOP_GRACE = 5.0
# The exit status of a node that found it was taken over (or lost its lease).
FENCED_EXIT = 3

log = structlog.get_logger("gatewayd.daemon")


def run_daemon(config_path: Path) -> int:
    """Run the gateway in the foreground until SIGTERM or SIGINT; return the exit status."""
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"gatewayd: invalid configuration, not starting: {config_path}", file=sys.stderr)
        return 1

    refusal = demo_secrets_refusal(loaded)
    if refusal:
        print(f"gatewayd: {refusal}", file=sys.stderr)
        return 1

    # One daemon per database file with SQLite; one per node name with PostgreSQL (its
    # nodes may share a state folder; the database itself refuses a second daemon of a
    # name, see `gatewayd.cluster.nodes`).
    lock = DaemonLock(loaded.paths.lock_file)
    try:
        ensure_folders(loaded)
        # The demo checks made before the state folder existed, for the next start.
        save_demo_checks(loaded.paths.state_dir)
        lock.acquire()
    except LockHeld as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # load_config checked the folders; this is a race or a disk
        print(
            f"gatewayd: cannot prepare {exc.filename or 'the state folder'}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1

    try:
        configure_logging(loaded.config.logging)
        for warning in loaded.warnings:
            log.warning(str(warning))
        with asyncio.Runner(loop_factory=_loop_factory(loaded.config.daemon.event_loop)) as runner:
            return runner.run(_serve(loaded, config_path))
    except KeyboardInterrupt:
        # A SIGINT that arrived before the signal handlers were in place.
        return 130
    finally:
        lock.release()


def _fenced(why: str) -> None:
    """End the process at once: its transfers are another node's now, and anything a
    graceful stop would do (save the rows it runs) would write over the new owner's.
    systemd restarts it (Restart=on-failure)."""
    log.error("gatewayd exits at once: fenced", exit_status=FENCED_EXIT)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(FENCED_EXIT)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `daemon.event_loop` asks for (None: asyncio's own)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            log.warning("uvloop is not installed: using the asyncio event loop")
        return None
    return uvloop.new_event_loop


async def _serve(loaded: LoadedConfig, config_path: Path) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    notifier = Notifier.from_environment()
    try:
        return await _serve_with(loaded, config_path, loop, stopping, notifier)
    finally:
        await notifier.close()


async def _serve_with(
    loaded: LoadedConfig,
    config_path: Path,
    loop: asyncio.AbstractEventLoop,
    stopping: asyncio.Event,
    notifier: Notifier,
) -> int:
    # Deferred: the gateway pulls in the whole core, which a refused start never needs.
    from asyncpg import PostgresError

    from gatewayd.gateway import Gateway, StartError
    from gatewayd.store import make_store
    from gatewayd.store.migrate import SchemaError

    def request_stop(sig: signal.Signals) -> None:
        if stopping.is_set():
            log.info("already stopping", signal=sig.name)
            return
        log.info("stop requested", signal=sig.name)
        notifier.stopping()
        stopping.set()

    reloader = _Reloader(config_path, notifier)

    def request_reload() -> None:
        reloader.request()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, request_reload)

    config = loaded.config
    try:
        store = make_store(
            config.database,
            loaded.paths.database,
            node=config.daemon.node_name(),
            home=loaded.paths.home,
        )
        await store.open()
    except SchemaError as exc:  # one line says which database and why (e.g. too new)
        log.error(f"cannot open the database: {exc}")
        return 1
    except (OSError, ValueError, PostgresError) as exc:  # unreachable, refused, ...
        log.error(f"cannot open the database {_database_name(loaded)}: {exc}")
        return 1
    except Exception:
        log.exception("cannot open the database", database=_database_name(loaded))
        return 1
    from gatewayd.cluster.nodes import JoinError, Membership

    membership = Membership(
        store,
        node=config.daemon.node_name(),
        lease=config.daemon.lease,
        data_dir=loaded.paths.data_dir,
        shared=config.database.backend == "postgresql",
        on_fenced=_fenced,
        api=f"{config.api.address}:{config.api.port}" if config.api.enabled else "",
        rule_folders={name: loaded.paths.rule_folder(r) for name, r in config.rules.items()},
    )
    clean = False
    try:
        gateway = Gateway(loaded, store)
        try:
            # The slow part first (imports, keys, worker processes): the lease starts
            # with the join, on a node about ready.
            await gateway.prepare()
            # Before any row is touched: a second daemon of this name is refused here,
            # before it could interrupt the first one's transfers.
            await membership.join()
        except JoinError as exc:
            log.error(f"cannot start: {exc}")
            await gateway.hashing.close()  # all that prepare() started; no row is ours
            return 1
        except StartError as exc:  # a file or an address: one line says which
            log.error(f"cannot start: {exc}")
            await _stop_gateway(gateway, config.daemon.shutdown_timeout)
            return 1
        except Exception:
            log.exception("gateway failed to start")
            await gateway.hashing.close()
            return 1
        try:
            interrupted = await store.interrupt_running()
            log.info(
                "transfers left running by the previous run interrupted", count=len(interrupted)
            )
            await gateway.start()
        except StartError as exc:  # a file or an address: one line says which
            log.error(f"cannot start: {exc}")
            await _stop_gateway(gateway, config.daemon.shutdown_timeout)
            return 1
        except Exception:
            log.exception("gateway failed to start")
            await _stop_gateway(gateway, config.daemon.shutdown_timeout)
            return 1
        log.info(
            "gatewayd ready",
            version=__version__,
            pid=os.getpid(),
            event_loop=type(loop).__module__.split(".")[0],
        )
        membership.start(gateway.scheduler.resume_interrupted)
        reloader.gateway = gateway
        # Rules changed through another node's API: reloaded here as a SIGHUP does.
        gateway.bus.set_reload(reloader.request)
        notifier.ready()
        notifier.start_watchdog()

        await stopping.wait()
        await reloader.cancel()
        log.info("gatewayd stopping", timeout=config.daemon.shutdown_timeout)
        membership.stop_takeovers()
        clean = await _stop_gateway(gateway, config.daemon.shutdown_timeout)
    finally:
        await membership.leave(clean=clean)
        await store.close()
    log.info("gatewayd stopped", clean=clean)
    return 0 if clean else 1


def _database_name(loaded: LoadedConfig) -> str:
    """The database, as messages name it (never with a password)."""
    database = loaded.config.database
    if database.backend == "sqlite":
        return str(loaded.paths.database)
    from gatewayd.store.postgres import describe_dsn

    if database.dsn is not None:
        return describe_dsn(database.dsn)
    return f"postgresql://{database.host or 'localhost'}/{database.dbname}"


async def _stop_gateway(gateway: Gateway, seconds: float) -> bool:
    """Stop the gateway within `seconds` (plus a grace); True only when it stopped in
    time and left nothing running (no run in the engine, no RUNNING row)."""
    try:
        async with asyncio.timeout(seconds + _STOP_GRACE):
            stopped = await gateway.stop(timeout=seconds)
    except TimeoutError:
        log.error("gateway did not stop in time", timeout=seconds)
        return False
    except Exception:
        log.exception("gateway failed to stop cleanly")
        return False
    if not stopped.clean:
        log.error(
            "transfers left running at the stop: they are interrupted at the next start",
            runs=stopped.runs_left,
            rows=stopped.running_rows,
            transfer_ids=",".join(map(str, stopped.running_ids)),
        )
    log.info("gateway stopped", seconds=round(stopped.seconds, 3))
    return stopped.clean


# ------------------------------------------------------------------------------- reload


def _restart_only(old: LoadedConfig, new: LoadedConfig) -> tuple[list[str], list[str]]:
    """(refused, deferred): settings a reload must not change (they would split the
    state between two databases or folders), and settings it changes only at the next
    restart (listeners, logging, the event loop)."""
    a, b = old.config, new.config
    refused = [
        what
        for what, before, after in (
            ("database", a.database, b.database),
            ("state folder", old.paths.state_dir, new.paths.state_dir),
            ("database file", old.paths.database, new.paths.database),
            ("daemon.node", a.daemon.node_name(), b.daemon.node_name()),
        )
        if before != after
    ]
    listener = ("enabled", "address", "port", "tls_cert", "tls_key")
    deferred = [
        what
        for what, before, after in (
            ("logging", a.logging, b.logging),
            ("servers", a.servers, b.servers),
            (
                "api listener",
                a.api.model_dump(include=set(listener)),
                b.api.model_dump(include=set(listener)),
            ),
            ("daemon.event_loop", a.daemon.event_loop, b.daemon.event_loop),
            ("passwords", a.passwords, b.passwords),
        )
        if before != after
    ]
    return refused, deferred


def _load_for_reload(config_path: Path) -> LoadedConfig:
    """Blocking: read, check and prepare the folders of a new configuration."""
    loaded = load_config(config_path)
    ensure_folders(loaded)
    return loaded


class _Reloader:
    """SIGHUP: re-read the configuration and the rules in a thread and hand a valid one
    to the gateway; an invalid one is logged and refused, the old one kept. Reloads run
    one at a time; a SIGHUP during a reload queues one more."""

    def __init__(self, config_path: Path, notifier: Notifier) -> None:
        self.config_path = config_path
        self.notifier = notifier
        self.gateway: Gateway | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        if self.gateway is None:
            log.warning("reload ignored: gatewayd is still starting", signal="SIGHUP")
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._again = False
            self.notifier.reloading()
            try:
                await self._reload_once()
            except Exception:
                log.exception("reload failed: the running configuration is kept")
            finally:
                self.notifier.ready()
            if not self._again:
                return

    async def _reload_once(self) -> None:
        gateway = self.gateway
        assert gateway is not None
        log.info("reloading the configuration", config=str(self.config_path))
        try:
            loaded = await asyncio.to_thread(_load_for_reload, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("invalid configuration", problem=str(problem))
            log.error(
                "reload refused: the running configuration is kept", problems=len(exc.problems)
            )
            return
        except OSError as exc:
            log.error(
                "reload refused: the running configuration is kept",
                path=exc.filename,
                error=exc.strerror,
            )
            return
        refusal = demo_secrets_refusal(loaded)
        if refusal:
            log.error("reload refused: the running configuration is kept", reason=refusal)
            return
        refused, unapplied = _restart_only(gateway.loaded, loaded)
        if refused:
            log.error(
                "reload refused: these settings change only with a restart",
                settings=",".join(refused),
            )
            return
        try:
            await gateway.load_keys(loaded)
        except KeyringError as exc:
            log.error("reload refused: the running configuration is kept", keys=str(exc))
            return
        gateway.apply_config(loaded)
        for warning in loaded.warnings:
            log.warning(str(warning))
        if unapplied:
            log.warning("some changes apply only after a restart", sections=",".join(unapplied))
        log.info(
            "configuration reloaded",
            rules=len(loaded.config.rules),
            watchers=len(loaded.watchers),
        )


# ------------------------------------------------------------------ demo secrets exposed


def listen_addresses(config: Config) -> list[tuple[str, str]]:
    """(what, address) for every socket the configuration would listen on."""
    found: list[tuple[str, str]] = []
    if config.api.enabled:
        found.append(("api", config.api.address))
    found += [
        (f"server {name}", server.address)
        for name, server in config.servers.items()
        if server.enabled
    ]
    return found


def is_loopback(address: str) -> bool:
    """Whether `address` only accepts connections from this machine.

    Empty, wildcard and host names other than `localhost` count as exposed: a name may
    resolve to anything.
    """
    host = address.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def demo_secrets_refusal(loaded: LoadedConfig) -> str | None:
    """Why the daemon must not start with this configuration, or None."""
    demo = demo_secrets_in_use(loaded)
    exposed = [
        f"{what} on {address or '(all addresses)'}"
        for what, address in listen_addresses(loaded.config)
        if not is_loopback(address)
    ]
    if not demo or not exposed:
        return None
    return (
        f"refusing to start: the demo passwords are still in use ({', '.join(demo)}) "
        f"and gatewayd would listen beyond this machine ({', '.join(exposed)}). "
        "Replace them with hashes from `gatewayd hash-password`, or listen on 127.0.0.1 only."
    )


# --------------------------------------------------------------------------------- lock


class LockHeld(Exception):
    """Another process holds the lock of this state folder."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"another gatewayd (pid {pid if pid else '?'}) holds {path}")
        self.path = path
        self.pid = pid


class DaemonLock:
    """An exclusive `flock` on the state folder's lock file, holding our pid.

    The kernel drops the lock when the process dies, however it dies, so a stale lock
    file never blocks a restart. The file itself is left in place on release: unlinking
    it would let two processes lock two different files of the same name.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise LockHeld."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeld(self.path, self._read_pid()) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Empty the file and drop the lock; harmless when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    def _read_pid(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None
