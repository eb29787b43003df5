"""How a command that talks to the admin API is declared and run.

A command group module (`transfers`, `rules`, ...) exposes one `add(commands)` function
that declares its subcommands with `group()` and `command()`. Each command gets the
connection options (`--url`, `--user`, ...; see `gatewayd.cli.api_client`), `--format
human|json|yaml`, and the exit-status epilog; its `Run` function takes an `ApiClient` and
the parsed arguments and returns an exit status, or raises `CliError`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from gatewayd.cli import output as out
from gatewayd.cli.api_client import (
    CLIENT_CONFIG_ENV,
    PASSWORD_ENV,
    TOKEN_ENV,
    URL_ENV,
    USER_ENV,
    ApiClient,
    resolve_settings,
)
from gatewayd.cli.exits import EPILOG

if TYPE_CHECKING:
    # What `add_subparsers()` returns; argparse offers no public name for it.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["Commands", "Run", "command", "group", "name_in_path", "seconds", "transfer_id"]

Run = Callable[[ApiClient, argparse.Namespace], int]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    options = parent.add_argument_group("connection to the admin API")
    options.add_argument("--url", help=f"API address (default: ${URL_ENV}, http://127.0.0.1:8080)")
    options.add_argument(
        "--user",
        help=f"log in as USER (password from ${PASSWORD_ENV} or a prompt); without it, "
        f"${TOKEN_ENV} or ${USER_ENV} is used",
    )
    options.add_argument(
        "--client-config",
        metavar="FILE",
        help=f"settings file (default: ${CLIENT_CONFIG_ENV}, ~/.config/gatewayd/client.yaml)",
    )
    options.add_argument("--cacert", metavar="FILE", help="CA certificate(s) to trust for HTTPS")
    options.add_argument(
        "--insecure", action="store_true", help="do not verify the HTTPS certificate"
    )
    options.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer"
    )
    parent.add_argument(
        "--format", choices=out.FORMATS, default="human", help="output format (default: human)"
    )
    return parent


_PARENT = _connection_options()


def command(commands: Commands, name: str, help_text: str, run: Run) -> argparse.ArgumentParser:
    """Declare the API command `name`; `run` is called with a client for the API."""
    parser = commands.add_parser(
        name, help=help_text, description=help_text, parents=[_PARENT], epilog=EPILOG
    )
    parser.set_defaults(handler=lambda args: _execute(run, args))
    return parser


def group(commands: Commands, name: str, help_text: str) -> Commands:
    """Declare the command group `name` (`transfer`, `rule`, ...); returns its commands."""
    parser = commands.add_parser(name, help=help_text, description=help_text, epilog=EPILOG)
    return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)


def _execute(run: Run, args: argparse.Namespace) -> int:
    settings = resolve_settings(
        url=args.url,
        user=args.user,
        client_config=args.client_config,
        cacert=args.cacert,
        insecure=args.insecure,
    )
    return run(ApiClient(settings, timeout=args.timeout), args)


def transfer_id(value: str) -> int:
    """An argparse type: a transfer id."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a transfer id: {value!r}")
    return int(value)


def seconds(value: str) -> float:
    """An argparse type: `90`, `90s`, `30m`, `12h`, `7d` as seconds."""
    match = _DURATION.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 90, 30m, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def name_in_path(value: str) -> str:
    """A name (rule, partner, token id) as one segment of an API path."""
    return quote(value, safe="")
