"""The store interface: the only way the rest of gatewayd reaches the database.

Callers pass and get `Transfer` objects; no SQL leaves the store package, so another
backend (PostgreSQL) can implement this interface without touching its callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gatewayd.model import Status, Transfer

# Columns a listing may be sorted on (API names); anything else is refused by the API.
SORT_FIELDS = ("id", "start", "stop", "status", "rule", "requester", "requested", "filesize")


@dataclass(frozen=True)
class TransferFilter:
    """What `list_transfers` returns; every field narrows the result."""

    statuses: tuple[Status, ...] = ()
    rule: str | None = None
    partner: str | None = None
    account: str | None = None
    is_server: bool | None = None
    start_after: datetime | None = None
    follow_id: str | None = None
    parent_id: int | None = None
    limit: int = 20
    offset: int = 0
    sort: str = "id"  # one of SORT_FIELDS
    descending: bool = False


class Store(ABC):
    """Persistent transfer rows. Open with `open()`, which applies pending migrations."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, set pragmas, apply migrations, start the writer."""

    @abstractmethod
    async def close(self) -> None:
        """Flush every pending write, stop the writer, close the connection."""

    @abstractmethod
    async def schema_version(self) -> int:
        """The highest migration applied."""

    @abstractmethod
    async def insert_transfer(self, transfer: Transfer) -> Transfer:
        """Persist a new row; sets `id`, `created`, `updated` (and `remote_id`/`follow_id`
        when empty) on the object; returns it once committed."""

    @abstractmethod
    async def save_transfer(self, transfer: Transfer) -> None:
        """Persist the current state of an existing row; returns once committed.

        Saves issued while a commit is in flight are batched into the next one, and
        several saves of the same row coalesce into one write of its latest state.
        """

    @abstractmethod
    async def get_transfer(self, transfer_id: int) -> Transfer | None: ...

    @abstractmethod
    async def list_transfers(self, filt: TransferFilter) -> tuple[list[Transfer], int]:
        """The page of rows `filt` asks for, and the total number matching it."""

    @abstractmethod
    async def find_unfinished_upload(
        self, account: str, rule: str, filename: str
    ) -> Transfer | None:
        """The latest server receive transfer of (account, rule, file name) that is not
        DONE or CANCELLED: the one a partner's resumed upload continues."""

    @abstractmethod
    async def interrupt_running(self) -> list[Transfer]:
        """At start-up: every RUNNING row becomes INTERRUPTED (they were ours, and we
        died). Returns the rows changed."""

    @abstractmethod
    async def due_client_transfers(self, now: datetime, limit: int) -> list[Transfer]:
        """Client transfers that may start now: PLANNED whose `start` and `next_attempt`
        have passed, oldest first."""

    @abstractmethod
    async def next_due_time(self) -> datetime | None:
        """When the next PLANNED client transfer becomes due (None: none is planned)."""

    @abstractmethod
    async def audit(
        self, who: str, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record an administrative action (who did what to which object); returns once
        committed. `details` is JSON-like; values JSON cannot carry are stored as text."""

    @abstractmethod
    async def list_audit(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Audit entries, newest first, as dicts: `id`, `at` (aware UTC datetime), `who`,
        `action`, `target`, `details` (dict)."""
