"""Database access. `open_store(config)` picks the backend the configuration names."""

from __future__ import annotations

from pathlib import Path

from gatewayd.config.schema import DatabaseConfig
from gatewayd.store.base import SORT_FIELDS, Store, TransferFilter

__all__ = ["SORT_FIELDS", "Store", "TransferFilter", "make_store"]


def make_store(config: DatabaseConfig, path: Path) -> Store:
    """A store for `config`; `path` is the database file, already resolved against home."""
    from gatewayd.store.sqlite import SqliteStore

    return SqliteStore(path, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms)
