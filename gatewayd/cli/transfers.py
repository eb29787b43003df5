"""`gatewayd transfer add|list|get|pause|resume|cancel|retry|watch`: client transfers
created, listed and driven through the admin API, and a transfer followed until it ends
(a live bar on a terminal, one line per change otherwise)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gatewayd.cli import output as out
from gatewayd.cli.api_client import ApiClient, NoStream
from gatewayd.cli.api_command import Run, command, group, seconds, transfer_id
from gatewayd.cli.exits import CliError, Exit

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands

__all__ = ["add"]

# Statuses after which a watched transfer will not move without someone acting.
_ENDED = ("DONE", "ERROR", "CANCELLED", "PAUSED")


def _info_pairs(values: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(Exit.USAGE, f"--info {item!r}: expected KEY=VALUE")
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
    return Exit.OK


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
    return Exit.OK


def _transfer_get(api: ApiClient, args: argparse.Namespace) -> int:
    out.emit(api.get(f"/api/transfers/{args.id}"), args.format, out.transfer_view)
    return Exit.OK


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
        return Exit.OK

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


class _Display:
    """What `watch` shows: a live bar on a terminal, a line per change otherwise."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.tty = sys.stderr.isatty()
        self.last_line = ""

    def show(self, t: Mapping[str, Any], speed: float | None, eta: float | None) -> None:
        status = t["status"]
        if self.tty:
            label = f"{status} {t['step']}" if status == "RUNNING" else status
            bar = out.progress_bar(t["progress"], t["filesize"], speed, eta, label)
            sys.stderr.write("\r\x1b[2K" + bar)
            sys.stderr.flush()
        else:
            line = f"transfer {self.number}: {status} {t['step']}"
            if line != self.last_line:
                print(line, file=sys.stderr)
                self.last_line = line

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _ended(t: Mapping[str, Any]) -> bool:
    status = t["status"]
    return status in _ENDED and not (status == "ERROR" and t["remainingAttempts"] > 0)


def _watch(api: ApiClient, number: int, args: argparse.Namespace) -> int:
    """Follow a transfer until it ends, from the gateway's live stream of running
    transfers (`/api/transfers/events`), else by asking for the row every `--interval`
    seconds (a gateway without the stream). Exit status 0 only when it ends DONE."""
    display = _Display(number)
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    try:
        t = _follow_stream(api, number, args, display, deadline)
    except NoStream:
        t = _follow_polling(api, number, args, display, deadline)
    display.end()
    out.emit(t, args.format, _summary)
    return Exit.OK if t["status"] == "DONE" else Exit.TRANSFER_FAILED


def _check_deadline(
    t: Mapping[str, Any], args: argparse.Namespace, display: _Display, deadline: float | None
) -> None:
    if deadline is not None and time.monotonic() > deadline:
        display.end()
        raise CliError(
            Exit.TRANSFER_FAILED,
            f"transfer {t['id']} still {t['status']} after {args.wait_timeout:g} s",
        )


def _follow_stream(
    api: ApiClient,
    number: int,
    args: argparse.Namespace,
    display: _Display,
    deadline: float | None,
) -> dict[str, Any]:
    """While the transfer runs on the node we are connected to, its progress comes with
    each event; otherwise (planned, paused, run by another node) each event is the
    moment to look at its row."""
    t: dict[str, Any] = api.get(f"/api/transfers/{number}")
    display.show(t, None, None)
    if _ended(t):
        return t
    for event, data in api.events("/api/transfers/events"):
        if event != "transfers" or not isinstance(data, dict):
            continue
        live = next((r for r in data.get("running", ()) if r.get("id") == number), None)
        if live is not None:
            t.update(status=live["status"], step=live["step"], progress=live["progress"])
            display.show(t, live.get("rate") or None, live.get("eta"))
        else:
            t = api.get(f"/api/transfers/{number}")
            display.show(t, None, None)
            if _ended(t):
                return t
        _check_deadline(t, args, display, deadline)
    # The stream ended (the daemon stops): the row says where the transfer is.
    return _follow_polling(api, number, args, display, deadline)


def _follow_polling(
    api: ApiClient,
    number: int,
    args: argparse.Namespace,
    display: _Display,
    deadline: float | None,
) -> dict[str, Any]:
    rate = _Rate()
    while True:
        t: dict[str, Any] = api.get(f"/api/transfers/{number}")
        speed = rate.add(time.monotonic(), t["progress"])
        total = t["filesize"]
        eta = None
        if speed and speed > 0 and total > 0:
            eta = max(0.0, (total - t["progress"]) / speed)
        display.show(t, speed, eta)
        if _ended(t):
            return t
        _check_deadline(t, args, display, deadline)
        time.sleep(args.interval)


def _summary(t: dict[str, Any]) -> str:
    text = f"transfer {t['id']} {t['status']}"
    if t["status"] == "DONE":
        text += f": {out.size(t['filesize'])}"
        if t.get("sha256"):
            text += f", sha256 {t['sha256']}"
    elif t.get("errorCode") not in (None, "TeOk"):
        text += f": {t['errorCode']}: {t['errorMsg']}"
    return text


def add(commands: Commands) -> None:
    """The `transfer` group."""
    transfers = group(commands, "transfer", "create, list and drive transfers through the API")

    create = command(transfers, "add", "create a client transfer", _transfer_add)
    create.add_argument("-r", "--rule", required=True)
    create.add_argument("-p", "--partner", required=True)
    create.add_argument(
        "-f", "--file", required=True, help="in the rule's folder (send) or at the partner"
    )
    create.add_argument("-o", "--output", help="name at the destination")
    create.add_argument("-l", "--login", help="our account at the partner")
    create.add_argument("-w", "--way", choices=("send", "receive"), help="checked against the rule")
    create.add_argument("-d", "--date", help="start at (RFC 3339); default now")
    create.add_argument(
        "-i", "--info", action="append", metavar="KEY=VALUE", help="transfer info (repeatable)"
    )
    create.add_argument("--attempts", type=int, help="automatic attempts after an error")
    create.add_argument("--retry-delay", type=float, help="seconds before the first attempt")
    create.add_argument("--retry-factor", type=float, help="delay multiplier per attempt")
    create.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _watch_options(create)

    ls = command(transfers, "list", "list transfers (every status)", _transfer_list)
    ls.add_argument("-s", "--status", action="append", help="repeatable")
    ls.add_argument("-r", "--rule")
    ls.add_argument("-p", "--partner")
    ls.add_argument("-a", "--account")
    ls.add_argument("--start", help="started at or after (RFC 3339)")
    ls.add_argument("--follow", help="correlation id (followID)")
    ls.add_argument("-l", "--limit", type=int)
    ls.add_argument("--offset", type=int)
    ls.add_argument("--sort", help="e.g. start+, id-, status+")

    get = command(transfers, "get", "show one transfer", _transfer_get)
    get.add_argument("id", type=transfer_id)
    for name, verb, help_text in (
        ("pause", "paused", "pause a planned or running transfer"),
        ("resume", "resumed", "resume a paused, interrupted or failed transfer"),
        ("cancel", "cancelled", "cancel a transfer"),
        ("retry", "retried", "start the same transfer again from zero"),
    ):
        action = command(transfers, name, help_text, _action(name, verb))
        action.add_argument("id", type=transfer_id)
    watch = command(transfers, "watch", "follow a transfer until it ends", _transfer_watch)
    watch.add_argument("id", type=transfer_id)
    _watch_options(watch)


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval", type=seconds, default=0.5, help="seconds between looks (default 0.5)"
    )
    parser.add_argument(
        "--wait-timeout",
        type=seconds,
        help=f"give up (exit {int(Exit.TRANSFER_FAILED)}) after this long (default: never)",
    )
