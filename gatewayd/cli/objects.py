"""`gatewayd account|partner|user apply -f FILE|delete NAME`: accounts, partners and API
users written through the admin API (one YAML file each in their folders; the API checks
them as `check-config` does, hashes passwords and loads them without a restart)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.exits import Exit
from gatewayd.cli.yaml_files import put_named_yaml

if TYPE_CHECKING:
    from collections.abc import Callable

    from gatewayd.cli.api_command import Commands

__all__ = ["add_account", "add_user", "add_writes"]

# kind -> its folder of URLs
_KINDS = {"account": "accounts", "partner": "partners", "user": "users"}


def _apply(kind: str) -> Callable[[ApiClient, argparse.Namespace], int]:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        return put_named_yaml(api, args, kind, _KINDS[kind])

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
