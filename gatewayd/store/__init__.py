"""Database access. `make_store(config, path)` picks the backend the configuration names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from gatewayd.store.base import SORT_FIELDS, Store, TransferFilter

__all__ = ["SORT_FIELDS", "DatabaseSettings", "Store", "TransferFilter", "make_store"]


class DatabaseSettings(Protocol):
    """What the store reads of the configuration's `database` section (a
    `gatewayd.config.schema.DatabaseConfig`; the store imports nothing above it)."""

    @property
    def backend(self) -> str: ...

    @property
    def synchronous(self) -> str: ...

    @property
    def busy_timeout_ms(self) -> int: ...

    @property
    def dsn(self) -> str | None: ...

    @property
    def host(self) -> str | None: ...

    @property
    def port(self) -> int | None: ...

    @property
    def user(self) -> str | None: ...

    @property
    def password(self) -> str | None: ...

    @property
    def dbname(self) -> str | None: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def sslmode(self) -> str | None: ...

    @property
    def ssl_root_cert(self) -> Path | None: ...

    @property
    def connect_timeout(self) -> float: ...


def make_store(
    config: DatabaseSettings, path: Path, *, node: str | None = None, home: Path | None = None
) -> Store:
    """A store for `config`: SQLite on `path` (the database file, already resolved
    against home), or PostgreSQL. `node` names this node (the owner of the rows it runs;
    PostgreSQL needs it); `home` resolves a relative `ssl_root_cert`."""
    if config.backend == "postgresql":
        from gatewayd.store.postgres import PgTarget, PostgresStore

        if not node:
            raise ValueError("a PostgreSQL database needs the node's name")
        ca = config.ssl_root_cert
        if ca is not None:
            ca = Path(os.path.abspath((home or Path.cwd()) / ca.expanduser()))
        target = PgTarget(
            dsn=config.dsn,
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password,
            dbname=config.dbname,
            sslmode=config.sslmode,
            ssl_root_cert=ca,
            pool_size=config.pool_size,
            connect_timeout=config.connect_timeout,
        )
        return PostgresStore(target, node=node)
    if config.backend != "sqlite":
        raise ValueError(f"unknown database backend {config.backend!r}")
    from gatewayd.store.sqlite import SqliteStore

    return SqliteStore(
        path, synchronous=config.synchronous, busy_timeout_ms=config.busy_timeout_ms, node=node
    )
