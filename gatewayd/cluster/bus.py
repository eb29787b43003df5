"""The cluster bus: what the nodes sharing one PostgreSQL database tell each other.

- **Control from any node.** A pause or a cancel sent to any node's API reaches the
  node that runs the transfer: the service (gatewayd.pipeline.service) hands a RUNNING
  transfer owned by another node to `Bus.stop_elsewhere`, which posts a command for
  that node (`node_commands`) and waits, bounded, for its answer. The owner stops the
  run through its own service (its engine), answers with the status reached, and the
  caller gets the transfer as it is then. An owner that does not answer in time, or
  whose lease expired, is named in the error; the row is never written behind the
  back of a node that may still run it.
- **Wake-ups.** New due transfers (created, resumed, retried) tell the other nodes'
  schedulers to look now, and so do the runs that end on a node that stops (their
  partner slots freed); bursts coalesce into one notification per `DUE_COALESCE`.
- **Rule changes.** A rule changed through one node's API moves the notice "rules";
  the other nodes reload their configuration from their files, as a SIGHUP does. The
  rules folder must therefore be shared by the nodes (or kept identical).

Notifications are PostgreSQL's LISTEN/NOTIFY (`Store.listen`); each node also polls
its pending commands every `poll` seconds and the notice every `NOTICE_EVERY` polls,
so a notification lost (the listening connection dropped) delays, never loses, a
command. On SQLite (one node) the bus does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from gatewayd.model import Transfer
from gatewayd.pipeline.engine import StopReason
from gatewayd.pipeline.service import NotFoundError, OwnerUnavailable, StateError, TransferService
from gatewayd.store.base import Listening, NodeCommand, Notification, Store
from gatewayd.store.bus_sql import TAKEN

log = structlog.get_logger("gatewayd.cluster")

# The notice of the rules, and how often (in polls) it is read without a notification.
RULES = "rules"
NOTICE_EVERY = 5
# Seconds between two "due" notifications of one node, at most.
DUE_COALESCE = 0.1
# How often a caller waiting for an answer reads the command, besides the
# notification (seconds; never more often than this).
ANSWER_POLL = 0.25
# A rule change this recent when the node starts may have been missed by the
# configuration it loaded: the node reloads once (seconds).
RECENT_CHANGE = 60.0
# Answered commands are kept this long (what was asked of whom, for a look afterwards).
KEEP_ANSWERED = timedelta(days=1)
# The answer of a node asked to stop a transfer that now runs on another one.
MOVED = "MOVED"

# Set while this node carries out a command: it never forwards one further.
_applying: contextvars.ContextVar[bool] = contextvars.ContextVar("applying", default=False)


class _Moved(Exception):
    def __init__(self, owner: str) -> None:
        super().__init__(owner)
        self.owner = owner


def _now() -> datetime:
    return datetime.now(UTC)


async def _logged(coro: Coroutine[Any, Any, None], name: str) -> None:
    # A database that is down fails a look or an answer: the next poll tries again.
    try:
        await coro
    except Exception as exc:
        log.warning("cluster bus step failed", step=name, error=str(exc))


class Bus:
    """One node's end of the bus; see the module's docstring. `wake` wakes this node's
    scheduler; `reload` re-reads the configuration from the files (the daemon's
    SIGHUP path), called with no argument when another node changed the rules."""

    def __init__(
        self,
        store: Store,
        node: str,
        service: TransferService,
        *,
        wake: Callable[[], None],
        timeout: float = 5.0,
        poll: float = 1.0,
        notify: bool = True,
    ) -> None:
        self.store = store
        self._node = node
        self.service = service
        self.wake = wake
        self.reload: Callable[[], None] | None = None
        self.timeout = timeout
        self.poll = poll
        self.use_notify = notify
        self.enabled = store.shared
        self._listening: Listening | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        # Commands being carried out here (a notification and a poll may both see one).
        self._applying: set[int] = set()
        # Callers waiting for an answer: command id -> its event.
        self._answers: dict[int, asyncio.Event] = {}
        self._due_task: asyncio.Task[None] | None = None
        self._due_again = False
        self._rules_generation = 0
        # Why a reload is owed, while nobody can do it yet (the daemon is starting).
        self._reload_owed: str | None = None

    @property
    def node(self) -> str:
        return self._node

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Listen (PostgreSQL), take the commands left pending, start polling."""
        if not self.enabled:
            return
        notice = await self.store.get_notice(RULES)
        if notice is not None:
            self._rules_generation = notice.generation
            if _now() - notice.changed < timedelta(seconds=RECENT_CHANGE):
                self._reload("changed just before this node started")
        with contextlib.suppress(Exception):
            await self.store.purge_commands(_now() - KEEP_ANSWERED)
        for stale in await self.store.pending_commands(self._node):
            if stale.result == TAKEN:  # started by this node's previous life
                await self.store.answer_command(
                    stale.id, "", f"node '{self._node}' restarted before answering"
                )
        if self.use_notify:
            self._listening = await self.store.listen(self._heard, self._connected)
        self._poller = asyncio.create_task(self._poll_loop(), name="cluster-bus-poll")

    async def stop(self) -> None:
        """Stop listening and polling; commands being carried out finish."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._listening is not None:
            await self._listening.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(_logged(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ what is heard

    def _heard(self, n: Notification) -> None:
        if n.kind == "command" and n.node == self._node:
            with contextlib.suppress(ValueError):
                self._spawn(self._take(int(n.value)), "cluster-bus-command")
        elif n.kind == "answer" and n.node == self._node:
            with contextlib.suppress(ValueError):
                event = self._answers.get(int(n.value))
                if event is not None:
                    event.set()
        elif n.kind == "due" and n.node != self._node:
            self.wake()
        elif n.kind == "notice" and n.value == RULES and n.node != self._node:
            self._spawn(self._check_notice(), "cluster-bus-notice")

    def _connected(self) -> None:
        # Whatever was sent while nobody listened: the pending commands, new due rows.
        self._spawn(self._take_pending(), "cluster-bus-pending")
        self.wake()

    async def _poll_loop(self) -> None:
        count = 0
        while True:
            try:
                await self._take_pending()
                count += 1
                if count % NOTICE_EVERY == 0:
                    await self._check_notice()
            except Exception as exc:
                log.warning("cluster bus poll failed", error=str(exc))
            await asyncio.sleep(self.poll)

    async def _take_pending(self) -> None:
        for command in await self.store.pending_commands(self._node):
            if command.id not in self._applying and command.result != TAKEN:
                self._spawn(self._apply(command), "cluster-bus-command")

    async def _take(self, command_id: int) -> None:
        command = await self.store.get_command(command_id)
        if command is not None and command.answered is None and command.node == self._node:
            await self._apply(command)

    # ------------------------------------------------------------------ commands here

    async def _apply(self, command: NodeCommand) -> None:
        """Carry out a command of another node through this node's service, once."""
        if command.id in self._applying:
            return
        self._applying.add(command.id)
        try:
            # Once: not withdrawn by its sender meanwhile, not carried out already.
            taken = await self.store.take_command(command.id)
        except BaseException:
            self._applying.discard(command.id)
            raise
        if not taken:
            self._applying.discard(command.id)
            return
        token = _applying.set(True)
        result, error = "", ""
        try:
            if command.action == StopReason.PAUSE.value:
                result = (await self.service.pause(command.transfer_id)).status.value
            elif command.action == StopReason.CANCEL.value:
                result = (await self.service.cancel(command.transfer_id)).status.value
            else:
                error = f"unknown action {command.action!r}"
        except _Moved as exc:
            result, error = MOVED, exc.owner
        except (StateError, NotFoundError) as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("a command of another node failed", command=command.id)
            error = f"internal error on node {self._node}: {type(exc).__name__}"
        finally:
            _applying.reset(token)
        try:
            answered = await self.store.answer_command(command.id, result, error)
        finally:
            self._applying.discard(command.id)
        log.info(
            "command of another node carried out" if answered else "command answered late",
            command=command.id,
            action=command.action,
            transfer_id=command.transfer_id,
            sender=command.sender,
            result=result,
            error=error,
        )

    # ------------------------------------------------------------------ commands sent

    async def stop_elsewhere(self, transfer: Transfer, reason: StopReason) -> Transfer | None:
        """See `gatewayd.pipeline.service.Forwarder`."""
        owner, transfer_id = transfer.owner, transfer.id
        assert owner is not None and transfer_id is not None
        if _applying.get():
            raise _Moved(owner)  # the sender asks the new owner itself
        lease = await self.store.node_lease(owner)
        now = _now()
        if lease is not None and lease.stopped is not None:
            raise OwnerUnavailable(
                f"transfer {transfer_id} is RUNNING on node '{owner}', which stopped at "
                f"{lease.stopped.isoformat(timespec='seconds')} without ending it: it is "
                f"interrupted when that node starts again or another takes it over; "
                f"{reason.value} it then",
                owner,
                lease.lease_seconds,
            )
        if lease is not None and not lease.alive(now):
            ago = (now - lease.heartbeat).total_seconds()
            raise OwnerUnavailable(
                f"transfer {transfer_id} is RUNNING on node '{owner}', which has not renewed "
                f"its lease for {ago:.0f} s (lease {lease.lease_seconds:g} s): a live node "
                f"takes its transfers over (INTERRUPTED); {reason.value} it then",
                owner,
                lease.lease_seconds,
            )
        command = await self.store.post_command(owner, transfer_id, reason.value, self._node)
        answer = await self._answer(command.id)
        if answer is None:
            # Withdrawn, so that the owner never carries it out after we said it was not;
            # unless the owner has started on it: then its answer is worth a while more.
            if await self.store.withdraw_command(command.id, f"no answer in {self.timeout:g} s"):
                raise OwnerUnavailable(
                    f"transfer {transfer_id} is RUNNING on node '{owner}', which did not "
                    f"answer within {self.timeout:g} s; nothing was changed",
                    owner,
                    self.timeout,
                )
            answer = await self._answer(command.id)
            if answer is None:
                raise OwnerUnavailable(
                    f"node '{owner}' is carrying out the {reason.value} of transfer "
                    f"{transfer_id} but has not answered within {2 * self.timeout:g} s; "
                    "look at the transfer again",
                    owner,
                    self.timeout,
                )
        if answer.result == MOVED:
            return None
        if answer.error:
            raise StateError(f"node '{owner}': {answer.error}")
        found = await self.store.get_transfer(transfer_id)
        if found is None:
            raise NotFoundError(f"no transfer {transfer_id}")
        return found

    async def _answer(self, command_id: int) -> NodeCommand | None:
        """The command once answered; None when the time is up."""
        event = self._answers.setdefault(command_id, asyncio.Event())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            while True:
                command = await self.store.get_command(command_id)
                if command is None or command.answered is not None:
                    return command
                left = deadline - loop.time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, ANSWER_POLL)):
                        await event.wait()
        finally:
            self._answers.pop(command_id, None)

    # ------------------------------------------------------------------ wake-ups

    def due(self) -> None:
        """Tell the other nodes' schedulers to look now (coalesced)."""
        if not self.enabled or not self.use_notify:
            return
        self._due_again = True
        if self._due_task is None or self._due_task.done():
            self._due_task = asyncio.get_running_loop().create_task(
                self._send_due(), name="cluster-bus-due"
            )

    async def _send_due(self) -> None:
        while self._due_again:
            self._due_again = False
            try:
                await self.store.notify(Notification("due", self._node))
            except Exception as exc:
                log.warning("cannot wake the other nodes", error=str(exc))
            await asyncio.sleep(DUE_COALESCE)

    def slot_freed(self, queued: int, stopping: bool) -> None:
        """A run of this node ended, freeing a slot here and one of its partner for
        every node. This node's scheduler looks again at once and takes it, so the
        others are told only when this node stops (it takes nothing more) while
        transfers wait (`queued`, as this node last saw them): waking every node at
        each end of a run would make them all look (and contend for the same rows)
        for a slot that one of them takes anyway."""
        if stopping and queued > 0:
            self.due()

    # ------------------------------------------------------------------ rule notices

    def rules_changed(self) -> None:
        """The rules were changed through this node's API (and are in force here):
        the other nodes reload theirs."""
        if self.enabled:
            self._spawn(self._bump_rules(), "cluster-bus-rules")

    async def _bump_rules(self) -> None:
        try:
            notice = await self.store.bump_notice(RULES, self._node)
        except Exception as exc:
            log.error("cannot tell the other nodes that the rules changed", error=str(exc))
            return
        if notice.generation == self._rules_generation + 1:
            self._rules_generation = notice.generation
        else:
            # Another node changed them too since we last looked.
            await self._check_notice()

    async def _check_notice(self) -> None:
        notice = await self.store.get_notice(RULES)
        if notice is None or notice.generation <= self._rules_generation:
            return
        self._rules_generation = notice.generation
        self._reload(f"changed through node '{notice.by_node}'")

    def set_reload(self, reload: Callable[[], None]) -> None:
        """How this node re-reads its configuration (the daemon's SIGHUP path); a
        reload owed since the start happens now."""
        self.reload = reload
        if self._reload_owed is not None:
            why, self._reload_owed = self._reload_owed, None
            self._reload(why)

    def _reload(self, why: str) -> None:
        if self.reload is None:
            self._reload_owed = why
            return
        log.info("reloading the configuration: the rules changed", reason=why)
        self.reload()
