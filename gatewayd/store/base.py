"""The store interface: the only way the rest of gatewayd reaches the database.

Callers pass and get `Transfer` objects; no SQL leaves the store package, so another
backend (PostgreSQL) can implement this interface without touching its callers.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from gatewayd.model import Status, Transfer
from gatewayd.store.console_sessions import ConsoleSessionRow
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
    owner: str | None = None  # the node that runs it (RUNNING rows)
    limit: int = 20
    offset: int = 0
    sort: str = "id"  # one of SORT_FIELDS
    descending: bool = False
    # The console's filters: direction, protocol, and a file name pattern (`*` any
    # characters, `?` one; case-insensitive) matched against either side's name.
    is_send: bool | None = None
    protocol: str | None = None
    filename_pattern: str | None = None


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


# -- cluster bus: commands between nodes, notifications, notices --------------------


@dataclass(frozen=True)
class NodeCommand:
    """A request of one node (`sender`) to another (`node`): `action` (pause, cancel)
    on a transfer that node runs. `answered` once the target carried it out: `result`
    is the status the transfer reached, or `error` says why nothing was done (or the
    sender withdrew it). Unanswered, `result` is "TAKEN" once the target started on it."""

    id: int
    node: str
    transfer_id: int
    action: str
    sender: str
    created: datetime
    answered: datetime | None = None
    result: str = ""
    error: str = ""


@dataclass(frozen=True)
class NodeLease:
    """A node's lease as the `nodes` table holds it (written by the node itself)."""

    name: str
    heartbeat: datetime
    lease_seconds: float
    stopped: datetime | None = None

    def alive(self, now: datetime) -> bool:
        """Not stopped, and its last heartbeat within its lease."""
        return self.stopped is None and now - self.heartbeat <= timedelta(
            seconds=self.lease_seconds
        )


@dataclass(frozen=True)
class Notice:
    """What every node must reload (`name`, e.g. "rules"): a generation that moves
    each time one node changes it."""

    name: str
    generation: int
    changed: datetime
    by_node: str = ""


@dataclass(frozen=True)
class Notification:
    """A message to the nodes listening on the database: `kind` is "command" (`node`
    has a command to take, `value` its id), "answer" (`node` sent the command `value`
    that is now answered), "notice" (`node` moved the notice `value`) or "due" (`node`
    has new due transfers)."""

    kind: str
    node: str
    value: str = ""


class Listening:
    """A listener started by `Store.listen`; `close()` stops it. This one hears
    nothing: a database of one node (SQLite) has nobody to hear from."""

    async def close(self) -> None:
        """Stop listening."""


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

    async def insert_soon(self, transfer: Transfer) -> Awaitable[None]:
        """Start inserting a new row: `transfer` has its id (and what `insert_transfer`
        sets) on return, and the returned awaitable ends once the row is committed
        (raising if it failed). A partner's open is answered without waiting for its
        commit, which is awaited before anything depends on the row (the placing of the
        file, the next save). Here: committed before the return."""
        await self.insert_transfer(transfer)
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        committed.set_result(None)
        return committed

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
        the nodes claiming at the same time: PostgreSQL launches a row only while it
        is still PLANNED, and locks no row it does not take (a claim that leaves a row,
        its node or the partner full, never hides it from another node's claim).

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

    # -- console sessions (shared by the nodes) ---------------------------------------

    @abstractmethod
    async def insert_console_session(self, row: ConsoleSessionRow) -> None:
        """Record a new console session; returns once committed."""

    @abstractmethod
    async def get_console_session(self, session_id: str) -> ConsoleSessionRow | None:
        """The session of that id (the cookie's digest), ended or not."""

    @abstractmethod
    async def touch_console_session(self, session_id: str, seen: datetime) -> None:
        """Move the session's last activity forward to `seen` (never back)."""

    @abstractmethod
    async def delete_console_session(self, session_id: str) -> bool:
        """End a session; whether it was there. Returns once committed."""

    @abstractmethod
    async def delete_user_console_sessions(self, user: str) -> None:
        """End every session of `user`."""

    @abstractmethod
    async def forget_console_sessions(
        self, seen_before: datetime, opened_before: datetime, keep: int
    ) -> None:
        """Drop the sessions last seen before `seen_before` or opened before
        `opened_before`, and the oldest beyond the `keep` newest."""

    # -- nodes (issue 13: node registry, leases, takeover) ------------------------------

    @abstractmethod
    async def db_now(self) -> datetime:
        """The database's clock (aware UTC): every heartbeat is written and every lease
        judged by it, so that nodes whose clocks differ agree on who is alive. SQLite
        (one machine) reads the local clock; PostgreSQL the server's."""

    @abstractmethod
    async def lock_node(self, name: str) -> None:
        """Take the per-node guard for the life of the store: a second daemon of the
        same name is refused with `NodeLocked`. SQLite: nothing (the state folder's
        lock file already keeps one daemon per database file)."""

    def hold_lease(self, until: float | None) -> None:  # noqa: B027
        """Refuse every write (`LeaseLost`) once `time.monotonic()` passes `until`: the
        node's lease is renewed up to then, after it another node may own its rows
        (a node frozen for a while, then thawed, writes nothing before it learns it).
        None: no limit. A store of one node (SQLite) ignores it."""

    @abstractmethod
    async def register_node(self, node: NodeRecord) -> None:
        """Record this node as started (insert, or replace an older record of the same
        name): heartbeat fresh, `stopped` and `taken_over_*` cleared."""

    @abstractmethod
    async def renew_heartbeat(self, name: str, now: datetime) -> bool:
        """Set the node's heartbeat to `now`; False when the node was taken over
        meanwhile (or its record is gone, or its guard lost to another daemon): it must
        stop at once, its rows are another node's now."""

    @abstractmethod
    async def list_nodes(self, now: datetime) -> list[NodeState]:
        """Every node recorded, by name, each with its RUNNING rows counted and whether
        its lease holds at `now`."""

    @abstractmethod
    async def stop_node(self, name: str, now: datetime) -> None:
        """Record a clean stop: a stopped node is never taken over."""

    @abstractmethod
    async def take_over(self, dead: str, by: str, now: datetime) -> list[Transfer] | None:
        """If node `dead`'s lease has expired at `now` (and it neither stopped nor was
        taken over), claim it for `by` and make its RUNNING rows INTERRUPTED (the
        lifecycle's CRASH) with `taken_over_by`/`taken_over_at` set, in one
        transaction; returns those rows. Whatever the nodes trying at the same time,
        one wins: the others get None (as does a live, stopped or taken node)."""

    # -- cluster bus: commands between nodes, notifications, notices ----------------

    @property
    def shared(self) -> bool:
        """Whether several nodes may share this database (PostgreSQL)."""
        return False

    @abstractmethod
    async def save_transfer_if(self, transfer: Transfer, status: Status) -> bool:
        """Save `transfer` (as `save_transfer`) only if its row's status is still
        `status`; False, nothing written, when it changed meanwhile (another node
        claimed the row). Pending saves are written first."""

    @abstractmethod
    async def post_command(
        self, node: str, transfer_id: int, action: str, sender: str
    ) -> NodeCommand:
        """Record a command for `node`; on a shared database the node is notified
        (a "command" notification) in the same commit."""

    @abstractmethod
    async def pending_commands(self, node: str) -> list[NodeCommand]:
        """The commands of `node` not answered yet, oldest first."""

    @abstractmethod
    async def answer_command(self, command_id: int, result: str, error: str = "") -> bool:
        """Answer a command (once: False when it was already answered, or is unknown);
        its sender is notified (an "answer" notification) in the same commit."""

    @abstractmethod
    async def take_command(self, command_id: int) -> bool:
        """The target starts on a command (its result becomes "TAKEN"): False when it
        was answered or withdrawn meanwhile, or another start took it."""

    @abstractmethod
    async def withdraw_command(self, command_id: int, error: str) -> bool:
        """The sender gives up on a command, answering it with `error`, only while its
        target has not started on it (False: answered or taken)."""

    @abstractmethod
    async def get_command(self, command_id: int) -> NodeCommand | None: ...

    @abstractmethod
    async def purge_commands(self, answered_before: datetime) -> int:
        """Delete the commands answered before `answered_before`; returns how many."""

    @abstractmethod
    async def bump_notice(self, name: str, by_node: str) -> Notice:
        """Move the notice `name` to its next generation (the first is 1); the nodes
        are notified (a "notice" notification) in the same commit."""

    @abstractmethod
    async def get_notice(self, name: str) -> Notice | None:
        """The notice `name` (None: it never moved)."""

    @abstractmethod
    async def node_lease(self, name: str) -> NodeLease | None:
        """The lease of node `name` (None: no such node registered)."""

    @abstractmethod
    async def next_due_after(self, now: datetime) -> datetime | None:
        """The earliest time after `now` at which a PLANNED transfer becomes due (None:
        none becomes due later); one aggregate, whatever the backlog."""

    @abstractmethod
    async def notify(self, notification: Notification) -> None:
        """Tell every node listening (a no-op where nobody else can listen)."""

    @abstractmethod
    async def listen(
        self, heard: Callable[[Notification], None], connected: Callable[[], None]
    ) -> Listening:
        """Call `heard` for every notification of any node (this one's included) until
        the returned listener is closed. `connected` is called each time listening
        (re)starts: notifications sent while it was down are lost, so the caller looks
        at the database then. Callbacks run on the event loop and must not block."""

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

    # -- watchers ----------------------------------------------------------------------

    @abstractmethod
    async def insert_watched(self, items: list[tuple[WatchedFile, list[Transfer]]]) -> list[int]:
        """Record each file a watcher took together with its transfers, all in one
        commit. A file whose key (watcher, path, inode, size, mtime_ns) is recorded
        already is skipped: its transfers are not inserted (their ids stay None). Returns
        the indexes of `items` recorded now."""

    @abstractmethod
    async def live_watched(self, watcher: str, after_id: int = 0) -> list[LiveWatched]:
        """The files `watcher` took that were not seen gone since (those recorded after
        record `after_id` only, for a watcher that keeps the others in memory)."""

    @abstractmethod
    async def mark_watched_gone(self, ids: list[int], at: datetime) -> None:
        """The files of these records are no longer where they were taken."""

    @abstractmethod
    async def count_watched(self, watcher: str) -> int:
        """How many files `watcher` ever took."""

    async def try_watch_lock(self, watcher: str) -> bool:
        """Whether this node may scan `watcher` now. One node per database (SQLite):
        always. PostgreSQL: a session advisory lock, held until `release_watch_lock`
        or until this node's connection ends (its death)."""
        return True

    async def release_watch_lock(self, watcher: str) -> None:  # noqa: B027
        """Let another node scan `watcher`."""

    # -- schedules and pollers ----------------------------------------------------------

    @abstractmethod
    async def ensure_schedules(self, names: list[str], now: datetime) -> None:
        """Record the schedules of `names` not known yet as known since `now` (one
        already known keeps its date)."""

    @abstractmethod
    async def schedule_states(self) -> list[ScheduleState]:
        """Every schedule the database knows, by name."""

    @abstractmethod
    async def schedule_state(self, name: str) -> ScheduleState | None:
        """The schedule `name`, if the database knows it."""

    @abstractmethod
    async def insert_fire(
        self, schedule: str, fire_time: datetime, transfers: list[Transfer], node: str
    ) -> bool:
        """Record the firing of `schedule` at `fire_time` and insert its transfers in
        the same commit. False (nothing inserted, the transfers keep no id) when that
        firing is recorded already: by another node, or before a restart."""

    @abstractmethod
    async def set_schedule_paused(self, name: str, paused: bool, now: datetime) -> bool:
        """Pause or resume a known schedule; False when it is not known."""

    @abstractmethod
    async def set_schedule_error(self, name: str, error: str, now: datetime) -> None:
        """Record the last error of a schedule ("" once a firing succeeded)."""

    @abstractmethod
    async def poller_taken(self, poller: str) -> set[tuple[str, int, str]]:
        """The remote files `poller` made a transfer of: (name, size, mtime text)."""

    @abstractmethod
    async def insert_take(
        self, poller: str, key: tuple[str, int, str], transfer: Transfer, node: str
    ) -> bool:
        """Record that `poller` took remote file `key` (name, size, mtime text) and
        insert its transfer, in one commit. False (nothing inserted, the transfer keeps
        no id) when that file was taken already."""

    # -- leftovers of placed files

    @abstractmethod
    async def temp_paths_in_use(self) -> set[str]:
        """The temp paths of every transfer not finished (not DONE nor CANCELLED): the
        temp names a start-up sweep must leave alone."""

    # -- automation state: pause, a poller's first looks, retention (migration 0010) ----

    @abstractmethod
    async def set_paused(self, kind: str, name: str, paused: bool, by: str, at: datetime) -> None:
        """Pause or resume the watcher, poller or schedule (`kind`) `name` on every
        node: whichever runs it reads this state before each scan, look or firing."""

    @abstractmethod
    async def pause_states(self, kind: str) -> dict[str, PauseState]:
        """The pause states recorded for `kind` (an object never paused has none)."""

    @abstractmethod
    async def poller_seen(self, poller: str) -> dict[str, tuple[int, str]]:
        """A poller's last look: each matching file not taken yet, by name, with its
        size and modification time (text)."""

    @abstractmethod
    async def set_poller_seen(
        self, poller: str, seen: dict[str, tuple[int, str]], dropped: list[str], at: datetime
    ) -> None:
        """Record the files of a look (new ones, or with another size or time now) and
        forget those `dropped` (taken, or no longer listed), in one commit."""

    @abstractmethod
    async def note_poller_listing(
        self, poller: str, listed: set[tuple[str, int, str]], at: datetime
    ) -> None:
        """After a look that listed `listed` (name, size, mtime text): each file taken
        and not listed is marked gone since `at` (unless it was already); each listed
        again is not gone any more. Only gone records are ever purged."""

    @abstractmethod
    async def purge_automation(self, before: datetime) -> dict[str, int]:
        """Drop the records of the automation that no longer guard anything and are
        older than `before`: watched files seen gone, remote files no longer listed,
        firings but the newest of each schedule; only those whose transfers are DONE
        or CANCELLED; and a poller's first looks older than `before`. How many of each
        table ("watched_files", "poller_files", "schedule_runs", "poller_seen")."""


class LiveWatched(NamedTuple):
    """What a scan compares with each file it sees: a record not seen gone yet."""

    id: int
    path: str
    inode: int
    size: int
    mtime_ns: int

    @property
    def ident(self) -> tuple[int, int, int]:
        return (self.inode, self.size, self.mtime_ns)


@dataclass(frozen=True)
class WatchedFile:
    """A file a watcher took: where it was (`path`, below the watched folder, '/'
    separated), what it was, and the transfers it became."""

    watcher: str
    path: str
    inode: int
    size: int
    mtime_ns: int
    taken: datetime
    transfers: list[int] = field(default_factory=list)
    node: str = ""
    gone: datetime | None = None
    id: int | None = None


class LeaseLost(RuntimeError):
    """A write refused: this node's lease may have run out, its rows may be another
    node's (see `Store.hold_lease`)."""


class NodeLocked(Exception):
    """Another daemon of the same node name holds the node's guard."""


@dataclass(frozen=True)
class NodeRecord:
    """What a node says of itself when it starts."""

    name: str
    started: datetime
    lease: float  # seconds
    host: str = ""
    pid: int = 0
    version: str = ""
    marker: str = ""  # the token of its marker file in the shared data folder
    api: str = ""  # its API address (informational)


@dataclass(frozen=True)
class NodeState:
    """A node as `list_nodes` reads it."""

    name: str
    host: str
    pid: int
    version: str
    started: datetime
    heartbeat: datetime
    lease: float
    marker: str
    api: str
    stopped: datetime | None
    taken_over_by: str | None
    taken_over_at: datetime | None
    running: int  # RUNNING rows it owns
    alive: bool  # its lease holds (not stopped, not taken over)


# -- schedules and pollers ---------------------------------------------------------------


@dataclass(frozen=True)
class PauseState:
    """A watcher's, poller's or schedule's pause, shared by the nodes: who paused it
    and when (kept after a resume, for the record)."""

    kind: str
    name: str
    paused: bool
    paused_by: str = ""
    paused_at: datetime | None = None


@dataclass(frozen=True)
class ScheduleState:
    """What the database knows of a schedule: since when (missed firings count from
    then or from the last firing), paused or not, the last error, and its firings."""

    name: str
    since: datetime
    paused: bool = False
    last_error: str = ""
    last_fire: datetime | None = None
    last_transfer_id: int | None = None
    fires: int = 0
