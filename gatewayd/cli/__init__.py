"""The `gatewayd` command (the console script `gatewayd.cli:main`, and `python -m
gatewayd`).

- `daemon_commands`: `serve`, `check-config`, `hash-password`, on this machine's files;
- `db`: `db copy` (an SQLite database into PostgreSQL), on this machine's files too;
- one module per group of API commands, all clients of the admin API: `transfers`,
  `rules`, `inventory` (partners, servers), `tokens`, `status`; `api_command` is how they
  are declared, `api_client` how they reach the API, `output` how they print;
- `exits`: the exit statuses, defined once.

Every command's handler takes the parsed arguments and returns an `Exit` status or
raises `CliError`, which `main` prints as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gatewayd import __version__
from gatewayd.cli import (
    automation,
    daemon_commands,
    db,
    inventory,
    objects,
    rules,
    status,
    tokens,
    transfers,
    watchers,
)
from gatewayd.cli.exits import CliError, Exit, epilog

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

# Each adds its commands to the parser, in the order `gatewayd --help` lists them.
COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    daemon_commands.add,
    db.add,
    transfers.add,
    rules.add,
    watchers.add,
    automation.add,
    inventory.add_partner,
    inventory.add_server,
    objects.add_account,
    objects.add_user,
    tokens.add,
    status.add,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else int(Exit.USAGE)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return int(Exit.USAGE)
    try:
        return int(handler(args))
    except CliError as exc:
        print(f"gatewayd: {exc.message}", file=sys.stderr)
        return int(exc.status)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every command and its options."""
    parser = argparse.ArgumentParser(
        prog="gatewayd",
        description="gatewayd: a managed file-transfer gateway",
        epilog=epilog(*Exit),
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_group in COMMAND_GROUPS:
        add_group(commands)
    return parser
