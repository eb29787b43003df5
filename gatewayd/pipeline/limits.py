"""How many files each account uploads and downloads at once, across every server,
and which names it is uploading.

A partner that opens hundreds of files at once (one SFTP session can) would hold as
many descriptors and temp files: each server sets a limit per account, each account may
override it, and the count is one per account for the whole gateway, so that spreading
the files over SFTP and HTTP gains nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gatewayd.errors import AlreadyRunning, LimitReached
from gatewayd.model import Direction

# What a refused partner is told to wait before trying again (seconds).
RETRY_AFTER = 5.0


class Slot:
    """A place held in the limits; `release()` (idempotent) gives it back."""

    def __init__(self, give_back: Callable[[], None]) -> None:
        self._give_back: Callable[[], None] | None = give_back

    def release(self) -> None:
        if self._give_back is not None:
            give_back, self._give_back = self._give_back, None
            give_back()


class TransferLimits:
    """The running count of uploads and downloads per account."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, Direction]] = Counter()
        self._names: set[tuple[str, str, str]] = set()

    def running(self, account: str, direction: Direction) -> int:
        return self._counts[(account, direction)]

    def acquire(self, account: str, direction: Direction, limit: int) -> Slot:
        """Count one more transfer of `account` in `direction`, or raise LimitReached
        when it already runs `limit` (0: no limit)."""
        key = (account, direction)
        if limit and self._counts[key] >= limit:
            what = "uploads" if direction == Direction.RECEIVE else "downloads"
            raise LimitReached(
                f"account {account} already runs {limit} {what} at once", RETRY_AFTER
            )
        self._counts[key] += 1
        return Slot(lambda: self._release(key))

    def _release(self, key: tuple[str, Direction]) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]

    def hold_name(self, account: str, rule: str, name: str) -> Slot:
        """Hold (account, rule, name) for an upload from the moment it is opened to the
        end of its run: a second upload of the same name meanwhile is refused
        (AlreadyRunning), whichever server it comes through."""
        key = (account, rule, name)
        if key in self._names:
            raise AlreadyRunning(name)
        self._names.add(key)
        return Slot(lambda: self._names.discard(key))
