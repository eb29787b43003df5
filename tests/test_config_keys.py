"""`keys:` in gatewayd.yaml and the OpenPGP tasks that name them, as check-config sees
them: every problem at its file and line (a key file missing or holding no key, a key
of the wrong kind, expired, a passphrase that cannot be read, a task naming an unknown
key or one unfit for it), a key expiring within 30 days a warning. Keys are generated
by gpg at test time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load_config
from tests.daemon_proc import daemon_env
from tests.pgp_support import Generated, GpgPeer


@dataclass
class KeyFiles:
    folder: Path
    ours: Generated  # private, passphrase "pw"
    partner: Generated  # public, can encrypt
    signing_only: Generated  # public, cannot encrypt
    expired: Generated  # expired on 2020-01-02
    soon: Generated  # expires in 10 days


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyFiles]:
    root = tmp_path_factory.mktemp("keys")
    maker = GpgPeer(root / "home")
    folder = root / "files"
    try:
        yield KeyFiles(
            folder,
            ours=maker.generate("ours", folder, passphrase="pw"),
            partner=maker.generate("partner", folder),
            signing_only=maker.generate("signer", folder, encrypt=False),
            expired=maker.generate("old", folder, expire="1d", faked_time="20200101T000000"),
            soon=maker.generate("soon", folder, expire="10d"),
        )
    finally:
        maker.close()


def write_config(root: Path, keys: str, rule: str = "", daemon: str = "") -> Path:
    config = root / "etc" / "gatewayd.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    indented = textwrap.indent(textwrap.dedent(daemon).strip("\n"), "  ")
    text = "daemon:\n  home: ..\n" + (indented + "\n" if daemon else "")
    text += "api:\n  enabled: false\nkeys:\n"
    text += textwrap.indent(textwrap.dedent(keys).strip("\n"), "  ") + "\n"
    config.write_text(text)
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    if rule:
        (rules / "inbox.yaml").write_text(textwrap.dedent(rule).lstrip("\n"))
    return config


def line_of(path: Path, text: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    return [str(p) for p in caught.value.problems]


def test_good_keys_load_and_one_expiring_soon_is_a_warning(
    tmp_path: Path, key_files: KeyFiles
) -> None:
    (tmp_path / "pass").write_text("pw\n")
    config = write_config(
        tmp_path,
        f"""
        ours: {{file: {key_files.ours.secret}, kind: private, passphrase_file: pass}}
        partner: {{file: {key_files.partner.public}, kind: public}}
        soon: {{file: {key_files.soon.public}, kind: public}}
        """,
        """
        name: inbox
        direction: receive
        path: /inbox
        post:
          - type: DECRYPT&VERIFY
            args: {signers: [partner, soon]}
          - type: ENCRYPT&SIGN
            args: {recipients: [partner, ours], signer: ours, output: "#TRUEFULLPATH#.pgp"}
        """,
    )
    loaded = load_config(config)
    assert sorted(loaded.key_infos) == ["ours", "partner", "soon"]
    assert loaded.key_infos["ours"].secret and not loaded.key_infos["partner"].secret
    assert loaded.key_infos["partner"].fingerprint == key_files.partner.fingerprint
    warnings = [str(w) for w in loaded.warnings]
    line = line_of(config, "soon:")
    assert len(warnings) == 1 and warnings[0].startswith(f"{config}:{line}: key 'soon' ("), warnings
    assert "in 9.9 days" in warnings[0] or "in 10.0 days" in warnings[0], warnings

    # check-config itself: OK, the warning on stderr.
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(config)],
        capture_output=True, text=True, env=daemon_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"warning: {config}:{line}: key 'soon'" in result.stderr


def test_every_key_problem_at_its_line(tmp_path: Path, key_files: KeyFiles) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "not-a-key").write_text("hello\n")
    config = write_config(
        tmp_path,
        f"""
        gone: {{file: {tmp_path}/missing.asc, kind: public}}
        junk: {{file: {tmp_path}/not-a-key, kind: public}}
        half: {{file: {key_files.partner.public}, kind: private, passphrase_env: GD_NOPE_PW}}
        leaky: {{file: {key_files.ours.secret}, kind: public}}
        old: {{file: {key_files.expired.public}, kind: public}}
        blank: {{file: {key_files.ours.secret}, kind: private, passphrase_file: empty}}
        nopass: {{file: {key_files.ours.secret}, kind: private}}
        signer: {{file: {key_files.signing_only.public}, kind: public}}
        partner: {{file: {key_files.partner.public}, kind: public}}
        """,
    )
    found = problems(config)

    def at(marker: str, message: str) -> str:
        return f"{config}:{line_of(config, marker)}: {message}"

    expected = [
        at("gone:", f"key 'gone': cannot read {tmp_path}/missing.asc: No such file or directory"),
        at("junk:", f"key 'junk': {tmp_path}/not-a-key holds no OpenPGP key"),
        at("half:", f"key 'half': {key_files.partner.public} holds only a public key"),
        at("half:", "key 'half': environment variable GD_NOPE_PW is not set"),
        at("leaky:", f"key 'leaky': {key_files.ours.secret} holds a secret key"),
        at("old:", f"key 'old' ({key_files.expired.fingerprint}) expired on 2020-01-02"),
        at("blank:", f"key 'blank': the passphrase file {tmp_path}/empty is empty"),
        at("nopass:", "'nopass': a private key needs exactly one of 'passphrase_file'"),
    ]
    for message in expected:
        assert any(p.startswith(message) for p in found), f"{message}\nnot in\n" + "\n".join(found)
    assert len(found) == len(expected), "\n".join(found)


def test_tasks_naming_unknown_or_unfit_keys_at_their_line(
    tmp_path: Path, key_files: KeyFiles
) -> None:
    config = write_config(
        tmp_path,
        f"""
        partner: {{file: {key_files.partner.public}, kind: public}}
        signer: {{file: {key_files.signing_only.public}, kind: public}}
        """,
        """
        name: inbox
        direction: receive
        path: /inbox
        post:
          - type: ENCRYPT
            args:
              recipients: [partner, nobody]
          - type: ENCRYPT
            args:
              recipients: signer
          - type: SIGN
            args:
              signer: partner
          - type: DECRYPT
          - type: VERIFY
            args:
              signers: []
              colour: blue
        """,
        daemon="""
        error_tasks:
          - type: ENCRYPT
            args: {recipients: [partner, ghost]}
        """,
    )
    rule = tmp_path / "rules" / "inbox.yaml"
    found = problems(config)
    lines = rule.read_text().splitlines()

    def at(index: int, message: str) -> str:
        return f"{rule}:{index + 1}: {message}"

    def line(text: str, after: int = 0) -> int:
        return next(i for i, x in enumerate(lines) if i >= after and text in x)

    expected = [
        at(line("recipients: [partner"), "ENCRYPT: unknown key 'nobody' (configured keys: "
           "partner, signer)"),
        at(line("recipients: signer"),
           f"ENCRYPT: key 'signer' ({key_files.signing_only.fingerprint}) cannot encrypt"),
        at(line("signer: partner"), "SIGN: key 'partner' is a public key: signing needs a "
           "private key"),
        at(line("type: DECRYPT"), "DECRYPT: no private key is configured"),
        at(line("signers: []"), "VERIFY: argument 'signers' names no key"),
        at(line("colour"), "VERIFY: unknown argument 'colour'"),
        f"{config}:{line_of(config, 'ghost')}: ENCRYPT: unknown key 'ghost' (configured keys: "
        "partner, signer)",
    ]  # fmt: skip
    for message in expected:
        assert any(p.startswith(message) for p in found), f"{message}\nnot in\n" + "\n".join(found)
    assert len(found) == len(expected), "\n".join(found)
