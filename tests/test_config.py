"""Configuration loading: exact file:line messages, paths, rules, demo secrets."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import pytest
from pydantic import Field

from gatewayd import ports as protocol_registry
from gatewayd.config import (
    ConfigError,
    LoadedConfig,
    Problem,
    demo_secrets_in_use,
    ensure_folders,
    load_config,
    load_rule_text,
)
from gatewayd.config.schema import PartnerConfig, ServerConfig
from gatewayd.config.yamlsource import parse_yaml
from gatewayd.model import Direction
from gatewayd.tasks.base import task_types

CONFIGS = Path(__file__).parent / "configs"
CHECKOUT = Path(__file__).resolve().parent.parent

# Cheap argon2id hashes (m=8, t=1) of the passwords named, so that tests stay fast.
HASH_OPS = (
    "$argon2id$v=19$m=8,t=1,p=1$XAPvI7Lpj0QPQzBVzC9wxw$FbXlFiRVsEUKQ1k4YuJivrQLUn9kGO8KtvHOVQwJYl8"
)
HASH_DEMO = (
    "$argon2id$v=19$m=8,t=1,p=1$aQEY1G/cw/hHr8nw5RPLfQ$MhTfJw38MQFimftb6HA7ubeBMWB6lhfI9OkZU3RJcbI"
)
HASH_ADMIN = (
    "$argon2id$v=19$m=8,t=1,p=1$GROg04ukRSQwR+gkDMgNrg$gqUOPO5hCZq7lnjr24UtXLJgR0t6WxZ1oF8XQf/0/qk"
)
HASH_BOB = (
    "$argon2id$v=19$m=8,t=1,p=1$TYfiR0i/jZl6dHc+wqeJgA$Uq0OCpaeVGlcW3rUhIY9FuJaIpxs59AcKLZlhIftMkk"
)


class GdTestServer(ServerConfig):
    greeting: str = "hi"


class GdTestPartner(PartnerConfig):
    chunk_size: Annotated[int, Field(ge=1)] = 1024


@pytest.fixture(autouse=True)
def test_protocols() -> Iterator[None]:
    """Register throwaway protocols: `gdtest` (both sides, with options of its own) and
    `gdclientonly` (no server side)."""
    specs = [
        protocol_registry.ProtocolSpec(
            "gdtest", server_config=GdTestServer, partner_config=GdTestPartner
        ),
        protocol_registry.ProtocolSpec("gdclientonly", partner_config=PartnerConfig),
    ]
    for spec in specs:
        protocol_registry.register(spec)
    yield
    for spec in specs:
        protocol_registry._REGISTRY.pop(spec.name, None)


def copy_configs(name: str, tmp_path: Path) -> Path:
    """A copy of tests/configs/<name> in tmp_path (its folder)."""
    target = tmp_path / name
    shutil.copytree(CONFIGS / name, target)
    return target


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(problem) for problem in caught.value.problems]


def known_protocols() -> str:
    return ", ".join(protocol_registry.names())


# ------------------------------------------------------------------------ a good config


def test_good_config_loads_with_resolved_paths(tmp_path: Path) -> None:
    root = copy_configs("good", tmp_path)
    loaded = load_config(root / "etc" / "gatewayd.yaml")

    paths = loaded.paths
    assert paths.config_file == root / "etc" / "gatewayd.yaml"
    assert paths.home == root  # `home: ..` against the config file's folder
    assert paths.state_dir == root / "var"
    assert paths.data_dir == root / "var" / "data"
    assert paths.rules_dir == root / "rules"
    assert paths.database == root / "db" / "gatewayd.db"
    assert paths.lock_file == root / "var" / "gatewayd.lock"

    config = loaded.config
    assert config.source == root / "etc" / "gatewayd.yaml"
    assert sorted(config.rules) == ["inbox", "outbox"]  # notes.txt is not a rule
    inbox, outbox = config.rules["inbox"], config.rules["outbox"]
    assert inbox.source == root / "rules" / "inbox.yaml"
    assert outbox.source == root / "rules" / "outbox.yml"
    assert inbox.direction is Direction.RECEIVE
    assert inbox.allows_account("acme") and not inbox.allows_account("other")
    assert outbox.allows_partner("anyone")
    assert [task.spec().args for task in inbox.post] == [{"path": "#HOMEPATH#/archive/#DATE#"}]
    assert loaded.rule_folder(inbox) == root / "var" / "data" / "inbox"
    assert loaded.rule_tmp_folder(inbox) == root / "var" / "data" / "inbox" / ".tmp"
    assert loaded.rule_folder(outbox) == root / "shared" / "out"  # relative to home
    assert loaded.rule_tmp_folder(outbox) == root / "shared" / "out" / ".tmp"
    assert loaded.rule_file("inbox") == root / "rules" / "inbox.yaml"
    assert loaded.rule_file("new") == root / "rules" / "new.yaml"

    # Servers and partners are the protocol's own models, options included.
    server = config.servers["test"]
    assert isinstance(server, GdTestServer) and server.greeting == "hello"
    partner = config.partners["remote"]
    assert isinstance(partner, GdTestPartner) and partner.chunk_size == 10

    assert loaded.tz == ZoneInfo("Europe/Paris")
    assert loaded.warnings == []
    assert demo_secrets_in_use(loaded) == []
    # Loading checks folders without creating any.
    assert not (root / "var").exists() and not (root / "db").exists()
    assert "remote-secret" not in repr(loaded) and HASH_OPS not in repr(loaded)


def test_ensure_folders_creates_every_folder(tmp_path: Path) -> None:
    root = copy_configs("good", tmp_path)
    loaded = load_config(root / "etc" / "gatewayd.yaml")
    ensure_folders(loaded)
    for folder in (
        root / "var",
        root / "var" / "data",
        root / "db",
        root / "var" / "data" / "inbox" / ".tmp",
        root / "shared" / "out" / ".tmp",
    ):
        assert folder.is_dir(), folder
    mode = stat.S_IMODE((root / "var" / "data" / "inbox" / ".tmp").stat().st_mode)
    assert mode == 0o750 & ~_umask()
    ensure_folders(loaded)  # idempotent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_relative_config_path_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "site" / "gatewayd.yaml", "# only defaults\n")
    monkeypatch.chdir(tmp_path)
    loaded = load_config(Path("site/gatewayd.yaml"))
    site = tmp_path / "site"
    assert loaded.paths.home == site  # default home "." is the config file's folder
    assert loaded.paths.state_dir == site / "var"
    assert loaded.paths.database == site / "var" / "gatewayd.db"
    assert loaded.paths.rules_dir == site / "rules"  # missing: no rules, not an error
    assert loaded.config.rules == {}
    assert loaded.tz is not None


def test_shipped_demo_config_loads_with_demo_warnings(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(CHECKOUT / "etc", root / "etc")
    shutil.copytree(CHECKOUT / "rules", root / "rules")
    loaded = load_config(root / "etc" / "gatewayd.yaml")
    assert loaded.paths.home == root
    assert sorted(demo_secrets_in_use(loaded)) == [
        "API user 'admin'",
        "account 'demo'",
        "account 'relay'",
        "partner 'loopback'",
    ]
    assert all("demo secret in use for" in w.message for w in loaded.warnings)


# ------------------------------------------------------------------ mistakes, all at once


def test_broken_main_config_reports_every_mistake(tmp_path: Path) -> None:
    root = copy_configs("broken-main", tmp_path)
    f = root / "gatewayd.yaml"
    assert problems_of(f) == [
        f"{f}:3: cannot create folder {root}/blocker/state: {root}/blocker is a file",
        f"{f}:4: 'timezone': unknown time zone 'Europe/Pariss' "
        "(use an IANA name such as Europe/Paris or UTC)",
        f"{f}:5: unknown key 'shutdown_timout'",
        f"{f}:7: 'synchronous': must be one of NORMAL, FULL",
        f"{f}:9: 'max_transfers': expected an integer, got string '20'",
        f"{f}:11: 'attempts': must be at least 0",
        f"{f}:11: duplicate key 'attempts' (first at line 10)",
        f"{f}:16: 'password': must be an argon2id or bcrypt hash "
        "(make one with `gatewayd hash-password`)",
        f"{f}:17: 'permissions': invalid key 'billing': "
        "must be one of transfers, servers, partners, rules, users, administration",
        f"{f}:17: 'transfers': must be made of the letters r (read), w (write) and d (delete)",
        f"{f}:20: unknown protocol 'sftpp' (known: {known_protocols()})",
        f"{f}:22: missing field 'protocol'",
        f"{f}:25: protocol 'gdclientonly' has no server side: it cannot be used in servers",
        f"{f}:28: 'port': must be at most 65535",
        f"{f}:29: 'greeting': expected a string, got integer 5",
        f"{f}:30: unknown key 'prot'",
        f"{f}:34: 'chunk_size': must be at least 1",
        # A secret's value is never echoed back.
        f"{f}:35: 'password': expected a string, got an integer",
        f"{f}:38: 'password': must be an argon2id or bcrypt hash "
        "(make one with `gatewayd hash-password`)",
        f"{f}:39: 'public_keys': expected a list, got string 'ssh-ed25519 AAAA'",
    ]


def test_broken_rules_report_every_mistake(tmp_path: Path) -> None:
    root = copy_configs("broken-rules", tmp_path)
    r = root / "rules"
    assert problems_of(root / "gatewayd.yaml") == [
        f"{r}/inbox.yaml:2: 'direction': must be one of send, receive",
        f"{r}/inbox.yaml:5: unknown account 'bob'",
        f"{r}/inbox.yaml:6: unknown partner 'nobody'",
        f"{r}/inbox.yaml:8: unknown task type 'COPYY' (known: {', '.join(task_types())})",
        f"{r}/inbox.yaml:13: 'path': unknown marker #BADMARKER#",
        f"{r}/inbox.yaml:14: COPY: missing argument 'path'",
        f"{r}/inbox.yaml:18: COPY: unknown argument 'speed'",
        f"{r}/inbox.yml:1: duplicate rule name 'inbox' (also at {r}/inbox.yaml:1)",
        f"{r}/inbox.yml:3: duplicate path '/inbox' (also used at {r}/inbox.yaml:3)",
        f"{r}/misnamed.yaml:1: rule 'outbox' must be in a file named outbox.yaml, "
        "not misnamed.yaml",
        f"{r}/misnamed.yaml:4: cannot create folder {root}/blocker/out: {root}/blocker is a file",
        f"{r}/misnamed.yaml:5: 'allow': expected a mapping or all, got string 'some'",
        f"{r}/nodirection.yaml:3: missing field 'direction'",
        f"{r}/nodirection.yaml:4: duplicate path '/inbox' (also used at {r}/inbox.yaml:3)",
        f"{r}/syntax.yaml:4: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 3)",
        f"{r}/tags.yaml:4: unsupported YAML tag '!!binary'",
    ]


def test_yaml_syntax_error_in_main_config(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          home: .
         state_dir: var
        """,
    )
    assert problems_of(f) == [
        f"{f}:3: invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping started at line 1)"
    ]


def test_unreadable_and_non_mapping_configs(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert problems_of(missing) == [f"{missing}: cannot read: No such file or directory"]
    listed = write(tmp_path / "list.yaml", "- daemon\n")
    assert problems_of(listed) == [f"{listed}:1: top level: expected a mapping, got a list"]
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"# ok\ndaemon: {timezone: Europe/Paris} # caf\xe9\n")
    assert problems_of(latin1) == [
        f"{latin1}:2: not UTF-8 text: byte 0xe9 cannot be decoded (invalid continuation byte); "
        "is it a binary file, or text in another encoding?"
    ]


def test_rules_are_checked_even_when_daemon_settings_have_mistakes(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          rules_dir: my-rules
          timezone: Nowhere/City
        """,
    )
    rule = write(
        tmp_path / "my-rules" / "in.yaml",
        """
        name: in
        direction: receive
        path: /in
        pre:
          - {type: COPY, args: {path: "#DAET#"}}
        """,
    )
    assert problems_of(f) == [
        f"{f}:3: 'timezone': unknown time zone 'Nowhere/City' "
        "(use an IANA name such as Europe/Paris or UTC)",
        f"{rule}:5: 'path': unknown marker #DAET#",
    ]


def test_listen_address_used_twice(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        api:
          port: 8080
        servers:
          one:
            protocol: gdtest
            port: 2222
          two:
            protocol: gdtest
            port: 2222
          three:
            protocol: gdtest
            port: 8080
          other-address:
            protocol: gdtest
            address: 127.0.0.2
            port: 2222
        """,
    )
    assert problems_of(f) == [
        f"{f}:9: 127.0.0.1:2222 is already used by server 'one' (line 6)",
        f"{f}:12: 127.0.0.1:8080 is already used by the API (line 2)",
    ]


def test_messages_for_unions_and_nesting(tmp_path: Path) -> None:
    write(tmp_path / "gatewayd.yaml", "accounts: {acme: {}}\n")
    rules = tmp_path / "rules"
    cases = {
        "allow: all": None,
        "allow: {accounts: all, partners: []}": None,
        "allow: 3": "'allow': expected a mapping or all, got integer 3",
        "allow: {accounts: some}": "'accounts': expected a list or all, got string 'some'",
        "allow: {acounts: [acme]}": "unknown key 'acounts'",
        "allow: {accounts: [acme, 7]}": "'accounts' item 2: expected a string, got integer 7",
        "post: COPY": "'post': expected a list, got string 'COPY'",
        "post: [COPY]": "'post' item 1: expected a mapping, got string 'COPY'",
        "post: [{args: {}}]": "missing field 'type'",
        "on_collision:": "'on_collision': must be one of rename, overwrite, fail",
        "shared_folder: yes please": "'shared_folder': expected true or false, "
        "got string 'yes please'",
        "folder: 12": "'folder': expected a path, got integer 12",
        "comment: 2024-05-01": "'comment': expected a string, got date 2024-05-01",
    }
    for line, expected in cases.items():
        rule = write(rules / "r.yaml", f"name: r\ndirection: send\npath: /r\n{line}\n")
        if expected is None:
            assert "r" in load_config(tmp_path / "gatewayd.yaml").config.rules, line
        else:
            assert problems_of(tmp_path / "gatewayd.yaml") == [f"{rule}:4: {expected}"], line


def test_rule_name_and_path_rules(tmp_path: Path) -> None:
    write(tmp_path / "gatewayd.yaml", "{}\n")
    rule = write(
        tmp_path / "rules" / "-bad.yaml",
        """
        name: -bad
        direction: send
        path: /a/../b
        """,
    )
    assert problems_of(tmp_path / "gatewayd.yaml") == [
        f"{rule}:1: 'name': must be 1 to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
        f"{rule}:3: 'path': must be a path such as /inbox or /partners/acme: starting with "
        "'/', without empty, '.' or '..' parts, backslashes or control characters",
    ]


def test_rule_folder_under_a_file_is_reported_once(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          data_dir: blocker/data
        """,
    )
    (tmp_path / "blocker").write_text("not a folder\n")
    write(tmp_path / "rules" / "a.yaml", "name: a\ndirection: send\npath: /a\n")
    write(tmp_path / "rules" / "b.yaml", "name: b\ndirection: send\npath: /b\n")
    # The rule folders (data_dir/a, data_dir/b) are blocked by the same file: one message.
    assert problems_of(f) == [
        f"{f}:2: cannot create folder {tmp_path}/blocker/data: {tmp_path}/blocker is a file"
    ]


def test_state_dir_that_is_a_file_and_database_that_is_a_folder(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        """
        daemon:
          state_dir: state
        database:
          path: db
        """,
    )
    (tmp_path / "state").write_text("")
    (tmp_path / "db").mkdir()
    assert problems_of(f) == [
        f"{f}:2: {tmp_path}/state is not a folder",
        f"{f}:4: {tmp_path}/db is a folder, not a file",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_folder_under_a_read_only_folder(tmp_path: Path) -> None:
    f = write(tmp_path / "gatewayd.yaml", "daemon:\n  state_dir: locked/state\n")
    (tmp_path / "locked").mkdir(mode=0o500)
    assert problems_of(f) == [
        f"{f}:2: cannot create folder {tmp_path}/locked/state: {tmp_path}/locked is not writable"
    ]


# ------------------------------------------------------------------------- demo secrets


def test_demo_secrets_are_warned_about(tmp_path: Path) -> None:
    f = write(
        tmp_path / "gatewayd.yaml",
        f"""
        api:
          users:
            admin:
              password: "{HASH_ADMIN}"
            ops:
              password: "{HASH_OPS}"
        accounts:
          demo:
            password: "{HASH_DEMO}"
          bob:
            password: "{HASH_BOB}"
          acme:
            password: "{HASH_OPS}"
          keys-only: {{}}
        """,
    )
    loaded = load_config(f)
    assert [str(w) for w in loaded.warnings] == [
        f"{f}:4: demo secret in use for API user 'admin': change it before exposing the gateway",
        f"{f}:9: demo secret in use for account 'demo': change it before exposing the gateway",
        f"{f}:11: demo secret in use for account 'bob': change it before exposing the gateway",
    ]
    assert demo_secrets_in_use(loaded) == ["account 'demo'", "account 'bob'", "API user 'admin'"]


# ----------------------------------------------------------------------- load_rule_text


@pytest.fixture
def loaded_good(tmp_path: Path) -> LoadedConfig:
    return load_config(copy_configs("good", tmp_path) / "etc" / "gatewayd.yaml")


def test_load_rule_text_accepts_a_new_rule_and_a_replacement(loaded_good: LoadedConfig) -> None:
    rules_dir = loaded_good.paths.rules_dir
    new = load_rule_text(loaded_good, "name: reports\ndirection: send\npath: /reports\n", "api")
    assert new.name == "reports" and new.source == rules_dir / "reports.yaml"
    # Same name as an existing rule: it replaces it, even with the same path.
    replaced = load_rule_text(
        loaded_good,
        "name: outbox\ndirection: send\npath: /partners/outbox\ncomment: new\n",
        "api",
    )
    assert replaced.comment == "new" and replaced.source == rules_dir / "outbox.yml"


def test_load_rule_text_reports_clashes_and_mistakes(loaded_good: LoadedConfig) -> None:
    inbox = loaded_good.paths.rules_dir / "inbox.yaml"
    text = textwrap.dedent(
        """
        name: inbox2
        direction: receive
        path: /inbox
        allow:
          accounts: [acme, ghost]
        post:
          - type: MOVE
            args: {path: "#NOPE#"}
        """
    ).lstrip()
    with pytest.raises(ConfigError) as caught:
        load_rule_text(loaded_good, text, "<api>")
    assert [str(p) for p in caught.value.problems] == [
        f"<api>:3: duplicate path '/inbox' (also used at {inbox}:3)",
        "<api>:5: unknown account 'ghost'",
        "<api>:8: 'path': unknown marker #NOPE#",
    ]
    with pytest.raises(ConfigError) as caught:
        load_rule_text(loaded_good, "name: x\n  bad: [", "<api>")
    assert [p.line for p in caught.value.problems] == [2]


# ------------------------------------------------------------------------------- YAML


def test_yaml_positions_and_refusals() -> None:
    source = parse_yaml(
        textwrap.dedent(
            """
            # comment
            a: 1
            b:
              - x: 1
              -
                y: &anchor [1, 2]
            c: *anchor
            <<: {d: 1}
            ? [k]
            : v
            e: !custom 3
            """
        ).lstrip(),
        Path("f.yaml"),
    )
    assert source.data == {"a": 1, "b": [{"x": 1}, {"y": [1, 2]}], "c": [1, 2], "e": None}
    assert source.line(("a",)) == 2
    assert source.line(("b", 0, "x")) == 4
    assert source.line(("b", 1)) == 6  # the item's first key, below its dash
    assert source.line(("b", 1, "y", 1)) == 6
    assert source.line(("a", "missing", 3)) == 2  # the nearest known value
    assert [str(p) for p in source.problems] == [
        "f.yaml:8: merge keys (<<) are not supported",
        "f.yaml:9: a key must be a plain value, not a list or a mapping",
        "f.yaml:11: unsupported YAML tag '!custom'",
    ]


def test_yaml_recursive_alias_and_several_documents() -> None:
    recursive = parse_yaml("a: &x [1, *x]\n", Path("r.yaml"))
    assert [str(p) for p in recursive.problems] == [
        "r.yaml:1: an alias refers to the value that contains it"
    ]
    several = parse_yaml("a: 1\n---\nb: 2\n", Path("s.yaml"))
    assert not several.parsed
    assert [str(p) for p in several.problems] == [
        "s.yaml:2: invalid YAML: a second document starts here (a file holds only one)"
    ]


def test_problem_formatting_and_order() -> None:
    problems = [Problem(Path("b.yaml"), 1, "x"), Problem(Path("a.yaml"), 9, "y")]
    problems.append(Problem(Path("a.yaml"), 10, "z"))
    error = ConfigError([*problems, problems[0]])
    assert [str(p) for p in error.problems] == ["a.yaml:9: y", "a.yaml:10: z", "b.yaml:1: x"]
    assert str(Problem(Path("c.yaml"), 0, "cannot read")) == "c.yaml: cannot read"


@pytest.mark.parametrize("first", ["gatewayd.ports", "gatewayd.config", "gatewayd.config.schema"])
def test_import_order_does_not_matter(first: str) -> None:
    # gatewayd.ports imports the schema, and the loader imports gatewayd.ports.
    code = f"import {first}, gatewayd.ports, gatewayd.config; gatewayd.config.load_config"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_demo_checks_are_remembered_across_starts(tmp_path: Path) -> None:
    """Each account's hash is checked against the demo passwords once, not at every
    start: with hundreds of accounts the checks took minutes (past systemd's start
    timeout). The saved answers tell nothing of the passwords."""
    from gatewayd.config import demo
    from gatewayd.passwords import verification_count

    demo._ANSWERS.clear()  # what other tests of this process checked
    demo._read_from.clear()
    root = copy_configs("good", tmp_path)
    loaded = load_config(root / "etc" / "gatewayd.yaml")
    ensure_folders(loaded)  # as serve does, before it saves what it checked
    demo.save_demo_checks(loaded.paths.state_dir)
    saved = loaded.paths.state_dir / "demo-checks.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert HASH_OPS not in saved.read_text()

    demo._ANSWERS.clear()  # a new process: nothing remembered in memory
    demo._read_from.clear()
    before = verification_count()
    again = load_config(root / "etc" / "gatewayd.yaml")
    assert verification_count() == before, "every answer came from the saved file"
    assert demo_secrets_in_use(again) == demo_secrets_in_use(loaded)

    saved.write_text("not json")  # damaged: the checks are made again
    demo._ANSWERS.clear()
    demo._read_from.clear()
    load_config(root / "etc" / "gatewayd.yaml")
    assert verification_count() > before
