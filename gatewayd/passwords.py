"""Password hashes: argon2id for new ones, bcrypt accepted for imported accounts.

Checking a password is deliberately slow (about 0.12-0.25 CPU-s for the default
parameters): it never runs on the event loop, nor on the threads that move files (the
loop's default executor). A `PasswordHashing` owns where it runs: a pool of processes
of its own (so that a login rush uses every core and leaves the daemon's own process to
the transfers), or, where processes cannot be made, threads of its own. Its queue is
bounded: a check beyond it is refused at once (`HashingBusy`) instead of piling up.
Recent successes are remembered in a `CredentialCache`.

`hash_password` and `verify_password` are the blocking primitives (the CLI's
`hash-password`, `check-config`'s look at the demo passwords).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import multiprocessing
import os
import select
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import bcrypt
import structlog
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = structlog.get_logger("gatewayd.passwords")
T = TypeVar("T")

_ARGON2ID = "$argon2id$"
_BCRYPT = ("$2a$", "$2b$", "$2y$")
# bcrypt only ever looked at the first 72 bytes; hashes made elsewhere rely on that.
_BCRYPT_MAX = 72
# Hashing processes run at this lower priority by default (`passwords.nice`): when every
# core is busy, moving partners' bytes goes first and a login waits a little longer.
WORKER_NICE = 10
# How long a first process may take to start before threads are used instead.
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Argon2Parameters:
    """The argon2id parameters of new hashes (`passwords.argon2` in the config).
    Verification always follows the parameters written in each hash.

    The defaults are OWASP's recommendation for argon2id (19 MiB, 2 passes, 1 lane):
    about 0.04 CPU-s a check here, so a rush of 300 logins costs about 12 CPU-s. RFC
    9106's "low memory" choice (64 MiB, 3 passes, 4 lanes) costs 0.3 CPU-s here, and
    300 logins would need 45 s of both cores, past the SFTP login timeout."""

    time_cost: int = 2
    memory_cost: int = 19456  # KiB
    parallelism: int = 1


DEFAULT_PARAMETERS = Argon2Parameters()


@functools.lru_cache(maxsize=8)
def _hasher(params: Argon2Parameters) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_cost,
        parallelism=params.parallelism,
        type=Type.ID,
    )


def hash_password(password: str, params: Argon2Parameters = DEFAULT_PARAMETERS) -> str:
    """A new argon2id hash of `password` (with a random salt). Blocking."""
    return _hasher(params).hash(password)


_verified = 0
_verified_lock = threading.Lock()


def _count() -> None:
    global _verified
    with _verified_lock:
        _verified += 1


def verification_count() -> int:
    """How many passwords this process has checked against a hash, itself or through
    its hashing workers (each costs the same, whether the login exists or not): for
    tests and metrics."""
    return _verified


def _check(hashed: str, password: str) -> bool:
    """The work of one verification (in a worker): never raises, a malformed or
    unsupported hash is simply not a match."""
    if not isinstance(hashed, str) or not isinstance(password, str):
        return False
    if hashed.startswith(_ARGON2ID):
        try:
            # Its own parameters, read from the hash: those of new hashes do not matter.
            return _hasher(DEFAULT_PARAMETERS).verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return False
    if hashed.startswith(_BCRYPT):
        try:
            return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX], hashed.encode())
        except ValueError:
            return False
    return False


def verify_password(hashed: str, password: str) -> bool:
    """True when `password` matches the argon2id or bcrypt hash `hashed`. Blocking.

    Never raises: a malformed or unsupported hash is simply not a match.
    """
    _count()
    return _check(hashed, password)


def needs_rehash(hashed: str, params: Argon2Parameters = DEFAULT_PARAMETERS) -> bool:
    """True when `hashed` should be replaced by a fresh `hash_password` (bcrypt, weaker
    argon2 parameters than `params`, or not a hash we understand)."""
    if not hashed.startswith(_ARGON2ID):
        return True
    try:
        return _hasher(params).check_needs_rehash(hashed)
    except (InvalidHashError, ValueError):
        return True


class CredentialCache:
    """Recently verified (hash, password) pairs, so that a client sending the same
    credential on every request does not cost a full hash each time.

    Only successes are remembered, for `ttl` seconds, at most `max_entries` of them (the
    oldest go first). Entries are keyed by an HMAC-SHA-256 of hash and password under a
    random per-cache key: the cache holds no password, and its keys are useless outside
    this process. A changed hash (new password) can never hit an old entry.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"CredentialCache(entries={len(self._entries)}, ttl={self.ttl})"

    def _digest(self, hashed: str, password: str) -> bytes:
        message = hashed.encode() + b"\x00" + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, hashed: str, password: str) -> bool:
        """True when this pair was verified less than `ttl` seconds ago."""
        digest = self._digest(hashed, password)
        now = self._clock()
        with self._lock:
            expires = self._entries.get(digest)
            if expires is None:
                return False
            if expires <= now:
                del self._entries[digest]
                return False
            return True

    def remember(self, hashed: str, password: str) -> None:
        """Record a successful verification."""
        digest = self._digest(hashed, password)
        with self._lock:
            self._entries[digest] = self._clock() + self.ttl
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def verify(self, hashed: str, password: str) -> bool:
        """`verify_password`, skipping the hash for a recent success (blocking)."""
        if self.hit(hashed, password):
            return True
        ok = verify_password(hashed, password)
        if ok:
            self.remember(hashed, password)
        return ok


# ------------------------------------------------------------------ where hashes run


class HashingBusy(Exception):
    """Too many password checks are waiting: this one is refused without any hashing.
    `retry_after` (seconds) is about how long the queue takes to drain."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many password checks waiting: try again in {retry_after:.0f} s")
        self.retry_after = retry_after


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """Hashing processes when `passwords.workers` is 0: every core but one (at least
    one). The event loop runs on one core at most; leaving it one keeps the partners'
    bytes moving during a login rush, which then takes the other cores."""
    return max(1, cores() - 1)


def _worker_start(nice: int, daemon: int) -> None:
    """In each hashing process: the daemon alone decides when its workers end (a Ctrl-C
    or a SIGTERM sent to its whole process group must not break the pool in the middle
    of a graceful stop), and hashing yields the CPU to the daemon's own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _end_with(daemon)
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)


def _end_with(daemon: int) -> None:
    """A daemon killed with SIGKILL runs no cleanup, and a pool's workers do not notice
    (the forkserver hands each of them the pipe that would have told it): they would
    live on, holding the daemon's output and the journal's stream open. A thread of
    each worker waits for the daemon's end and ends the worker with it."""

    def wait() -> None:
        try:
            fd = os.pidfd_open(daemon)
        except ProcessLookupError:
            os._exit(0)
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
            while _alive(daemon):
                time.sleep(1.0)
            os._exit(0)
        select.select([fd], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="end-with-daemon", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_context() -> Any:
    # Never `fork`: the daemon has threads (the default executor, aiosqlite's).
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Workers are forked from a server that already imported what they run.
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


Mode = Literal["processes", "threads"]


class PasswordHashing:
    """Computes password hashes for the whole daemon (partners' logins, API users,
    decoys), away from the event loop and from the file I/O threads.

    `start()` makes a pool of `workers` processes (default: every core but one); where no
    process can be made, threads of its own are used instead (and before `start()`).
    At most `workers` checks run at once; at most `max_queue` more wait, in arrival
    order; beyond that, `verify()` and `hash()` raise `HashingBusy` at once. A caller
    that gives up (a login that timed out or disconnected) leaves the queue, and its
    check is not computed unless it had started.
    """

    def __init__(
        self,
        *,
        workers: int = 0,
        max_queue: int = 500,
        params: Argon2Parameters = DEFAULT_PARAMETERS,
        nice: int = WORKER_NICE,
    ) -> None:
        self.workers = workers or default_workers()
        self.max_queue = max_queue
        self.params = params
        self.nice = nice
        self._executor: concurrent.futures.Executor | None = None
        self.mode: Mode = "threads"
        self._slots: asyncio.Semaphore | None = None
        self._pending = 0  # running + waiting
        self._mean = 0.2  # seconds per check, for Retry-After; learnt as checks run
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"PasswordHashing(mode={self.mode}, workers={self.workers}, "
            f"pending={self._pending}, max_queue={self.max_queue})"
        )

    @property
    def pending(self) -> int:
        """Checks running or waiting now."""
        return self._pending

    async def start(self) -> None:
        """Start the worker processes (or fall back to threads, with a warning)."""
        if self._executor is not None:
            return
        pool: concurrent.futures.ProcessPoolExecutor | None = None
        try:
            pool = self._processes()
            # One round trip proves that processes can be made here.
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(_START_TIMEOUT):
                await loop.run_in_executor(pool, os.getpid)
        except (OSError, ImportError, NotImplementedError, RuntimeError, TimeoutError) as exc:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            log.warning(
                "password checks run in threads: no worker process could be started",
                error=str(exc) or type(exc).__name__,
            )
            self._executor = self._threads()
            return
        self._executor, self.mode = pool, "processes"
        log.info("password checks run in worker processes", workers=self.workers)

    def _processes(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=_process_context(),
            initializer=_worker_start,
            initargs=(self.nice, os.getpid()),
        )

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        self.mode = "threads"
        return concurrent.futures.ThreadPoolExecutor(
            self.workers, thread_name_prefix="gatewayd-hashing"
        )

    async def close(self, timeout: float = 2.0) -> None:
        """Refuse further checks and end the workers: the checks running finish first,
        within `timeout` seconds (then the workers end on their own as they finish)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)

    async def verify(
        self, hashed: str, password: str, cache: CredentialCache | None = None
    ) -> bool:
        """Whether `password` matches `hashed`, answered from `cache` when it can;
        raises HashingBusy when the queue is full."""
        if cache is not None and cache.hit(hashed, password):
            return True
        ok = await self._run(_check, hashed, password, counted=True)
        if ok and cache is not None:
            cache.remember(hashed, password)
        return ok

    async def hash(self, password: str) -> str:
        """A new hash of `password` with the configured parameters."""
        return await self._run(hash_password, password, self.params)

    async def _run(self, fn: Callable[..., T], *args: Any, counted: bool = False) -> T:
        if self._closed:
            raise HashingBusy(0.0)
        if self._pending >= self.workers + self.max_queue:
            raise HashingBusy(self._pending * self._mean / self.workers)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        self._pending += 1
        try:
            await self._slots.acquire()
            if counted:
                _count()
            used = self._executor
            try:
                return await self._submit(fn, *args)
            except BrokenProcessPool:
                # A worker died (killed, out of memory): a new pool, then the check again.
                self._replace_pool(used)
                await self._slots.acquire()
                return await self._submit(fn, *args)
        finally:
            self._pending -= 1

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the executor, holding one slot (already acquired) until the work
        is over, even when the caller gives up first: the slot is given back only when
        the worker is free again."""
        assert self._slots is not None
        slots = self._slots
        loop = asyncio.get_running_loop()
        if self._closed:
            slots.release()
            raise HashingBusy(0.0)
        if self._executor is None:
            self._executor = self._threads()
        try:
            work = self._executor.submit(fn, *args)
        except BaseException:
            slots.release()
            raise
        started = time.monotonic()
        answer: asyncio.Future[T] = loop.create_future()

        def settle(done: concurrent.futures.Future[T]) -> None:
            slots.release()
            if not done.cancelled():
                self._mean = 0.8 * self._mean + 0.2 * (time.monotonic() - started)
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif (error := done.exception()) is not None:
                answer.set_exception(error)
            else:
                answer.set_result(done.result())

        def finished(done: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, done)

        work.add_done_callback(finished)
        try:
            return await answer
        except asyncio.CancelledError:
            work.cancel()  # not computed if it had not started yet
            raise

    def _replace_pool(self, broken: concurrent.futures.Executor | None) -> None:
        if self._closed or broken is not self._executor:
            return  # closed, or replaced already by another check of the broken pool
        self._executor = None
        if broken is not None:
            broken.shutdown(wait=False, cancel_futures=True)
        if self.mode == "processes":
            log.error("a password worker died: starting new ones")
            try:
                self._executor = self._processes()
            except (OSError, RuntimeError) as exc:
                log.warning("password checks run in threads from now on", error=str(exc))
                self._executor = self._threads()


class DecoyHash:
    """A hash of a random password, made once, for logins that have no hash of their
    own (unknown or disabled accounts, accounts without a password): checking against
    it costs what a real check costs, so timing does not tell which logins exist. It has
    the parameters of new hashes."""

    def __init__(self, hashing: PasswordHashing) -> None:
        self.hashing = hashing
        self._hash: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._hash is None:
                self._hash = await self.hashing.hash(os.urandom(16).hex())
        return self._hash
