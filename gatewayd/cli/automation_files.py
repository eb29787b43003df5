"""`gatewayd watcher|schedule|poller apply|delete`: write and remove an automation
object's YAML file through the admin API, which checks it as `check-config` does and
loads it without a restart. Watchers take the YAML as it is (comments kept, mistakes
reported with their line, like rules); schedules and pollers take JSON, so the file is
read here first (a YAML mistake is reported here, with its line)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, name_in_path
from gatewayd.cli.exits import CliError, Exit
from gatewayd.cli.yaml_files import read_file

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add_files"]


def _apply(kind: str) -> Any:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        import yaml

        text = read_file(args.file)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            if kind != "watcher":
                raise CliError(Exit.USAGE, f"{args.file}: not YAML: {exc}") from None
            data = None  # the API reports the mistake with its line
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            if args.file == "-":
                raise CliError(Exit.USAGE, f"-: no {kind} name (a `name:` key) found")
            name = Path(args.file).stem  # the file name is the object's name
        path = f"/api/{kind}s/{name_in_path(name)}"
        if kind == "watcher":
            status, body, _ = api.request(
                "PUT", path, raw=text.encode(), content_type="application/yaml"
            )
        else:
            if not isinstance(data, dict):
                raise CliError(Exit.USAGE, f"{args.file}: a {kind} is a YAML mapping")
            status, body, _ = api.request("PUT", path, body=data)
        verb = "created" if status == 201 else "replaced"
        out.emit(body, args.format, lambda _: f"{kind} {name} {verb}")
        return Exit.OK

    return run


def _delete(kind: str) -> Any:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        api.request("DELETE", f"/api/{kind}s/{name_in_path(args.name)}")
        out.emit(
            {"name": args.name, "deleted": True},
            args.format,
            lambda d: f"{kind} {d['name']} deleted",
        )
        return Exit.OK

    return run


def add_files(group: Commands, kind: str) -> None:
    """`apply -f FILE` and `delete NAME` in the group of `kind` (watcher, schedule,
    poller)."""
    apply = command(
        group,
        "apply",
        f"create or replace a {kind} from its YAML file (checked, then loaded live)",
        _apply(kind),
    )
    apply.add_argument("-f", "--file", required=True, help=f"the {kind}'s YAML file ('-': stdin)")
    command(group, "delete", f"delete a {kind} (its file)", _delete(kind)).add_argument("name")
