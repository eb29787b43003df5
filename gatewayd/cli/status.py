"""`gatewayd status`: the running gateway's state (`/api/about`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command
from gatewayd.cli.exits import Exit

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def _status(api: ApiClient, args: argparse.Namespace) -> int:
    def human(a: dict[str, Any]) -> str:
        pairs: list[tuple[str, Any]] = [
            ("Version", a["version"]),
            ("Started", a["started"]),
            ("Uptime", out.duration(a["uptime"])),
            ("Database", f"{a['database']['state']}"),
            (
                "Scheduler",
                f"{a['scheduler']['state']} ({a['scheduler']['running']} running, "
                f"{a['scheduler']['queued']} waiting for a slot)",
            ),
        ]
        pairs += [
            (f"Server {name}", f"{s['state']} ({s['protocol']} on {s['address']}:{s['port']})")
            for name, s in a["servers"].items()
        ]
        pairs += [(f"Node {n['name']}", _node(n)) for n in a.get("nodes", [])]
        return out.key_values(pairs)

    out.emit(api.get("/api/about"), args.format, human)
    return Exit.OK


def _node(n: dict[str, Any]) -> str:
    if n.get("stopped"):
        state = f"stopped at {n['stopped']}"
    elif n.get("takenOverBy"):
        state = f"dead, taken over by {n['takenOverBy']} at {n['takenOverAt']}"
    else:
        state = "alive" if n["alive"] else "lease expired"
    this = ", this node" if n.get("this") else ""
    return (
        f"{state}{this} ({n['running']} running; heartbeat {n['heartbeat']}, lease "
        f"{n['lease']:g}s; {n['version']} on {n['host']}, pid {n.get('pid', '?')})"
    )


def add(commands: Commands) -> None:
    """The `status` command."""
    command(commands, "status", "show the running gateway's state", _status)
