"""`gatewayd watcher list|get|fire|pause|resume|apply|delete`: the local folder
watchers, through the admin API (pause and resume hold on every node, until resumed)."""

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


def _skipped(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "-"


def _list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = []
        for w in data["watchers"]:
            s = w["status"]
            rows.append(
                [
                    w["name"],
                    s["state"],
                    w["rule"],
                    ",".join(w["partners"] or [w["partner"]]),
                    str(s["taken"]),
                    _skipped(s["skipped"]),
                    s["lastScan"] or "-",
                    s["lastError"],
                ]
            )
        header = ("NAME", "STATE", "RULE", "PARTNERS", "TAKEN", "SKIPPED", "LAST SCAN", "ERROR")
        return out.table(rows, header)

    out.emit(api.get("/api/watchers"), args.format, human)
    return Exit.OK


def _get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/watchers/{name_in_path(args.name)}"), args.format, out.yaml_text)
    return Exit.OK


def _fire(api: ApiClient, args: argparse.Namespace) -> int:
    _, result, _ = api.request("POST", f"/api/watchers/{name_in_path(args.name)}/fire")

    def human(r: dict[str, Any]) -> str:
        if r["notScanned"]:
            return f"not scanned: {r['notScanned']}"
        text = f"seen {r['seen']}, taken {r['taken']}, skipped: {_skipped(r['skipped'])}"
        if r["transfers"]:
            text += f"\ntransfers: {' '.join(str(i) for i in r['transfers'])}"
        return text + (f"\nerror: {r['error']}" if r["error"] else "")

    out.emit(result, args.format, human)
    return Exit.ERROR if result.get("error") else Exit.OK


def _action(verb: str) -> Any:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        _, body, _ = api.request("POST", f"/api/watchers/{name_in_path(args.name)}/{verb}")

        def human(w: dict[str, Any]) -> str:
            status = w["status"]
            by = f" (paused by {status['pausedBy']})" if status["paused"] else ""
            return f"watcher {w['name']} {status['state']}{by}"

        out.emit(body, args.format, human)
        return Exit.OK

    return run


def add(commands: Commands) -> None:
    """The `watcher` group."""
    watchers = group(commands, "watcher", "local folder watchers: state, scan now, pause")
    command(watchers, "list", "list the watchers with their state", _list)
    get = command(watchers, "get", "show a watcher and its state", _get)
    get.add_argument("name")
    fire = command(watchers, "fire", "scan a watcher's folder now", _fire)
    fire.add_argument("name")
    for verb in ("pause", "resume"):
        action = command(watchers, verb, f"{verb} a watcher (on every node)", _action(verb))
        action.add_argument("name")
    add_files(watchers, "watcher")
