"""`gatewayd token create|list|revoke`: API bearer tokens for scripts. A token is shown
once, at creation, and never again."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import command, group, name_in_path, seconds
from gatewayd.cli.exits import CliError, Exit

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]


def _permission_pairs(values: list[str]) -> dict[str, str]:
    found = {}
    for item in values:
        area, sep, letters = item.partition("=")
        if not sep:
            raise CliError(Exit.USAGE, f"--permission {item!r}: expected AREA=LETTERS")
        found[area] = letters
    return found


def _token_create(api: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"expiresIn": args.expires_in}
    if args.permission:
        body["permissions"] = _permission_pairs(args.permission)
    if args.comment:
        body["comment"] = args.comment
    if args.manage_tokens:
        # Sent only when asked for, so that the request stays what older APIs know.
        body["manageTokens"] = True
    _, token, _ = api.request("POST", "/api/tokens", body=body)
    if args.format == "human":
        # The token alone on stdout, so that TOKEN=$(gatewayd token create ...) works.
        print(f"token {token['id']} expires {token['expires']}", file=sys.stderr)
        print(token["token"])
    else:
        out.emit(token, args.format, str)
    return Exit.OK


def _token_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [
                t["id"],
                t["user"],
                out.short_time(t["expires"]),
                "revoked" if t["revoked"] else "",
                ",".join(f"{k}={v}" for k, v in t["permissions"].items()),
                t["comment"],
            ]
            for t in data["tokens"]
        ]
        return out.table(rows, ("ID", "USER", "EXPIRES", "REVOKED", "PERMISSIONS", "COMMENT"))

    out.emit(api.get("/api/tokens"), args.format, human)
    return Exit.OK


def _token_revoke(api: ApiClient, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/api/tokens/{name_in_path(args.id)}")
    out.emit({"id": args.id, "revoked": True}, args.format, lambda d: f"token {d['id']} revoked")
    return Exit.OK


def add(commands: Commands) -> None:
    """The `token` group."""
    tokens = group(commands, "token", "issue and revoke API bearer tokens")
    create = command(
        tokens, "create", "issue a token for your user (prints it once)", _token_create
    )
    create.add_argument(
        "--expires-in", type=seconds, default=86400.0, help="e.g. 3600, 30m, 12h, 7d (default 1d)"
    )
    create.add_argument(
        "--permission",
        action="append",
        metavar="AREA=LETTERS",
        help="limit the token, e.g. transfers=r (repeatable; default: all of yours)",
    )
    create.add_argument("--comment", help="what the token is for")
    create.add_argument(
        "--manage-tokens",
        action="store_true",
        help="let the token list and revoke tokens (without it, a token cannot)",
    )
    command(tokens, "list", "list tokens (never the tokens themselves)", _token_list)
    revoke = command(tokens, "revoke", "revoke a token", _token_revoke)
    revoke.add_argument("id")
