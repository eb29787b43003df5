"""`gatewayd account|partner|user apply|delete` against a real `gatewayd serve` (the
daemon of tests/test_cli_client.py)."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli_client import (  # noqa: F401  (daemon: the fixture)
    Daemon,
    as_json,
    daemon,
    gatewayd,
    ok,
    one_line_error,
)

SECRET = "cli-secret-93b0"


def test_accounts_partners_and_users_applied_and_deleted(daemon: Daemon, tmp_path: Path) -> None:  # noqa: F811
    source = tmp_path / "dora.yaml"
    source.write_text(f"# Dora's login.\nname: dora\npassword: {SECRET}\n")
    assert ok(daemon, "account", "apply", "-f", str(source)) == "account dora created\n"
    written = (daemon.env.root / "accounts" / "dora.yaml").read_text()
    assert "$argon2id$" in written and SECRET not in written
    source.write_text("name: dora\nenabled: false\n")
    shown = as_json(daemon, "account", "apply", "-f", str(source))
    assert shown["enabled"] is False and shown["hasPassword"] is True, shown
    source.write_text("name: dora\nmax_uploads: -1\n")
    refused = gatewayd(daemon, "account", "apply", "-f", str(source))
    assert refused.returncode == 1 and "line 2" in one_line_error(refused)
    assert ok(daemon, "account", "delete", "dora") == "account dora deleted\n"
    assert gatewayd(daemon, "account", "delete", "dora").returncode == 5

    user = tmp_path / "viewer.yaml"
    user.write_text(f"name: viewer\npassword: {SECRET}\npermissions: {{transfers: r}}\n")
    assert ok(daemon, "user", "apply", "-f", str(user)) == "user viewer created\n"
    assert ok(daemon, "user", "delete", "viewer") == "user viewer deleted\n"

    partner = tmp_path / "near.yaml"
    folder = tmp_path / "near"
    folder.mkdir()
    partner.write_text(f"name: near\nprotocol: local\nroot: {folder}\npassword: {SECRET}\n")
    assert ok(daemon, "partner", "apply", "-f", str(partner)) == "partner near created\n"
    assert SECRET not in ok(daemon, "partner", "get", "near", "--format", "json")
    assert ok(daemon, "partner", "delete", "near") == "partner near deleted\n"
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("enabled: true\n")
    assert gatewayd(daemon, "account", "apply", "-f", str(nameless)).returncode == 2
