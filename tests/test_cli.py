"""The `gatewayd` command line: check-config, hash-password, usage."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gatewayd import __version__, cli
from gatewayd.cli import daemon_commands
from gatewayd.cli.exits import EPILOG, Exit, epilog
from gatewayd.passwords import verify_password
from tests.conftest import CHECKOUT, DemoConfig

TIMEOUT = 60  # seconds for one CLI subprocess; they take well under one


def gatewayd(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


# ------------------------------------------------------------------------ check-config


def test_check_config_accepts_the_shipped_demo(
    demo_config: DemoConfig, subprocess_env: dict[str, str]
) -> None:
    result = gatewayd("check-config", "-c", str(demo_config.path), env=subprocess_env)
    assert result.returncode == 0, result.stderr
    # The demo's listeners come with the protocols (http, sftp, ...): count what it ships.
    servers = len(yaml.safe_load(demo_config.path.read_text(encoding="utf-8"))["servers"])
    assert servers >= 1
    assert result.stdout.strip() == (
        f"{demo_config.path}: OK ({servers} server{'s' if servers != 1 else ''}, "
        "1 partner, 2 accounts, 1 API user, 2 rules)"
    )
    # The demo passwords are public: each is pointed at, with file and line.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, result.stderr
    for who in ("API user 'admin'", "account 'demo'", "account 'relay'", "partner 'loopback'"):
        assert any(_at_line(w, demo_config.path, who) for w in warnings), (who, warnings)
    # Only a check: nothing was created.
    assert not (demo_config.root / "var").exists()


def _at_line(warning: str, path: Path, name: str) -> bool:
    """Whether `warning` points at a line of `path` and names `name`."""
    return re.match(rf"warning: {re.escape(str(path))}:\d+: ", warning) is not None and (
        name in warning
    )


def test_check_config_reports_every_problem_with_file_and_line(
    demo_config: DemoConfig, subprocess_env: dict[str, str]
) -> None:
    config_lines = demo_config.path.read_text(encoding="utf-8").splitlines()
    # A typo in a key, on a line we know.
    typo_line = config_lines.index(
        "  level: info                    # debug, info, warning or error"
    )
    config_lines[typo_line] = "  levle: info"
    demo_config.path.write_text("\n".join(config_lines) + "\n", encoding="utf-8")
    rule = demo_config.rules_dir / "outbox.yaml"
    rule.write_text("name: outbox\ndirection: sideways\npath: /outbox\n", encoding="utf-8")

    result = gatewayd("check-config", "-c", str(demo_config.path), env=subprocess_env)

    assert result.returncode == 1
    assert result.stdout == ""
    problems = [line for line in result.stderr.splitlines() if not line.endswith(")")]
    assert any(line.startswith(f"{demo_config.path}:{typo_line + 1}: ") for line in problems), (
        result.stderr
    )
    assert any(line.startswith(f"{rule}:2: ") for line in problems), result.stderr
    assert all(re.match(r"^/\S+:\d+: \S", line) for line in problems), result.stderr
    assert "invalid configuration (" in result.stderr


def test_check_config_on_a_missing_file_fails(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    result = gatewayd("check-config", "-c", str(missing), env=subprocess_env)
    assert result.returncode == 1
    assert str(missing) in result.stderr


def test_config_file_from_the_environment(
    demo_config: DemoConfig, subprocess_env: dict[str, str]
) -> None:
    env = {**subprocess_env, "GATEWAYD_CONFIG": str(demo_config.path)}
    result = gatewayd("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{demo_config.path}: OK")


def test_default_config_is_the_checkouts(monkeypatch: pytest.MonkeyPatch) -> None:
    if daemon_commands.SYSTEM_CONFIG.exists():
        pytest.skip(f"{daemon_commands.SYSTEM_CONFIG} exists on this machine and comes first")
    monkeypatch.delenv("GATEWAYD_CONFIG", raising=False)
    assert daemon_commands.default_config_path() == CHECKOUT / "etc" / "gatewayd.yaml"


def test_no_config_anywhere_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAYD_CONFIG", raising=False)
    monkeypatch.setattr(daemon_commands, "SYSTEM_CONFIG", tmp_path / "absent-system.yaml")
    monkeypatch.setattr(daemon_commands, "CHECKOUT_CONFIG", tmp_path / "absent-checkout.yaml")
    assert cli.main(["check-config"]) == 2
    assert "no configuration file" in capsys.readouterr().err


# ----------------------------------------------------------------------- hash-password


def test_hash_password_from_stdin(subprocess_env: dict[str, str]) -> None:
    password = "correct horse battery staple "  # a trailing space is part of it
    result = gatewayd("hash-password", "--stdin", env=subprocess_env, stdin=password + "\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("$argon2id$")
    assert verify_password(lines[0], password)
    assert not verify_password(lines[0], password.strip())
    assert "horse" not in result.stdout + result.stderr


def test_hash_password_refuses_an_empty_password(subprocess_env: dict[str, str]) -> None:
    result = gatewayd("hash-password", "--stdin", env=subprocess_env, stdin="\n")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "empty password" in result.stderr


def test_hash_password_prompts_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts: list[str] = []
    answers = iter(["s3cret!", "s3cret!"])

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(daemon_commands.getpass, "getpass", fake_getpass)
    assert cli.main(["hash-password"]) == 0
    out = capsys.readouterr()
    assert len(prompts) == 2
    assert verify_password(out.out.strip(), "s3cret!")
    assert "s3cret!" not in out.out + out.err


def test_hash_password_refuses_two_different_answers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["first-try", "second-try"])
    monkeypatch.setattr(daemon_commands.getpass, "getpass", lambda prompt="": next(answers))
    assert cli.main(["hash-password"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert "differ" in out.err
    assert "try" not in out.err


# ------------------------------------------------------------------------------- usage


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["check-config", "--nope"]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gatewayd {__version__}"


# ------------------------------------------------------------------------ exit statuses


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and group under `parser`, with the words that reach it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_exit_statuses_are_documented_in_the_readme() -> None:
    readme = (CHECKOUT / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Exit statuses:") :].split("\n\n")[0]
    documented = [int(n) for n in re.findall(r"[:;] (\d+) ", " ".join(paragraph.split()))]
    assert documented == [int(code) for code in Exit], paragraph


def test_every_help_lists_its_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    top = " ".join(capsys.readouterr().out.split())
    assert epilog(*Exit) in top
    commands = dict(_commands(cli.build_parser()))
    assert {"serve", "check-config", "hash-password", "status"} <= {p[0] for p in commands}
    for words in commands:
        assert cli.main([*words, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0 " in text, words
        if words[0] not in ("serve", "check-config", "hash-password", "db"):
            assert EPILOG in text, words
    # Each daemon command says what its statuses mean for it.
    assert cli.main(["check-config", "--help"]) == 0
    assert "1 invalid configuration" in " ".join(capsys.readouterr().out.split())


def test_api_commands_exit_with_the_statuses_defined_once() -> None:
    # The values scripts rely on, as the README documents them: changing one is a break.
    assert [(code.name, int(code)) for code in Exit] == [
        ("OK", 0), ("ERROR", 1), ("USAGE", 2), ("UNREACHABLE", 3), ("AUTH", 4),
        ("NOT_FOUND", 5), ("TRANSFER_FAILED", 6), ("INTERRUPTED", 130),
    ]  # fmt: skip


def test_the_cli_names_its_exit_statuses() -> None:
    """No bare number as an exit status in gatewayd/cli: each is an `Exit`."""
    for path in sorted((CHECKOUT / "gatewayd" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            value = node.value if isinstance(node, ast.Return) else None
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "CliError":
                value = node.args[0] if node.args else None
            if isinstance(value, ast.Constant) and type(value.value) is int:
                raise AssertionError(f"{path}:{node.lineno}: exit status {value.value} by number")
