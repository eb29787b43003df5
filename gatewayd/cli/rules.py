"""`gatewayd rule list|get|apply|delete`: the rules, read and written through the admin
API (which checks a rule as `check-config` does and loads it without a restart)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path
from gatewayd.cli.exits import Exit
from gatewayd.cli.yaml_files import put_named_yaml

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def _rule_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [[r["name"], r["direction"], r["path"], r.get("comment", "")] for r in data["rules"]]
        return out.table(rows, ("NAME", "DIRECTION", "PATH", "COMMENT"))

    out.emit(api.get("/api/rules"), args.format, human)
    return Exit.OK


def _rule_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/rules/{name_in_path(args.name)}"), args.format, out.yaml_text)
    return Exit.OK


def _rule_apply(api: ApiClient, args: argparse.Namespace) -> int:
    # The file becomes rules/<name>.yaml, comments included.
    return put_named_yaml(api, args, "rule", "rules")


def _rule_delete(api: ApiClient, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/api/rules/{name_in_path(args.name)}")
    out.emit(
        {"name": args.name, "deleted": True}, args.format, lambda d: f"rule {d['name']} deleted"
    )
    return Exit.OK


def add(commands: Commands) -> None:
    """The `rule` group."""
    rules = group(commands, "rule", "list, show, write and delete rules through the API")
    command(rules, "list", "list the rules", _rule_list)
    get = command(rules, "get", "show a rule (as YAML for people)", _rule_get)
    get.add_argument("name")
    apply = command(
        rules,
        "apply",
        "create or replace a rule from its YAML file (checked, then loaded live)",
        _rule_apply,
    )
    apply.add_argument("-f", "--file", required=True, help="the rule's YAML file ('-': stdin)")
    delete = command(rules, "delete", "delete a rule", _rule_delete)
    delete.add_argument("name")
