"""What `apply -f FILE` shares across the kinds written as YAML files through the API
(rules, accounts, partners, users, watchers, schedules, pollers): reading the file (or
standard input) and sending a named one as it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient
from gatewayd.cli.api_command import name_in_path
from gatewayd.cli.exits import CliError, Exit

__all__ = ["put_named_yaml", "read_file"]


def read_file(file: str) -> str:
    """The text of `file` ("-": standard input); a usage error when unreadable."""
    try:
        return sys.stdin.read() if file == "-" else Path(file).read_text("utf-8")
    except OSError as exc:
        raise CliError(Exit.USAGE, f"{file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(Exit.USAGE, f"{file}: not UTF-8 text") from None


def put_named_yaml(api: ApiClient, args: argparse.Namespace, kind: str, folder: str) -> int:
    """PUT the YAML of `args.file` to `/api/<folder>/<its name: key>`, sent as it is
    (comments included; a YAML mistake is the API's to report, with its line)."""
    import yaml

    text = read_file(args.file)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise CliError(Exit.USAGE, f"{args.file}: no {kind} name (a `name:` key) found")
    status, shown, _ = api.request(
        "PUT", f"/api/{folder}/{name_in_path(name)}", raw=text.encode(),
        content_type="application/yaml",
    )  # fmt: skip
    verb = "created" if status == 201 else "replaced"
    out.emit(shown, args.format, lambda o: f"{kind} {o['name']} {verb}")
    return Exit.OK
