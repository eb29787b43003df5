"""`gatewayd account|partner|user apply -f FILE|delete NAME`: accounts, partners and API
users written through the admin API (one YAML file each in their folders; the API checks
them as `check-config` does, hashes passwords and loads them without a restart)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.exits import CliError, Exit

if TYPE_CHECKING:
    from collections.abc import Callable

    from gatewayd.cli.api_command import Commands

__all__ = ["add_account", "add_user", "add_writes"]

# kind -> its folder of URLs
_KINDS = {"account": "accounts", "partner": "partners", "user": "users"}


def _read(file: str) -> str:
    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
    except OSError as exc:
        raise CliError(Exit.USAGE, f"{file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(Exit.USAGE, f"{file}: not UTF-8 text") from None


def _apply(kind: str) -> Callable[[ApiClient, argparse.Namespace], int]:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        import yaml

        text = _read(args.file)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None  # the API reports the mistake with its line
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            raise CliError(Exit.USAGE, f"{args.file}: no {kind} name (a `name:` key) found")
        status, shown, _ = api.request(
            "PUT",
            f"/api/{_KINDS[kind]}/{name_in_path(name)}",
            raw=text.encode(),
            content_type="application/yaml",
        )
        verb = "created" if status == 201 else "replaced"
        out.emit(shown, args.format, lambda o: f"{kind} {o['name']} {verb}")
        return Exit.OK

    return run


def _delete(kind: str) -> Callable[[ApiClient, argparse.Namespace], int]:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        api.request("DELETE", f"/api/{_KINDS[kind]}/{name_in_path(args.name)}")
        done: dict[str, Any] = {"name": args.name, "deleted": True}
        out.emit(done, args.format, lambda d: f"{kind} {d['name']} deleted")
        return Exit.OK

    return run


def add_writes(commands: Commands, kind: str) -> None:
    """`apply` and `delete` in the group of `kind` (account, partner, user)."""
    one = f"an {kind}" if kind == "account" else f"a {kind}"
    apply = command(
        commands,
        "apply",
        f"create or replace {one} from its YAML file (checked, then loaded live; "
        "a password is hashed by the gateway, never shown back)",
        _apply(kind),
    )
    apply.add_argument("-f", "--file", required=True, help=f"the {kind}'s YAML file ('-': stdin)")
    delete = command(
        commands,
        "delete",
        f"delete {one} written through the API",
        _delete(kind),
    )
    delete.add_argument("name")


def add_account(commands: Commands) -> None:
    """The `account` group."""
    add_writes(
        group(commands, "account", "write and delete local accounts through the API"), "account"
    )


def add_user(commands: Commands) -> None:
    """The `user` group."""
    add_writes(group(commands, "user", "write and delete admin API users through the API"), "user")
