"""`gatewayd db copy --to postgresql://...`: move an SQLite installation into PostgreSQL
(`gatewayd.store.copy`). Works on this machine's files, not through the API."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd.cli.exits import CliError, Exit, epilog

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def add(commands: Commands) -> None:
    """`db copy`."""
    from gatewayd.cli.daemon_commands import add_config_option

    db = commands.add_parser(
        "db",
        help="work on the database (copy to PostgreSQL)",
        epilog=epilog(Exit.OK, Exit.USAGE, OK="help shown", USAGE="no action given"),
    )
    actions = db.add_subparsers(title="actions", metavar="ACTION")
    copy = actions.add_parser(
        "copy",
        help="copy an SQLite database into an empty PostgreSQL one",
        description="Copies every transfer (ids kept), API token, audit entry and Tapis "
        "task of the SQLite database into an empty PostgreSQL database, in one "
        "transaction, and checks the counts. The SQLite file is opened read-only and "
        "left as it was; the gateway must be stopped (its lock is taken). Put the "
        "password in PGPASSWORD or ~/.pgpass rather than in the URL: a command line is "
        "visible to the other users of the machine.",
        epilog=epilog(
            Exit.OK,
            Exit.ERROR,
            Exit.USAGE,
            ERROR="refused (gateway running, target not empty, schema versions differ) or "
            "failed: nothing was copied",
        ),
    )
    add_config_option(copy)
    copy.add_argument(
        "--to",
        required=True,
        metavar="DSN",
        help="the PostgreSQL database: postgresql://user@host:5432/dbname[?sslmode=...]",
    )
    copy.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="the SQLite file (default: database.path of the configuration)",
    )
    copy.set_defaults(handler=_copy)
    db.set_defaults(handler=lambda _args: _usage(db))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return Exit.USAGE


def _copy(args: argparse.Namespace) -> int:
    from gatewayd.cli.daemon_commands import config_path
    from gatewayd.config import ConfigError, load_config
    from gatewayd.daemon import DaemonLock, LockHeld
    from gatewayd.store.copy import CopyError, copy_sqlite_to_postgresql
    from gatewayd.store.postgres import PgTarget, describe_dsn

    dsn: str = args.to
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise CliError(Exit.USAGE, "--to must be a postgresql:// URL")
    path = config_path(args)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise CliError(Exit.ERROR, f"{path}: invalid configuration") from None
    source: Path = args.source or loaded.paths.database
    if args.source is None and loaded.config.database.backend != "sqlite":
        raise CliError(Exit.ERROR, f"{path}: the database is not SQLite; name the file with --from")
    target = PgTarget(dsn=dsn)
    # The gateway must not write to the file meanwhile: hold its lock during the copy.
    lock = DaemonLock(loaded.paths.lock_file)
    try:
        lock.acquire()
    except LockHeld as exc:
        raise CliError(Exit.ERROR, f"{exc}: stop the gateway first") from None
    except OSError as exc:
        raise CliError(
            Exit.ERROR, f"cannot take {loaded.paths.lock_file}: {exc.strerror}"
        ) from None
    try:
        report = asyncio.run(copy_sqlite_to_postgresql(source, target))
    except CopyError as exc:
        raise CliError(Exit.ERROR, str(exc)) from None
    except Exception as exc:  # the server unreachable, a login refused, ...
        raise CliError(Exit.ERROR, f"{describe_dsn(dsn)}: {exc}") from None
    finally:
        lock.release()
    print(f"copied {source} to {target.describe()}:")
    width = max(len(t) for t in report.counts)
    for table, count in report.counts.items():
        line = f"  {table:<{width}}  {count:>9}"
        if table == "transfers" and report.interrupted:
            line += f"  ({report.interrupted} RUNNING copied as INTERRUPTED)"
        print(line)
    print(
        f"{source} is unchanged. To run on PostgreSQL, set database.backend: postgresql, "
        "its dsn (or host, dbname, ...) and daemon.node in the configuration."
    )
    return Exit.OK
