"""`gatewayd schedule list|get|fire|pause|resume` and `gatewayd poller list|get|fire`:
the schedules and remote pollers through the admin API."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.exits import Exit

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def _schedule_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [s["name"], s["cron"], s["state"], s["lastRun"] or "-", s["nextRun"] or "-"]
            for s in data["schedules"]
        ]
        return out.table(rows, ("NAME", "CRON", "STATE", "LAST RUN", "NEXT RUN"))

    out.emit(api.get("/api/schedules"), args.format, human)
    return Exit.OK


def _schedule_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/schedules/{name_in_path(args.name)}"), args.format, out.yaml_text)
    return Exit.OK


def _schedule_fire(api: ApiClient, args: argparse.Namespace) -> int:
    _, body, _ = api.request("POST", f"/api/schedules/{name_in_path(args.name)}/fire")

    def human(data: dict[str, Any]) -> str:
        if data.get("transfer"):
            return f"schedule {data['schedule']} fired: transfer {data['transfer']['id']}"
        return f"schedule {data['schedule']} made no transfer: {data.get('error') or 'duplicate'}"

    out.emit(body, args.format, human)
    return Exit.OK if body.get("transfer") else Exit.ERROR


def _schedule_state(action: str) -> Any:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        _, body, _ = api.request("POST", f"/api/schedules/{name_in_path(args.name)}/{action}")
        out.emit(body, args.format, lambda s: f"schedule {s['name']} {s['state']}")
        return Exit.OK

    return run


def _poller_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [p["name"], p["partner"], p["remoteDir"] or "/", str(p["taken"]), p["lastError"]]
            for p in data["pollers"]
        ]
        return out.table(rows, ("NAME", "PARTNER", "FOLDER", "TAKEN", "LAST ERROR"))

    out.emit(api.get("/api/pollers"), args.format, human)
    return Exit.OK


def _poller_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/pollers/{name_in_path(args.name)}"), args.format, out.yaml_text)
    return Exit.OK


def _poller_fire(api: ApiClient, args: argparse.Namespace) -> int:
    _, body, _ = api.request("POST", f"/api/pollers/{name_in_path(args.name)}/fire")
    out.emit(body, args.format, lambda p: f"poller {p['name']} looking now")
    return Exit.OK


def add(commands: Commands) -> None:
    """The `schedule` and `poller` groups."""
    schedules = group(commands, "schedule", "list, show and fire schedules through the API")
    command(schedules, "list", "list the schedules", _schedule_list)
    for name, text, handler in (
        ("get", "show a schedule, its last and next run", _schedule_get),
        ("fire", "fire a schedule now", _schedule_fire),
        ("pause", "pause a schedule (on every node)", _schedule_state("pause")),
        ("resume", "resume a paused schedule", _schedule_state("resume")),
    ):
        command(schedules, name, text, handler).add_argument("name")
    pollers = group(commands, "poller", "list, show and fire remote pollers through the API")
    command(pollers, "list", "list the remote pollers", _poller_list)
    command(pollers, "get", "show a poller and its counts", _poller_get).add_argument("name")
    command(pollers, "fire", "look at the partner's folder now", _poller_fire).add_argument("name")
