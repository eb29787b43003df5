"""The `gatewayd` command.

Each group of subcommands is one `_add_*` function that declares its arguments and sets
`handler` to a function taking the parsed arguments and returning the exit status. A new
group (`transfer`, `rule`, ... as clients of the admin API) adds its function to
`_COMMAND_GROUPS`, ideally from a module of its own.

Exit statuses: 0 success, 1 error or invalid configuration, 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd import __version__, cli_client

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "default_config_path", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

CONFIG_ENV = "GATEWAYD_CONFIG"
SYSTEM_CONFIG = Path("/etc/gatewayd/gatewayd.yaml")
# The checkout's demo configuration: `etc/` next to the `gatewayd` package.
CHECKOUT_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "gatewayd.yaml"

Handler = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:
    # What `add_subparsers()` returns; argparse offers no public name for it.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


class UsageError(Exception):
    """The command line cannot be acted on (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except UsageError as exc:
        print(f"gatewayd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def default_config_path() -> Path:
    """`$GATEWAYD_CONFIG`, else the system's file, else the checkout's demo file."""
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    for candidate in (SYSTEM_CONFIG, CHECKOUT_CONFIG):
        if candidate.is_file():
            return candidate
    raise UsageError(
        f"no configuration file: pass -c FILE or set {CONFIG_ENV} "
        f"(looked for {SYSTEM_CONFIG} and {CHECKOUT_CONFIG})"
    )


def _config_path(args: argparse.Namespace) -> Path:
    path: Path | None = args.config
    return path if path is not None else default_config_path()


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, {SYSTEM_CONFIG}, "
        "or etc/gatewayd.yaml of the checkout)",
    )


# ------------------------------------------------------------------------------- serve


def _add_serve(commands: Commands) -> None:
    parser = commands.add_parser("serve", help="run the gateway in the foreground")
    _add_config_option(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from gatewayd.daemon import run_daemon

    return run_daemon(_config_path(args))


# ------------------------------------------------------------------------ check-config


def _add_check_config(commands: Commands) -> None:
    parser = commands.add_parser(
        "check-config", help="validate the configuration and the rules, then exit"
    )
    _add_config_option(parser)
    parser.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from gatewayd.config import ConfigError, load_config

    path = _config_path(args)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"{path}: invalid configuration ({_count(len(exc.problems), 'problem')})",
            file=sys.stderr,
        )
        return EXIT_ERROR
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    config = loaded.config
    counts = ", ".join(
        (
            _count(len(config.servers), "server"),
            _count(len(config.partners), "partner"),
            _count(len(config.accounts), "account"),
            _count(len(config.api.users), "API user"),
            _count(len(config.rules), "rule"),
        )
    )
    print(f"{path}: OK ({counts})")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ----------------------------------------------------------------------- hash-password


def _add_hash_password(commands: Commands) -> None:
    parser = commands.add_parser(
        "hash-password",
        help="print the argon2id hash of a password, for the configuration",
        description="Reads the password from a prompt (asked twice) or, with --stdin, from "
        "one line of standard input; never from the command line, where other users and "
        "the shell history would see it.",
    )
    parser.add_argument(
        "--stdin", action="store_true", help="read one line of standard input, no prompt"
    )
    parser.set_defaults(handler=_hash_password)


def _hash_password(args: argparse.Namespace) -> int:
    from gatewayd.passwords import hash_password

    if args.stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            print("gatewayd: the passwords differ", file=sys.stderr)
            return EXIT_ERROR
    if not password:
        print("gatewayd: empty password refused", file=sys.stderr)
        return EXIT_ERROR
    print(hash_password(password))
    return EXIT_OK


# ---------------------------------------------------------------------------- the parser

_COMMAND_GROUPS: tuple[Callable[[Commands], None], ...] = (
    _add_serve,
    _add_check_config,
    _add_hash_password,
    *cli_client.GROUPS,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd", description="gatewayd: a managed file-transfer gateway"
    )
    parser.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add_group in _COMMAND_GROUPS:
        add_group(commands)
    return parser
