"""Database access. `make_store(config, path)` picks the backend the configuration names."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gatewayd.store.base import SORT_FIELDS, Store, TransferFilter

__all__ = ["SORT_FIELDS", "DatabaseSettings", "Store", "TransferFilter", "make_store"]


class DatabaseSettings(Protocol):
    """What the store reads of the configuration's `database` section (a
    `gatewayd.config.schema.DatabaseConfig`; the store imports nothing above it)."""

    @property
    def synchronous(self) -> str: ...

    @property
    def busy_timeout_ms(self) -> int: ...


def make_store(config: DatabaseSettings, path: Path) -> Store:
    """A store for `config`; `path` is the database file, already resolved against home."""
    from gatewayd.store.sqlite import SqliteStore

    return SqliteStore(path, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms)
