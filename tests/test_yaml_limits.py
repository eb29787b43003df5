"""What a hostile or broken YAML file cannot do: expand aliases without end ("billion
laughs"), nest deep enough to exhaust the stack, or pass binary data off as text. Each is
a problem at file:line, found quickly, and no data is built."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gatewayd.config import load_config
from gatewayd.config.yamlsource import MAX_ALIAS_VALUES, MAX_DEPTH, parse_yaml, read_yaml
from tests.test_config import problems_of, write

# The rule found by probing the gateway: a SETINFO value whose aliases nest nine levels
# deep, 9**9 (387 million) strings once expanded.
BOMB_RULE = """\
name: x
direction: receive
path: /x
pre:
  - type: SETINFO
    args:
      key: k
      value:
        a: &a [x,x,x,x,x,x,x,x,x]
        b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
        c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
        d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
        e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
        f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
        g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
        h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
        i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
# Where the budget runs out: the first *d, on line 13, whose 7381 values take what the
# aliases add past 10,000 (9*10 + 9*91 + 9*820 before it).
BOMB_PROBLEM = (
    "13: alias *d (anchor &d at line 12) expands to 7381 values: this file's aliases would "
    "add more than 10000 in all, the limit (an alias bomb?)"
)


def test_alias_bomb_in_a_rule_fails_check_config_quickly(tmp_path: Path) -> None:
    config = write(tmp_path / "gatewayd.yaml", "accounts: {acme: {}}\n")
    rule = write(tmp_path / "rules" / "x.yaml", BOMB_RULE)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,  # before the fix: minutes of CPU
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[0] == f"{rule}:{BOMB_PROBLEM}"
    assert elapsed < 20, f"check-config took {elapsed:.1f}s"


def test_alias_budget_is_per_file_and_counts_expanded_values() -> None:
    # Exactly at the budget: 100 aliases of a list of 99 strings (100 values each).
    anchor = "a: &a [" + ", ".join(["x"] * 99) + "]\n"
    at_limit = parse_yaml(anchor + "b: [" + ", ".join(["*a"] * 100) + "]\n", Path("f.yaml"))
    assert at_limit.problems == [] and len(at_limit.data["b"]) == 100
    assert MAX_ALIAS_VALUES == 100 * 100
    over = parse_yaml(anchor + "b: [" + ", ".join(["*a"] * 101) + "]\n", Path("f.yaml"))
    assert not over.parsed and over.data is None
    assert [str(p) for p in over.problems] == [
        "f.yaml:2: alias *a (anchor &a at line 1) expands to 100 values: this file's aliases "
        "would add more than 10000 in all, the limit (an alias bomb?)"
    ]


def test_legitimate_anchors_still_load(tmp_path: Path) -> None:
    config = write(tmp_path / "gatewayd.yaml", "accounts: {acme: {}}\n")
    write(
        tmp_path / "rules" / "in.yaml",
        """
        name: in
        direction: receive
        path: /in
        allow: {accounts: &who [acme]}
        pre: &checks
          - {type: SETINFO, args: {key: seen, value: &meta {by: "#REMOTEHOST#", tags: [a, b]}}}
          - {type: SETINFO, args: {key: again, value: *meta}}
        error: *checks
        """,
    )
    rule = load_config(config).config.rules["in"]
    assert rule.allow.accounts == ("acme",)  # type: ignore[union-attr]
    assert [t.spec().args for t in rule.pre] == [t.spec().args for t in rule.error]
    assert rule.pre[1].spec().args == {
        "key": "again",
        "value": {"by": "#REMOTEHOST#", "tags": ["a", "b"]},
    }


def test_shared_values_are_checked_once_at_the_anchor(tmp_path: Path) -> None:
    write(tmp_path / "gatewayd.yaml", "{}\n")
    rule = write(
        tmp_path / "rules" / "in.yaml",
        """
        name: in
        direction: receive
        path: /in
        pre:
          - {type: SETINFO, args: {key: a, value: &v ["#NOPE#", "#DATE#"]}}
          - {type: SETINFO, args: {key: b, value: [*v, *v, *v]}}
        error: [{type: SETINFO, args: {key: c, value: *v}}]
        """,
    )
    assert problems_of(tmp_path / "gatewayd.yaml") == [
        f"{rule}:5: 'value' item 1: unknown marker #NOPE#"
    ]


def test_deep_nesting_is_refused_without_exhausting_the_stack() -> None:
    deep = parse_yaml("a: " + "[" * 5000 + "]" * 5000 + "\n", Path("d.yaml"))
    assert [str(p) for p in deep.problems] == [
        f"d.yaml:1: lists and mappings nested more than {MAX_DEPTH} levels deep"
    ]
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH)) + f"{'  ' * MAX_DEPTH}v\n"
    assert parse_yaml(block, Path("b.yaml")).problems == []  # 64 mappings, one in the other
    deeper = "".join(f"{'  ' * i}k{i}:\n" for i in range(MAX_DEPTH + 1)) + "  " * 65 + "v\n"
    assert [str(p) for p in parse_yaml(deeper, Path("b.yaml")).problems] == [
        f"b.yaml:{MAX_DEPTH + 1}: lists and mappings nested more than {MAX_DEPTH} levels deep"
    ]
    # Nesting made by aliases counts once they are expanded.
    forty = "[" * 40 + "x" + "]" * 40
    aliased = parse_yaml(f"a: &a {forty}\nb: {'[' * 30}*a{']' * 30}\n", Path("a.yaml"))
    assert [str(p) for p in aliased.problems] == [
        f"a.yaml:2: alias *a (anchor &a at line 1) nests lists and mappings more than "
        f"{MAX_DEPTH} levels deep"
    ]


def test_binary_and_control_characters_are_reported_with_their_line(tmp_path: Path) -> None:
    control = tmp_path / "control.yaml"
    control.write_bytes(b"daemon:\n  home: .\n  state_dir: va\x01r\n")
    assert [str(p) for p in read_yaml(control).problems] == [
        f"{control}:3: the character U+0001 is not allowed in YAML text: is it a binary file?"
    ]
    elf = tmp_path / "elf.yaml"
    elf.write_bytes(b"\x7fELF\x02\x01\x01\x00")
    assert [str(p) for p in read_yaml(elf).problems] == [
        f"{elf}:1: the character U+007F is not allowed in YAML text: is it a binary file?"
    ]
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"a: 1\nb: 2\n\x89PNG\r\n\x1a\n")
    assert [str(p) for p in read_yaml(garbage).problems] == [
        f"{garbage}:3: not UTF-8 text: byte 0x89 cannot be decoded (invalid start byte); "
        "is it a binary file, or text in another encoding?"
    ]


def test_check_config_on_binary_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "gatewayd.yaml"
    garbage.write_bytes(textwrap.dedent("daemon:\n  home: .\n").encode() + b"\x00\x01\x02\xfe")
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(garbage)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"{garbage}:3: not UTF-8 text: byte 0xfe cannot be decoded (invalid start byte); "
        "is it a binary file, or text in another encoding?"
    )
    assert "Traceback" not in result.stderr
