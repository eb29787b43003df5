"""The commands that work on this machine's configuration rather than through the API:
`serve` (the daemon, `gatewayd.daemon`), `check-config` and `hash-password`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gatewayd.cli.exits import CliError, Exit, epilog

if TYPE_CHECKING:
    from gatewayd.cli.api_command import Commands
    from gatewayd.passwords import Argon2Parameters

__all__ = [
    "CHECKOUT_CONFIG",
    "CONFIG_ENV",
    "SYSTEM_CONFIG",
    "add",
    "add_config_option",
    "config_path",
    "default_config_path",
]

CONFIG_ENV = "GATEWAYD_CONFIG"
SYSTEM_CONFIG = Path("/etc/gatewayd/gatewayd.yaml")
# The checkout's demo configuration: `etc/` next to the `gatewayd` package.
CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "gatewayd.yaml"


def default_config_path() -> Path:
    """`$GATEWAYD_CONFIG`, else the system's file, else the checkout's demo file."""
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return Path(from_env)
    for candidate in (SYSTEM_CONFIG, CHECKOUT_CONFIG):
        if candidate.is_file():
            return candidate
    raise CliError(
        Exit.USAGE,
        f"no configuration file: pass -c FILE or set {CONFIG_ENV} "
        f"(looked for {SYSTEM_CONFIG} and {CHECKOUT_CONFIG})",
    )


def config_path(args: argparse.Namespace) -> Path:
    """The file `-c` names, else the default (`default_config_path`)."""
    path: Path | None = args.config
    return path if path is not None else default_config_path()


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """`-c/--config FILE`, as every command on this machine's files takes it."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, {SYSTEM_CONFIG}, "
        "or etc/gatewayd.yaml of the checkout)",
    )


# ------------------------------------------------------------------------------- serve


def _add_serve(commands: Commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the gateway in the foreground",
        epilog=epilog(
            Exit.OK,
            Exit.ERROR,
            Exit.USAGE,
            OK="stopped cleanly",
            ERROR="invalid configuration, refused start, or unclean stop",
        ),
    )
    add_config_option(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from gatewayd.daemon import run_daemon

    return run_daemon(config_path(args))


# ------------------------------------------------------------------------ check-config


def _add_check_config(commands: Commands) -> None:
    parser = commands.add_parser(
        "check-config",
        help="validate the configuration and the rules, then exit",
        epilog=epilog(
            Exit.OK,
            Exit.ERROR,
            Exit.USAGE,
            OK="valid (warnings on stderr)",
            ERROR="invalid configuration (every problem on stderr)",
        ),
    )
    add_config_option(parser)
    parser.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from gatewayd.config import ConfigError, load_config

    path = config_path(args)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"{path}: invalid configuration ({_count(len(exc.problems), 'problem')})",
            file=sys.stderr,
        )
        return Exit.ERROR
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    config = loaded.config
    counts = ", ".join(
        (
            _count(len(config.servers), "server"),
            _count(len(config.partners), "partner"),
            _count(len(config.accounts), "account"),
            _count(len(config.api.users), "API user"),
            _count(len(config.rules), "rule"),
        )
    )
    if loaded.watchers:
        counts += f", {_count(len(loaded.watchers), 'watcher')}"
    print(f"{path}: OK ({counts})")
    return Exit.OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ----------------------------------------------------------------------- hash-password


def _add_hash_password(commands: Commands) -> None:
    parser = commands.add_parser(
        "hash-password",
        help="print the argon2id hash of a password, for the configuration",
        description="Reads the password from a prompt (asked twice) or, with --stdin, from "
        "one line of standard input; never from the command line, where other users and "
        "the shell history would see it. The argon2id parameters are those of "
        "`passwords.argon2` in the configuration (only that section is read), or the "
        "built-in ones (t=3, m=65536 KiB, p=4) when there is no configuration file.",
        epilog=epilog(
            Exit.OK,
            Exit.ERROR,
            Exit.USAGE,
            ERROR="empty password, the two answers differ, or passwords.argon2 is invalid",
        ),
    )
    parser.add_argument(
        "--stdin", action="store_true", help="read one line of standard input, no prompt"
    )
    add_config_option(parser)
    parser.set_defaults(handler=_hash_password)


def _argon2_parameters(args: argparse.Namespace) -> Argon2Parameters:
    """`passwords.argon2` of the configuration file (-c FILE, else the default one if
    there is one), else the built-in parameters. Only that section is validated: a file
    that is not valid yet elsewhere (an account still waiting for this very hash) still
    gives its parameters."""
    from gatewayd.config.messages import validate
    from gatewayd.config.schema import Argon2Config
    from gatewayd.config.yamlsource import read_yaml
    from gatewayd.passwords import Argon2Parameters

    path: Path | None = args.config
    if path is None:
        try:
            path = default_config_path()
        except CliError:
            return Argon2Parameters()
    source = read_yaml(path)
    if source.problems:
        raise CliError(Exit.ERROR, str(source.problems[0]))
    section = source.data.get("passwords") if isinstance(source.data, dict) else None
    if not isinstance(section, dict) or section.get("argon2") is None:
        return Argon2Parameters()
    found, problems = validate(Argon2Config, source, ("passwords", "argon2"))
    if found is None:
        raise CliError(Exit.ERROR, "; ".join(str(p) for p in problems))
    return Argon2Parameters(**found.model_dump())


def _hash_password(args: argparse.Namespace) -> int:
    from gatewayd.passwords import hash_password

    params = _argon2_parameters(args)
    if args.stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise CliError(Exit.ERROR, "the passwords differ")
    if not password:
        raise CliError(Exit.ERROR, "empty password refused")
    print(hash_password(password, params))
    return Exit.OK


def add(commands: Commands) -> None:
    """`serve`, `check-config` and `hash-password`."""
    _add_serve(commands)
    _add_check_config(commands)
    _add_hash_password(commands)
