"""This node among the others: its record, its lease, the takeover of dead nodes.

`Membership.join()` (at start, before the node touches a transfer row) takes the node's
guard (a second daemon of the same name is refused), writes the shared-folder marker,
registers the node, checks the other live nodes' markers and starts the heartbeat,
renewed every quarter of the lease. Once the gateway runs, `start()` has each beat also
take over the nodes whose lease expired: their RUNNING transfers become INTERRUPTED
(recorded: by whom, when), and those that go on without their partner are handed to
`resume` (the scheduler's `resume_interrupted`, as at a start-up), the others wait for
their partner to reconnect, to any node.

Fencing: a node that learns it was taken over, or that could not renew its lease for
most of it (another node may take it over any moment), must not write another row: its
transfers are another node's now. `on_fenced` is called then; the daemon's ends the
process at once (a graceful stop would save the rows it runs, over the new owner's).

With SQLite (one node per database) the node is registered and its heartbeat kept, for
`/api/about`; nobody else can take it over, so there is no takeover and no fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from gatewayd import __version__
from gatewayd.cluster import shared_folder
from gatewayd.model import Transfer
from gatewayd.store.base import NodeLocked, NodeRecord, NodeState, Store

log = structlog.get_logger("gatewayd.cluster")

# The part of the lease a node may go without renewing before it fences itself: the
# rest is its margin against a takeover (another node looks only once the whole lease
# has passed, by the database's clock).
FENCE_AT = 0.8
BEATS_PER_LEASE = 4


class JoinError(Exception):
    """The node must not start: the message says why, in one line."""


class Membership:
    """This node's membership of the database's nodes (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        node: str,
        lease: float,
        data_dir: Path,
        shared: bool,
        on_fenced: Callable[[str], Any],
        api: str = "",
        rule_folders: dict[str, Path] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.lease = lease
        self.data_dir = data_dir
        # Several nodes may share the database (PostgreSQL): markers, takeovers, fencing.
        self.shared = shared
        self.on_fenced = on_fenced
        self.api = api
        self.rule_folders = dict(rule_folders or {})
        self.resume: Callable[[list[Transfer]], Awaitable[list[Transfer]]] | None = None
        self._token = shared_folder.new_token()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._fenced = False
        self._joined = time.monotonic()
        self._takeover: asyncio.Task[None] | None = None
        # Takeovers done by this node: (dead node, rows) for tests and the log.
        self.takeovers: list[tuple[str, int]] = []

    @property
    def interval(self) -> float:
        return self.lease / BEATS_PER_LEASE

    async def join(self) -> None:
        """Guard, marker, record, marker check; raises JoinError (one line) when this
        node must not start."""
        try:
            await self.store.lock_node(self.node)
        except NodeLocked as exc:
            raise JoinError(str(exc)) from None
        if self.shared:
            try:
                await asyncio.to_thread(
                    shared_folder.write_marker, self.data_dir, self.node, self._token
                )
            except OSError as exc:
                raise JoinError(
                    f"cannot write the node's marker in {self.data_dir}: {exc.strerror or exc}"
                ) from None
        self._joined = time.monotonic()
        now = await self.store.db_now()
        await self.store.register_node(
            NodeRecord(
                self.node,
                now,
                self.lease,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=__version__,
                marker=self._token if self.shared else "",
                api=self.api,
            )
        )
        if not self.shared:
            self._start_beat()
            return
        others = [
            (n.name, n.marker) for n in await self.store.list_nodes(now) if self._other_live(n)
        ]
        try:
            await asyncio.to_thread(shared_folder.check_markers, self.data_dir, self.node, others)
        except shared_folder.NotShared as exc:
            await self.store.stop_node(self.node, await self.store.db_now())
            await asyncio.to_thread(
                shared_folder.remove_marker, self.data_dir, self.node, self._token
            )
            raise JoinError(str(exc)) from None
        self.store.hold_lease(self._joined + self.lease * FENCE_AT)
        unchecked = shared_folder.outside(self.data_dir, self.rule_folders)
        if unchecked:
            log.warning(
                "rule folders outside the data folder: no node checks that the others see "
                "them, put them on storage every node shares",
                rules=",".join(unchecked),
                folders=",".join(str(f) for f in unchecked.values()),
            )
        log.info("node joined", node=self.node, lease=self.lease, nodes=len(others) + 1)
        self._start_beat()

    def _other_live(self, n: NodeState) -> bool:
        return n.alive and n.name != self.node

    def _start_beat(self) -> None:
        # From the join on, whatever the start still does: a start longer than the
        # lease would otherwise look like a death.
        self._task = asyncio.create_task(self._beat(), name="gatewayd-heartbeat")

    def start(self, resume: Callable[[list[Transfer]], Awaitable[list[Transfer]]]) -> None:
        """Take over dead nodes from now on (the gateway runs): `resume` plans their
        rows that go on alone (the scheduler's `resume_interrupted`)."""
        self.resume = resume

    def stop_takeovers(self) -> None:
        """The gateway stops: leave dead nodes to the nodes that go on (the heartbeat
        goes on until `leave`: a long stop is no death)."""
        self.resume = None

    async def leave(self, *, clean: bool) -> None:
        """Stop the heartbeat; a clean stop (no row of ours left RUNNING) is recorded,
        so nobody takes this node over. An unclean one leaves the lease to run out:
        another node then takes over the rows left RUNNING."""
        self._stopping.set()
        if self._task is not None:
            # A beat waiting on a database that does not answer is not waited for.
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._takeover is not None:
            # A takeover under way commits or rolls back as a whole, then plans its rows.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._takeover), 5.0)
        if self._fenced:
            return
        if clean:
            try:
                await self.store.stop_node(self.node, await self.store.db_now())
            except Exception:
                log.exception("cannot record the node's stop", node=self.node)
            else:
                # Nobody takes a stopped node over: its last writes (the store's close)
                # conflict with no one's.
                self.store.hold_lease(None)

    # -- the heartbeat ---------------------------------------------------------------

    async def _beat(self) -> None:
        # The time of the last renewal that succeeded, taken when it was sent: the
        # heartbeat the database holds is no older than that.
        renewed = self._joined
        sent = renewed
        while True:
            # Beats keep their pace from the last one sent, whatever a takeover takes
            # (takeovers run beside, one at a time).
            try:
                async with asyncio.timeout(max(sent + self.interval - time.monotonic(), 0.0)):
                    await self._stopping.wait()
                return
            except TimeoutError:
                pass
            fence_at = renewed + self.lease * FENCE_AT
            sent = time.monotonic()
            try:
                async with asyncio.timeout(max(fence_at - sent, 0.0) if self.shared else None):
                    now = await self.store.db_now()
                    held = await self.store.renew_heartbeat(self.node, now)
            except Exception as exc:  # TimeoutError included: the deadline passed
                if self.shared and time.monotonic() >= fence_at:
                    self._fence(
                        f"its lease could not be renewed for {time.monotonic() - renewed:.1f}s "
                        f"(lease {self.lease:g}s): another node may take it over"
                    )
                    return
                log.warning(
                    "heartbeat failed", node=self.node, error=f"{type(exc).__name__}: {exc}"
                )
                continue
            if not held:
                if self.shared:
                    self._fence(await self._taken_by())
                    return
                log.warning("heartbeat found no record of this node", node=self.node)
                continue
            renewed = sent
            if self.shared:
                self.store.hold_lease(renewed + self.lease * FENCE_AT)
            if self.shared and self.resume is not None and self._takeover is None:
                self._takeover = asyncio.create_task(
                    self._take_over_dead(now, self.resume), name="gatewayd-takeover"
                )
                self._takeover.add_done_callback(self._took_over)

    def _took_over(self, task: asyncio.Task[None]) -> None:
        self._takeover = None
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("takeover failed", node=self.node, error=f"{type(error).__name__}: {error}")

    async def _taken_by(self) -> str:
        try:
            for n in await self.store.list_nodes(await self.store.db_now()):
                if n.name == self.node and n.taken_over_by:
                    return f"it was taken over by node {n.taken_over_by}"
        except Exception:
            pass
        return "its record was taken over or its guard lost"

    def _fence(self, why: str) -> None:
        self._fenced = True
        log.error(
            f"node {self.node} fenced: {why}; stopping at once without writing another "
            "row (its transfers are another node's now)",
            node=self.node,
        )
        self.on_fenced(why)

    async def _take_over_dead(
        self, now: datetime, resume: Callable[[list[Transfer]], Awaitable[list[Transfer]]]
    ) -> None:
        """Take over every dead node; their rows that go on alone are planned even when
        this node began to stop meanwhile (PLANNED, any node may run them; left
        INTERRUPTED, none would until a restart)."""
        for n in await self.store.list_nodes(now):
            if n.name == self.node or n.alive or n.stopped or n.taken_over_by:
                continue
            rows = await self.store.take_over(n.name, self.node, now)
            if rows is None:
                continue  # another node won it, or it came back meanwhile
            silent = (now - n.heartbeat).total_seconds()
            self.takeovers.append((n.name, len(rows)))
            log.warning(
                "node taken over",
                dead=n.name,
                by=self.node,
                transfers=len(rows),
                silent_for=round(silent, 3),
                lease=n.lease,
                transfer_ids=",".join(str(t.id) for t in rows[:50]),
            )
            if rows:
                resumed = await resume(rows)
                log.info(
                    "taken-over transfers planned to resume",
                    dead=n.name,
                    count=len(resumed),
                    waiting_for_partner=len(rows) - len(resumed),
                )
