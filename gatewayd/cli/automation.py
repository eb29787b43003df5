"""`gatewayd schedule list|get|fire|pause|resume|apply|delete` and `gatewayd poller`
with the same commands: the schedules and remote pollers through the admin API."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.automation_files import add_files
from gatewayd.cli.exits import Exit

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def _schedule_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [
                s["name"],
                s["cron"],
                _state(s),
                s["lastRun"] or "-",
                s["nextRun"] or "-",
            ]
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


def _state(item: dict[str, Any]) -> str:
    """`active`, or `paused` with who paused it."""
    if item.get("state") == "paused" and item.get("pausedBy"):
        return f"paused by {item['pausedBy']}"
    return str(item.get("state", "-"))


def _pause(kind: str, action: str) -> Any:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        _, body, _ = api.request("POST", f"/api/{kind}s/{name_in_path(args.name)}/{action}")
        out.emit(body, args.format, lambda s: f"{kind} {s['name']} {_state(s)}")
        return Exit.OK

    return run


def _poller_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [
                p["name"],
                p["partner"],
                p["remoteDir"] or "/",
                _state(p),
                str(p["taken"]),
                p["lastError"],
            ]
            for p in data["pollers"]
        ]
        return out.table(rows, ("NAME", "PARTNER", "FOLDER", "STATE", "TAKEN", "LAST ERROR"))

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
        ("pause", "pause a schedule (on every node, until resumed)", _pause("schedule", "pause")),
        ("resume", "resume a paused schedule", _pause("schedule", "resume")),
    ):
        command(schedules, name, text, handler).add_argument("name")
    add_files(schedules, "schedule")
    pollers = group(commands, "poller", "list, show, fire and pause remote pollers (API)")
    command(pollers, "list", "list the remote pollers", _poller_list)
    for name, text, handler in (
        ("get", "show a poller and its counts", _poller_get),
        ("fire", "look at the partner's folder now (even paused)", _poller_fire),
        ("pause", "pause a poller (on every node, until resumed)", _pause("poller", "pause")),
        ("resume", "resume a paused poller", _pause("poller", "resume")),
    ):
        command(pollers, name, text, handler).add_argument("name")
    add_files(pollers, "poller")
