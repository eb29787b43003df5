"""The running gateway: ties the store, the pipeline, the scheduler and the servers.

The daemon (`gatewayd.daemon`) owns process concerns (lock, signals, logging) and drives
a `Gateway` through `start()` and `stop()`.
"""

from __future__ import annotations

from gatewayd.config.schema import Config
from gatewayd.store.base import Store


class Gateway:
    """Everything that runs inside the daemon once the store is open."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    async def start(self) -> None:
        """Start the scheduler and every enabled server; return once all listen."""

    async def stop(self, timeout: float) -> None:
        """Stop accepting work, interrupt running transfers with their state saved
        (status INTERRUPTED), and return within about `timeout` seconds."""
