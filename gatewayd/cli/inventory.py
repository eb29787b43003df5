"""`gatewayd partner list|get` and `gatewayd server list`: what the gateway is
configured with, as the admin API shows it (never a secret)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.exits import Exit
from gatewayd.cli.objects import add_writes

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add_partner", "add_server"]


def _partner_row(p: dict[str, Any]) -> list[Any]:
    return [p["name"], p["protocol"], p["address"], p["port"] or "", p["login"]]


def _partner_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [_partner_row(p) for p in data["partners"]]
        return out.table(rows, ("NAME", "PROTOCOL", "ADDRESS", "PORT", "LOGIN"))

    out.emit(api.get("/api/partners"), args.format, human)
    return Exit.OK


def _partner_get(api: ApiClient, args: argparse.Namespace) -> int:
    def human(p: dict[str, Any]) -> str:
        pairs = [
            ("Name", p["name"]),
            ("Protocol", p["protocol"]),
            ("Address", p["address"]),
            ("Port", p["port"]),
            ("Login", p["login"]),
            ("Password", "set" if p["hasPassword"] else "none"),
            ("Max transfers", p["maxTransfers"]),
        ]
        pairs += [(k, v) for k, v in p.get("options", {}).items()]
        return out.key_values(pairs)

    out.emit(api.get(f"/api/partners/{name_in_path(args.name)}"), args.format, human)
    return Exit.OK


def add_partner(commands: Commands) -> None:
    """The `partner` group."""
    partners = group(commands, "partner", "show, write and delete the partners we connect to")
    command(partners, "list", "list the partners", _partner_list)
    get = command(partners, "get", "show a partner (never its password)", _partner_get)
    get.add_argument("name")
    add_writes(partners, "partner")


def _server_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [s["name"], s["protocol"], s["address"], s["boundPort"] or s["port"], s["state"]]
            for s in data["servers"]
        ]
        return out.table(rows, ("NAME", "PROTOCOL", "ADDRESS", "PORT", "STATE"))

    out.emit(api.get("/api/servers"), args.format, human)
    return Exit.OK


def add_server(commands: Commands) -> None:
    """The `server` group."""
    servers = group(commands, "server", "show our servers")
    command(servers, "list", "list our servers and their state", _server_list)
