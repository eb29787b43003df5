"""CLI commands that are clients of the admin API: `transfer`, `rule`, `partner`,
`server`, `token`, `status`.

Every command takes the connection options (`--url`, `--user`, ...; see
`gatewayd.cli_http`) and `--format human|json|yaml`; errors are one line on stderr and
the exit status says what went wrong (`EXIT_CODES_HELP`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gatewayd import cli_output as out
from gatewayd.cli_http import (
    CLIENT_CONFIG_ENV,
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_TRANSFER_FAILED,
    EXIT_USAGE,
    PASSWORD_ENV,
    TOKEN_ENV,
    URL_ENV,
    USER_ENV,
    ApiClient,
    ClientError,
    resolve_settings,
)

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

Run = Callable[[ApiClient, argparse.Namespace], int]

# Statuses after which a watched transfer will not move without someone acting.
_ENDED = ("DONE", "ERROR", "CANCELLED", "PAUSED")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection to the admin API")
    group.add_argument("--url", help=f"API address (default: ${URL_ENV}, http://127.0.0.1:8080)")
    group.add_argument(
        "--user",
        help=f"log in as USER (password from ${PASSWORD_ENV} or a prompt); without it, "
        f"${TOKEN_ENV} or ${USER_ENV} is used",
    )
    group.add_argument(
        "--client-config",
        metavar="FILE",
        help=f"settings file (default: ${CLIENT_CONFIG_ENV}, ~/.config/gatewayd/client.yaml)",
    )
    group.add_argument("--cacert", metavar="FILE", help="CA certificate(s) to trust for HTTPS")
    group.add_argument(
        "--insecure", action="store_true", help="do not verify the HTTPS certificate"
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for each answer"
    )
    parent.add_argument(
        "--format", choices=out.FORMATS, default="human", help="output format (default: human)"
    )
    return parent


_PARENT = _connection_options()


def _command(commands: Commands, name: str, help_text: str, run: Run) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=help_text, description=help_text, parents=[_PARENT], epilog=EXIT_CODES_HELP
    )
    parser.set_defaults(handler=lambda args: _execute(run, args))
    return parser


def _group(commands: Commands, name: str, help_text: str) -> Commands:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)


def _execute(run: Run, args: argparse.Namespace) -> int:
    try:
        settings = resolve_settings(
            url=args.url,
            user=args.user,
            client_config=args.client_config,
            cacert=args.cacert,
            insecure=args.insecure,
        )
        return run(ApiClient(settings, timeout=args.timeout), args)
    except ClientError as exc:
        print(f"gatewayd: {exc.message}", file=sys.stderr)
        return exc.status


def _id(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not a transfer id: {value!r}")
    return int(value)


def seconds(value: str) -> float:
    """`90`, `90s`, `30m`, `12h`, `7d` as seconds."""
    match = _DURATION.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 90, 30m, 12h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _name(value: str) -> str:
    return quote(value, safe="")


# ------------------------------------------------------------------------------ transfer


def _info_pairs(values: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ClientError(EXIT_USAGE, f"--info {item!r}: expected KEY=VALUE")
        try:
            info[key] = json.loads(raw)
        except ValueError:
            info[key] = raw
    return info


def _transfer_add(api: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"rule": args.rule, "partner": args.partner, "file": args.file}
    optional = {
        "output": args.output,
        "account": args.login,
        "start": args.date,
        "nbOfAttempts": args.attempts,
        "firstRetryDelay": args.retry_delay,
        "retryIncrementFactor": args.retry_factor,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.way is not None:
        body["isSend"] = args.way == "send"
    if args.info:
        body["transferInfo"] = _info_pairs(args.info)
    _, created, _ = api.request("POST", "/api/transfers", body=body)
    if args.watch:
        if args.format == "human":
            print(f"transfer {created['id']} created", file=sys.stderr)
        return _watch(api, created["id"], args)
    out.emit(created, args.format, lambda t: f"transfer {t['id']} created ({t['status']})")
    return EXIT_OK


def _transfer_list(api: ApiClient, args: argparse.Namespace) -> int:
    query: list[tuple[str, str]] = [("status", s) for s in args.status or []]
    for key, value in (
        ("rule", args.rule),
        ("partner", args.partner),
        ("account", args.account),
        ("start", args.start),
        ("followID", args.follow),
        ("limit", args.limit),
        ("offset", args.offset),
        ("sort", args.sort),
    ):
        if value is not None:
            query.append((key, str(value)))
    out.emit(api.get("/api/transfers", query), args.format, out.transfer_list)
    return EXIT_OK


def _transfer_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/transfers/{args.id}"), args.format, out.transfer_view)
    return EXIT_OK


def _action(name: str, verb: str) -> Run:
    def run(api: ApiClient, args: argparse.Namespace) -> int:
        _, t, _ = api.request("PUT", f"/api/transfers/{args.id}/{name}")
        if name == "retry":
            text: Callable[[Any], str] = lambda t: (  # noqa: E731
                f"transfer {t['id']} created to retry transfer {args.id}"
            )
        else:
            text = lambda t: f"transfer {t['id']} {verb} ({t['status']})"  # noqa: E731
        out.emit(t, args.format, text)
        return EXIT_OK

    return run


def _transfer_watch(api: ApiClient, args: argparse.Namespace) -> int:
    return _watch(api, args.id, args)


class _Rate:
    """Bytes per second over the last few seconds of samples."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def add(self, at: float, progress: int) -> float | None:
        if self.samples and progress < self.samples[-1][1]:
            self.samples.clear()  # started again from zero
        self.samples.append((at, progress))
        while len(self.samples) > 2 and at - self.samples[0][0] > self.window:
            self.samples.pop(0)
        first_at, first = self.samples[0]
        if at - first_at <= 0:
            return None
        return (progress - first) / (at - first_at)


def _watch(api: ApiClient, transfer_id: int, args: argparse.Namespace) -> int:
    """Follow a transfer until it ends; a live bar on a terminal, a line per change
    otherwise. Exit status 0 only when it ends DONE."""
    tty = sys.stderr.isatty()
    rate = _Rate()
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    last_line = ""
    while True:
        t = api.get(f"/api/transfers/{transfer_id}")
        status = t["status"]
        ended = status in _ENDED and not (status == "ERROR" and t["remainingAttempts"] > 0)
        speed = rate.add(time.monotonic(), t["progress"])
        total = t["filesize"]
        eta = None
        if speed and speed > 0 and total > 0:
            eta = max(0.0, (total - t["progress"]) / speed)
        label = f"{status} {t['step']}" if status == "RUNNING" else status
        if tty:
            bar = out.progress_bar(t["progress"], total, speed, eta, label)
            sys.stderr.write("\r\x1b[2K" + bar)
            sys.stderr.flush()
        else:
            line = f"transfer {transfer_id}: {status} {t['step']}"
            if line != last_line:
                print(line, file=sys.stderr)
                last_line = line
        if ended:
            break
        if deadline is not None and time.monotonic() > deadline:
            if tty:
                sys.stderr.write("\n")
            raise ClientError(
                EXIT_TRANSFER_FAILED,
                f"transfer {transfer_id} still {status} after {args.wait_timeout:g} s",
            )
        time.sleep(args.interval)
    if tty:
        sys.stderr.write("\n")
    out.emit(t, args.format, _summary)
    return EXIT_OK if status == "DONE" else EXIT_TRANSFER_FAILED


def _summary(t: dict[str, Any]) -> str:
    text = f"transfer {t['id']} {t['status']}"
    if t["status"] == "DONE":
        text += f": {out.size(t['filesize'])}"
        if t.get("sha256"):
            text += f", sha256 {t['sha256']}"
    elif t.get("errorCode") not in (None, "TeOk"):
        text += f": {t['errorCode']}: {t['errorMsg']}"
    return text


def add_transfer(commands: Commands) -> None:
    group = _group(commands, "transfer", "create, list and drive transfers through the API")

    add = _command(group, "add", "create a client transfer", _transfer_add)
    add.add_argument("-r", "--rule", required=True)
    add.add_argument("-p", "--partner", required=True)
    add.add_argument(
        "-f", "--file", required=True, help="in the rule's folder (send) or at the partner"
    )
    add.add_argument("-o", "--output", help="name at the destination")
    add.add_argument("-l", "--login", help="our account at the partner")
    add.add_argument("-w", "--way", choices=("send", "receive"), help="checked against the rule")
    add.add_argument("-d", "--date", help="start at (RFC 3339); default now")
    add.add_argument(
        "-i", "--info", action="append", metavar="KEY=VALUE", help="transfer info (repeatable)"
    )
    add.add_argument("--attempts", type=int, help="automatic attempts after an error")
    add.add_argument("--retry-delay", type=float, help="seconds before the first attempt")
    add.add_argument("--retry-factor", type=float, help="delay multiplier per attempt")
    add.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _watch_options(add)

    ls = _command(group, "list", "list transfers (every status)", _transfer_list)
    ls.add_argument("-s", "--status", action="append", help="repeatable")
    ls.add_argument("-r", "--rule")
    ls.add_argument("-p", "--partner")
    ls.add_argument("-a", "--account")
    ls.add_argument("--start", help="started at or after (RFC 3339)")
    ls.add_argument("--follow", help="correlation id (followID)")
    ls.add_argument("-l", "--limit", type=int)
    ls.add_argument("--offset", type=int)
    ls.add_argument("--sort", help="e.g. start+, id-, status+")

    get = _command(group, "get", "show one transfer", _transfer_get)
    get.add_argument("id", type=_id)
    for name, verb, help_text in (
        ("pause", "paused", "pause a planned or running transfer"),
        ("resume", "resumed", "resume a paused, interrupted or failed transfer"),
        ("cancel", "cancelled", "cancel a transfer"),
        ("retry", "retried", "start the same transfer again from zero"),
    ):
        action = _command(group, name, help_text, _action(name, verb))
        action.add_argument("id", type=_id)
    watch = _command(group, "watch", "follow a transfer until it ends", _transfer_watch)
    watch.add_argument("id", type=_id)
    _watch_options(watch)


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval", type=seconds, default=0.5, help="seconds between looks (default 0.5)"
    )
    parser.add_argument(
        "--wait-timeout", type=seconds, help="give up (exit 6) after this long (default: never)"
    )


# ------------------------------------------------------------------------------- rules


def _rule_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [[r["name"], r["direction"], r["path"], r.get("comment", "")] for r in data["rules"]]
        return out.table(rows, ("NAME", "DIRECTION", "PATH", "COMMENT"))

    out.emit(api.get("/api/rules"), args.format, human)
    return EXIT_OK


def _rule_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/rules/{_name(args.name)}"), args.format, out.yaml_text)
    return EXIT_OK


def _rule_apply(api: ApiClient, args: argparse.Namespace) -> int:
    import yaml

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise ClientError(EXIT_USAGE, f"{args.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ClientError(EXIT_USAGE, f"{args.file}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # the API reports the mistake with its line
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ClientError(EXIT_USAGE, f"{args.file}: no rule name (a `name:` key) found")
    # The file is sent as it is, comments included: it becomes rules/<name>.yaml.
    status, rule, _ = api.request(
        "PUT", f"/api/rules/{_name(name)}", raw=text.encode(), content_type="application/yaml"
    )
    verb = "created" if status == 201 else "replaced"
    out.emit(rule, args.format, lambda r: f"rule {r['name']} {verb}")
    return EXIT_OK


def _rule_delete(api: ApiClient, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/api/rules/{_name(args.name)}")
    out.emit(
        {"name": args.name, "deleted": True}, args.format, lambda d: f"rule {d['name']} deleted"
    )
    return EXIT_OK


def add_rule(commands: Commands) -> None:
    group = _group(commands, "rule", "list, show, write and delete rules through the API")
    _command(group, "list", "list the rules", _rule_list)
    get = _command(group, "get", "show a rule (as YAML for people)", _rule_get)
    get.add_argument("name")
    apply = _command(
        group,
        "apply",
        "create or replace a rule from its YAML file (checked, then loaded live)",
        _rule_apply,
    )
    apply.add_argument("-f", "--file", required=True, help="the rule's YAML file ('-': stdin)")
    delete = _command(group, "delete", "delete a rule", _rule_delete)
    delete.add_argument("name")


# -------------------------------------------------------------------- partners, servers


def _partner_row(p: dict[str, Any]) -> list[Any]:
    return [p["name"], p["protocol"], p["address"], p["port"] or "", p["login"]]


def _partner_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [_partner_row(p) for p in data["partners"]]
        return out.table(rows, ("NAME", "PROTOCOL", "ADDRESS", "PORT", "LOGIN"))

    out.emit(api.get("/api/partners"), args.format, human)
    return EXIT_OK


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

    out.emit(api.get(f"/api/partners/{_name(args.name)}"), args.format, human)
    return EXIT_OK


def add_partner(commands: Commands) -> None:
    group = _group(commands, "partner", "show the partners we connect to")
    _command(group, "list", "list the partners", _partner_list)
    get = _command(group, "get", "show a partner (never its password)", _partner_get)
    get.add_argument("name")


def _server_list(api: ApiClient, args: argparse.Namespace) -> int:
    def human(data: dict[str, Any]) -> str:
        rows = [
            [s["name"], s["protocol"], s["address"], s["boundPort"] or s["port"], s["state"]]
            for s in data["servers"]
        ]
        return out.table(rows, ("NAME", "PROTOCOL", "ADDRESS", "PORT", "STATE"))

    out.emit(api.get("/api/servers"), args.format, human)
    return EXIT_OK


def add_server(commands: Commands) -> None:
    group = _group(commands, "server", "show our servers")
    _command(group, "list", "list our servers and their state", _server_list)


# ------------------------------------------------------------------------------- tokens


def _permission_pairs(values: list[str]) -> dict[str, str]:
    found = {}
    for item in values:
        area, sep, letters = item.partition("=")
        if not sep:
            raise ClientError(EXIT_USAGE, f"--permission {item!r}: expected AREA=LETTERS")
        found[area] = letters
    return found


def _token_create(api: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"expiresIn": args.expires_in}
    if args.permission:
        body["permissions"] = _permission_pairs(args.permission)
    if args.comment:
        body["comment"] = args.comment
    _, token, _ = api.request("POST", "/api/tokens", body=body)
    if args.format == "human":
        # The token alone on stdout, so that TOKEN=$(gatewayd token create ...) works.
        print(f"token {token['id']} expires {token['expires']}", file=sys.stderr)
        print(token["token"])
    else:
        out.emit(token, args.format, str)
    return EXIT_OK


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
    return EXIT_OK


def _token_revoke(api: ApiClient, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/api/tokens/{_name(args.id)}")
    out.emit({"id": args.id, "revoked": True}, args.format, lambda d: f"token {d['id']} revoked")
    return EXIT_OK


def add_token(commands: Commands) -> None:
    group = _group(commands, "token", "issue and revoke API bearer tokens")
    create = _command(
        group, "create", "issue a token for your user (prints it once)", _token_create
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
    _command(group, "list", "list tokens (never the tokens themselves)", _token_list)
    revoke = _command(group, "revoke", "revoke a token", _token_revoke)
    revoke.add_argument("id")


# ------------------------------------------------------------------------------- status


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
        return out.key_values(pairs)

    out.emit(api.get("/api/about"), args.format, human)
    return EXIT_OK


def add_status(commands: Commands) -> None:
    _command(commands, "status", "show the running gateway's state", _status)


GROUPS = (add_transfer, add_rule, add_partner, add_server, add_token, add_status)
