"""The store interface: the only way the rest of gatewayd reaches the database.

Callers pass and get `Transfer` objects; no SQL leaves the store package, so another
backend (PostgreSQL) can implement this interface without touching its callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatewayd.model import Status, Transfer
from gatewayd.store.login_failures import LoginFailures

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
    stop_before: datetime | None = None  # ended at or before (unfinished ones never match)
    filename: str | None = None  # the file's name on either side
    follow_id: str | None = None
    parent_id: int | None = None
    limit: int = 20
    offset: int = 0
    sort: str = "id"  # one of SORT_FIELDS
    descending: bool = False


@dataclass(frozen=True)
class TapisTask:
    """A transfer task of the Tapis-compatible API; its children are the transfers whose
    follow_id is `uuid`. `elements` are JSON objects (see gatewayd.api.tapis)."""

    uuid: str
    username: str
    created: datetime
    tag: str = ""
    elements: list[dict[str, Any]] = field(default_factory=list)
    cancelled: datetime | None = None


@dataclass(frozen=True)
class ApiToken:
    """A bearer token of the admin API, as stored: its id (the JWT's `jti`), never the
    token itself."""

    id: str
    user: str
    created: datetime
    expires: datetime
    permissions: Mapping[str, str] = field(default_factory=dict)  # area -> "rwd"
    comment: str = ""
    revoked: datetime | None = None
    # May list and revoke tokens (never issue them: only a password login can).
    manage_tokens: bool = False

    def active(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        return self.revoked is None and now < self.expires


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

    def observe_commits(self, callback: Callable[[float], None] | None) -> None:  # noqa: B027
        """Have `callback` told the seconds each committed write took (metrics); a
        store that cannot tell ignores it."""

    @abstractmethod
    async def insert_transfer(self, transfer: Transfer) -> Transfer:
        """Persist a new row; sets `id`, `created`, `updated` (and `remote_id`/`follow_id`
        when empty) on the object; returns it once committed."""

    @abstractmethod
    async def insert_transfers(self, transfers: list[Transfer]) -> None:
        """Persist new rows in one commit: all of them or none (ids set as by
        `insert_transfer`, taken back when it fails)."""

    @abstractmethod
    async def save_transfer(self, transfer: Transfer) -> None:
        """Persist the current state of an existing row; returns once committed.

        Saves issued while a commit is in flight are batched into the next one, and
        several saves of the same row coalesce into one write of its latest state. A
        RUNNING row is recorded as owned by this store's node (as is a new row inserted
        RUNNING): the node that runs it.
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
        """At start-up: the RUNNING rows of this node become INTERRUPTED (they were
        ours, and we died: the lifecycle's CRASH). Returns the rows changed. A database
        of one node (SQLite) takes every RUNNING row; a shared one (PostgreSQL) those
        this node owns and those nobody owns."""

    @abstractmethod
    async def claim_due(
        self,
        now: datetime,
        limit: int,
        node: str,
        max_running: int,
        partner_limits: Mapping[str, int],
        default_partner_limit: int,
    ) -> list[Transfer]:
        """Atomically take due transfers (as `due_transfers` finds them) for `node`:
        each becomes RUNNING (the lifecycle's LAUNCH) owned by `node`, in one
        transaction, and is returned (oldest first). A row is claimed once, whatever
        the nodes claiming at the same time: PostgreSQL locks the rows it looks at
        (`FOR UPDATE SKIP LOCKED`), rows another claim holds are left to it.

        At most `max_running` rows are taken: the node's free slots (the node counts
        its own runs: its RUNNING rows also include server transfers that partners
        opened, which take no slot). A row with a partner is taken only while that
        partner's RUNNING rows, counted across every node, stay below its limit
        (`partner_limits[partner]`, else `default_partner_limit`); rows without a
        partner (server transfers the gateway finishes alone) take a slot only. Due rows
        are read `limit` at a time, oldest first; rows of full partners are skipped, so
        that a later row of another partner is not held back by them.
        """

    @abstractmethod
    async def plan_interrupted(self, ids: list[int]) -> list[Transfer]:
        """The INTERRUPTED rows among `ids` become PLANNED (the lifecycle's RESUME), their
        next attempt cleared, in one commit; returns the rows changed. A row that is no
        longer INTERRUPTED (another node resumed it, and may run it) is left as it is."""

    @abstractmethod
    async def count_due(self, now: datetime) -> int:
        """How many transfers are due at `now` (PLANNED, as `due_transfers` finds them)."""

    @abstractmethod
    async def due_transfers(self, now: datetime, limit: int) -> list[Transfer]:
        """Transfers that may start now: PLANNED (client transfers, and server ones that
        finish without their partner) whose `start` and `next_attempt` have passed,
        oldest first."""

    @abstractmethod
    async def next_due_time(self) -> datetime | None:
        """When the next PLANNED transfer becomes due (None: none is planned)."""

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

    @abstractmethod
    async def expire_available(self, now: datetime, message: str) -> list[Transfer]:
        """Pre-registered server transfers (AVAILABLE) whose expiry (`next_attempt`) is
        at or before `now` become ERROR with TeExpired and `message`, in one commit.
        Returns the rows changed."""

    @abstractmethod
    async def next_expiry(self) -> datetime | None:
        """The earliest expiry of an AVAILABLE transfer (None: none is waiting)."""

    @abstractmethod
    async def insert_tapis_task(self, task: TapisTask, children: list[Transfer]) -> None:
        """Record a new Tapis transfer task and its child transfers, in one commit:
        the task with all of its children, or nothing."""

    @abstractmethod
    async def get_tapis_task(self, uuid: str) -> TapisTask | None: ...

    @abstractmethod
    async def list_tapis_tasks(self, limit: int, offset: int) -> list[TapisTask]:
        """Most recent first."""

    @abstractmethod
    async def cancel_tapis_task(self, uuid: str, at: datetime) -> None:
        """Mark the task cancelled (its children are cancelled by the caller)."""

    @abstractmethod
    async def insert_token(self, token: ApiToken) -> None:
        """Record a newly issued API token; returns once committed. Raises ValueError
        when the id is taken."""

    @abstractmethod
    async def get_token(self, token_id: str) -> ApiToken | None: ...

    @abstractmethod
    async def list_tokens(self, user: str | None = None) -> list[ApiToken]:
        """Every token (of `user` when given), newest first, revoked and expired ones
        included."""

    @abstractmethod
    async def revoke_token(self, token_id: str, at: datetime) -> bool:
        """Mark a token revoked at `at`; False when there is no such token or it was
        already revoked. Returns once committed."""

    # -- the login throttle across nodes (cluster: shared) ----------------------------

    @abstractmethod
    async def login_failures(self, keys: list[str]) -> list[LoginFailures]:
        """The counts of those of `keys` that have failures recorded."""

    @abstractmethod
    async def add_login_failure(
        self,
        key: str,
        now: datetime,
        *,
        window_start: datetime,
        ban_start: datetime,
        limit: int | None,
    ) -> LoginFailures:
        """Count one failure of `key` at `now` and return its count. The count starts
        again at 1 when it is below `limit` and began before `window_start` (its window
        passed), or reached `limit` (a ban) with its last failure before `ban_start`."""

    @abstractmethod
    async def clear_login_failures(self, key: str) -> None:
        """Forget `key`'s failures (a good login of an account)."""

    @abstractmethod
    async def forget_login_failures(self, before: datetime) -> int:
        """Drop the counts whose last failure is older than `before`; how many."""
