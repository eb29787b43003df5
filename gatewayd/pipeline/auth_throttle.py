"""Login throttling: failures slow further attempts down, then refuse them for a while.

Failures are counted per remote address and per account, over a sliding window. Each
failure beyond the first few makes the answer wait longer (doubling, capped); past a
threshold the address (or the account) is refused outright, without even checking the
credential, until the ban expires. It knows no protocol: the core's
`CoreServerContext.authenticate` consults it for every server, so that switching from
SFTP to HTTP gains an attacker nothing. The admin API has an instance of its own (its
users are not partners' accounts), whose policy bans addresses only.

Callers use the asynchronous `LoginThrottle` interface: this in-memory `AuthThrottle`
counts one node's failures; `gatewayd.pipeline.shared_throttle` counts those of every
node sharing a PostgreSQL database, with the same policy.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottlePolicy:
    """The numbers of the throttle (seconds and counts)."""

    # Failures older than this are forgotten.
    window: float = 900.0
    # Failures answered without delay (typos happen).
    free_failures: int = 2
    # The delay after the first failure past the free ones; doubles with each next one.
    base_delay: float = 0.5
    max_delay: float = 8.0
    # Failures from one address within the window before it is refused for `ban` seconds.
    max_address_failures: int = 10
    # Failures for one account (from anywhere) before it is refused for `ban` seconds;
    # higher than the address threshold, since a ban of an account also locks out its
    # rightful owner. None: accounts are slowed down, never banned (anyone could lock
    # out a well-known login such as `admin` otherwise).
    max_account_failures: int | None = 30
    ban: float = 900.0
    # Bound on the addresses and accounts remembered (the oldest are forgotten first).
    max_keys: int = 100_000


# Logins longer than this are remembered by their digest, so that `max_keys` also
# bounds the memory an attacker sending huge logins can take.
_MAX_KEY_CHARS = 128


def account_key(login: str) -> str:
    if len(login) <= _MAX_KEY_CHARS:
        return login
    return "sha256:" + hashlib.sha256(login.encode("utf-8", "surrogatepass")).hexdigest()


class _Counter:
    __slots__ = ("banned_until", "times")

    def __init__(self, most: int) -> None:
        # Bounded: past `most` failures in the window, the answer is as slow as it gets
        # (and a ban, where there is one, has been reached).
        self.times: deque[float] = deque(maxlen=most)
        self.banned_until = 0.0


def failure_delay(policy: ThrottlePolicy, failures: int) -> float:
    """How long to wait before answering a failure, the key's `failures`-th in its window."""
    past_free = failures - policy.free_failures
    if past_free <= 0:
        return 0.0
    return min(policy.base_delay * 2.0 ** (past_free - 1), policy.max_delay)


def throttle_keys(remote: str, login: str) -> list[tuple[str, str]]:
    """The (kind, key) counted for a login: its account's and its address's. An empty
    login (a bad bearer token: nobody to name) counts for the address only."""
    keys = [("account", account_key(login))] if login else []
    if remote:
        keys.append(("address", remote))
    return keys


class LoginThrottle(ABC):
    """What logins consult: whether to refuse at once, how long to wait after a failure.
    `policy` may be changed while running (tests do)."""

    def __init__(self, policy: ThrottlePolicy | None = None) -> None:
        self.policy = policy or ThrottlePolicy()
        self.failures_total = 0
        self.refused_total = 0

    @abstractmethod
    async def check(self, remote: str, login: str) -> float:
        """Seconds left of a ban on `remote` or on `login` (0 when neither is banned)."""

    @abstractmethod
    async def record_failure(self, remote: str, login: str) -> float:
        """Count a failed login; how long to wait before answering it."""

    @abstractmethod
    async def record_success(self, remote: str, login: str) -> None:
        """A good login: the account's count is cleared."""


class AuthThrottle(LoginThrottle):
    """Remembers recent login failures and says how long to wait or whether to refuse."""

    def __init__(
        self,
        policy: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(policy)
        self._clock = clock
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    async def check(self, remote: str, login: str) -> float:
        return self.banned_for(remote, login)

    async def record_failure(self, remote: str, login: str) -> float:
        return self.failure(remote, login)

    async def record_success(self, remote: str, login: str) -> None:
        self.success(remote, login)

    def _get(self, kind: str, key: str, create: bool) -> _Counter | None:
        counter = self._counters.get((kind, key))
        if counter is None and create:
            counter = self._counters[(kind, key)] = _Counter(self._most())
            while len(self._counters) > self.policy.max_keys:
                self._counters.popitem(last=False)
        elif counter is not None:
            self._counters.move_to_end((kind, key))
        if counter is not None:
            horizon = self._clock() - self.policy.window
            while counter.times and counter.times[0] < horizon:
                counter.times.popleft()
        return counter

    def _most(self) -> int:
        policy = self.policy
        return max(
            policy.max_address_failures,
            policy.max_account_failures or 0,
            policy.free_failures + 64,
        )

    def _keys(self, remote: str, login: str) -> list[tuple[str, str]]:
        # An empty login (a bad bearer token: nobody to name) counts for the address only.
        keys = [("account", account_key(login))] if login else []
        if remote:
            keys.append(("address", remote))
        return keys

    def banned_for(self, remote: str, login: str) -> float:
        """Seconds left of a ban on `remote` or on `login` (0 when neither is banned).
        A refusal counts in `refused_total`."""
        now = self._clock()
        left = 0.0
        for kind, key in throttle_keys(remote, login):
            counter = self._get(kind, key, create=False)
            if counter is not None and counter.banned_until > now:
                left = max(left, counter.banned_until - now)
        if left:
            self.refused_total += 1
        return left

    def failure(self, remote: str, login: str) -> float:
        """Record a failed login (`login` empty: the address's only); returns how long
        to wait before answering it."""
        self.failures_total += 1
        now = self._clock()
        policy = self.policy
        worst = 0
        for kind, key in throttle_keys(remote, login):
            counter = self._get(kind, key, create=True)
            assert counter is not None
            counter.times.append(now)
            limit = (
                policy.max_address_failures if kind == "address" else policy.max_account_failures
            )
            if limit is not None and len(counter.times) >= limit:
                counter.banned_until = now + policy.ban
                counter.times.clear()
            worst = max(worst, len(counter.times))
        return failure_delay(policy, worst)

    def success(self, remote: str, login: str) -> None:
        """A good login clears the account's count (not the address's: a valid login of
        one's own must not reset guesses at other accounts)."""
        self._counters.pop(("account", account_key(login)), None)
