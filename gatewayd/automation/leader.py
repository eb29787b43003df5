"""Which node runs the pollers and fires the schedules when several share a PostgreSQL
database: the first, by name, of the nodes whose lease holds. When it dies, its lease
runs out and the next one takes over at its next look; meanwhile the records of files
taken and of firings keep each file fetched once and each firing made once whoever
acts (gatewayd.store `insert_take`, `insert_fire`), so a handover at any moment never
makes anything twice. With SQLite (one node) this node always runs them."""

from __future__ import annotations

from gatewayd.store.base import Store


class Leader:
    """Answers "is it this node's turn?" from the node leases (gatewayd.cluster)."""

    def __init__(self, store: Store, node: str) -> None:
        self._store = store
        self._node = node

    async def mine(self) -> bool:
        if not self._store.shared:
            return True
        nodes = await self._store.list_nodes(await self._store.db_now())
        alive = sorted(n.name for n in nodes if n.alive)
        # Not registered yet (or its own lease lapsed): it stands by.
        return bool(alive) and alive[0] == self._node
