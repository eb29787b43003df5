"""`gatewayd check-config` finds what `serve` would trip on: names that would climb out
of (or into) the gateway's folders, and files named by the configuration that are
missing or do not hold what they should (certificates, keys), each at its file:line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from cryptography.hazmat.primitives import serialization

from gatewayd.cli import main
from tests.conftest import DemoConfig
from tests.http_support import CertFiles, make_cert
from tests.test_config import CHECKOUT

HASH = (
    "$argon2id$v=19$m=8,t=1,p=1$XAPvI7Lpj0QPQzBVzC9wxw$FbXlFiRVsEUKQ1k4YuJivrQLUn9kGO8KtvHOVQwJYl8"
)


@dataclass
class Keys:
    """Real certificates and keys, good and bad, in `folder`."""

    folder: Path
    server: CertFiles
    other: CertFiles
    encrypted_tls_key: Path
    ssh_key: Path
    ssh_public: str
    encrypted_ssh_key: Path
    garbage: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    server = make_cert(folder, "server")
    other = make_cert(folder, "other")
    encrypted_tls_key = folder / "encrypted.key"
    private = serialization.load_pem_private_key(server.key.read_bytes(), None)
    encrypted_tls_key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    ssh = asyncssh.generate_private_key("ssh-ed25519")
    ssh_key = folder / "id_ed25519"
    ssh_key.write_bytes(ssh.export_private_key())
    encrypted_ssh_key = folder / "id_encrypted"
    encrypted_ssh_key.write_bytes(ssh.export_private_key(passphrase="right"))
    garbage = folder / "garbage"
    garbage.write_text("not a key\n")
    return Keys(
        folder,
        server,
        other,
        encrypted_tls_key,
        ssh_key,
        ssh.export_public_key().decode().strip(),
        encrypted_ssh_key,
        garbage,
    )


def check_config(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """`gatewayd check-config` of `text` (as etc/gatewayd.yaml under tmp_path): its exit
    status and the lines it printed on stderr, the summary line left out."""
    config = tmp_path / "etc" / "gatewayd.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("daemon: {home: ..}\n" + textwrap.dedent(text).lstrip("\n"))
    capsys.readouterr()
    status = main(["check-config", "-c", str(config)])
    err = capsys.readouterr().err.splitlines()
    if status != 0:
        assert err[-1].startswith(f"{config}: invalid configuration"), err
        err = err[:-1]
    return status, err


# --------------------------------------------------------------------------- names


def test_names_that_become_path_components_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = check_config(
        tmp_path,
        """
        accounts:
          ../../x: {}
          .tmp: {}
          "a\\u202Eb": {}
          "line\\nbreak": {}
          ok: {}
        servers:
          "a/b": {protocol: http}
          ..: {protocol: http}
        partners:
          .tmp: {protocol: local, root: /tmp}
        """,
        capsys,
    )
    f = tmp_path / "etc" / "gatewayd.yaml"
    prefix = "invalid key"
    assert status == 1
    assert lines == [
        f"{f}:3: 'accounts': {prefix} '../../x': cannot be used as a file name: "
        "contains a path separator",
        f"{f}:4: 'accounts': {prefix} '.tmp': cannot be used as a file name: "
        "'.tmp' is reserved for the gateway's own use",
        f"{f}:5: 'accounts': {prefix} 'a\\u202eb': cannot be used as a file name: "
        "contains a bidi control, U+202E (right-to-left override)",
        f"{f}:6: 'accounts': {prefix} 'line\\x0abreak': cannot be used as a file name: "
        "contains a control or line-break character, U+000A",
        f"{f}:9: 'servers': {prefix} 'a/b': cannot be used as a file name: "
        "contains a path separator",
        f"{f}:10: 'servers': {prefix} '..': cannot be used as a file name: empty or dot name",
        f"{f}:12: 'partners': {prefix} '.tmp': cannot be used as a file name: "
        "'.tmp' is reserved for the gateway's own use",
    ]


def test_rule_names_keep_their_stricter_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = tmp_path / "rules" / ".tmp.yaml"
    rule.parent.mkdir()
    rule.write_text("name: .tmp\ndirection: send\npath: /t\n")
    (tmp_path / "rules" / "ok.yaml").write_text("name: ok\ndirection: send\npath: /ok\n")
    status, lines = check_config(tmp_path, "", capsys)
    # Hidden files are not rules; a rule named so in a visible file is refused.
    assert (status, lines) == (0, [])
    rule.rename(tmp_path / "rules" / "tmp.yaml")
    status, lines = check_config(tmp_path, "", capsys)
    assert status == 1
    assert lines == [
        f"{tmp_path}/rules/tmp.yaml:1: 'name': must be 1 to 64 letters, digits, '.', '_' or "
        "'-', starting with a letter or digit",
        f"{tmp_path}/rules/tmp.yaml:1: rule '.tmp' must be in a file named .tmp.yaml, not tmp.yaml",
    ]


# ------------------------------------------------------------------- the API's TLS


def test_api_certificate_and_key_are_loaded(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "etc" / "gatewayd.yaml"
    cases = {
        # Relative paths resolve against home (tmp_path).
        "tls_cert: keys/server.crt\n  tls_key: keys/server.key": None,
        "tls_cert: keys/missing.crt\n  tls_key: keys/server.key": (
            3,
            f"cannot read {keys.folder}/missing.crt: No such file or directory",
        ),
        "tls_cert: keys/server.crt\n  tls_key: keys/missing.key": (
            4,
            f"cannot read {keys.folder}/missing.key: No such file or directory",
        ),
        "tls_cert: keys/server.crt\n  tls_key: keys/other.key": (
            4,
            f"the private key {keys.other.key} does not match the certificate {keys.server.cert}",
        ),
        "tls_cert: keys/server.key\n  tls_key: keys/server.key": (
            3,
            f"{keys.server.key} holds no PEM certificate",
        ),
        "tls_cert: keys/server.crt\n  tls_key: keys/garbage": (
            4,
            f"{keys.garbage} holds no PEM private key that OpenSSL can read",
        ),
        "tls_cert: keys/server.crt\n  tls_key: keys": (4, f"{keys.folder} is a folder, not a file"),
        "tls_cert: keys/server.crt\n  tls_key: keys/encrypted.key": (
            4,
            f"the private key {keys.encrypted_tls_key} is encrypted: gatewayd needs it "
            "without a passphrase (`openssl pkey -in KEY -out PLAIN` writes it so; keep it "
            "mode 0600)",
        ),
    }
    for settings, expected in cases.items():
        status, lines = check_config(tmp_path, f"api:\n  {settings}\n", capsys)
        if expected is None:
            assert (status, lines) == (0, []), settings
        else:
            assert (status, lines) == (1, [f"{f}:{expected[0]}: {expected[1]}"]), settings
    # A disabled API's files are not used: not checked.
    status, _ = check_config(
        tmp_path,
        "api:\n  enabled: false\n  tls_cert: /nowhere.crt\n  tls_key: /nowhere.key\n",
        capsys,
    )
    assert status == 0


# ----------------------------------------------------------------------- HTTPS


def test_https_servers_and_partners_files(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    k = keys
    status, lines = check_config(
        tmp_path,
        f"""
        servers:
          good:
            protocol: https
            cert_file: {k.server.cert}
            key_file: {k.server.key}
            client_certs: optional
            client_ca_file: {k.other.cert}
          gone:
            protocol: https
            cert_file: {k.server.cert}
            key_file: {k.folder}/gone.key
          mismatched:
            protocol: https
            cert_file: {k.server.cert}
            key_file: {k.other.key}
          bad-ca:
            protocol: https
            cert_file: {k.server.cert}
            key_file: {k.server.key}
            client_certs: required
            client_ca_file: {k.garbage}
          unused:
            protocol: https
            enabled: false
            cert_file: /nowhere.crt
            key_file: /nowhere.key
        partners:
          trusted: {{protocol: https, address: a.example, ca_file: {k.server.cert}}}
          bad-ca: {{protocol: https, address: a.example, ca_file: {k.server.key}}}
          client:
            protocol: https
            address: a.example
            cert_file: {k.folder}/nope.crt
            key_file: {k.server.key}
        """,
        capsys,
    )
    f = tmp_path / "etc" / "gatewayd.yaml"
    assert status == 1
    assert lines == [
        f"{f}:12: cannot read {k.folder}/gone.key: No such file or directory",
        f"{f}:16: the private key {k.other.key} does not match the certificate {k.server.cert}",
        f"{f}:22: {k.garbage} holds no PEM certificate",
        f"{f}:30: {k.server.key} holds no PEM certificate",
        f"{f}:34: cannot read {k.folder}/nope.crt: No such file or directory",
    ]


# ------------------------------------------------------------------------ SFTP


def test_sftp_keys_are_read_with_asyncssh(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    k = keys
    (tmp_path / "blocker").write_text("a file\n")
    truncated = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== short"  # the type, no key
    status, lines = check_config(
        tmp_path,
        f"""
        servers:
          sftp:
            protocol: sftp
            host_keys:
              - {k.ssh_key}
              - {k.folder}/new_ed25519_key
              - {k.garbage}
              - {k.encrypted_ssh_key}
              - {tmp_path}/blocker/ssh_host_rsa_key
        partners:
          good:
            protocol: sftp
            address: a.example
            login: me
            private_key: {k.encrypted_ssh_key}
            private_key_passphrase: right
            host_keys: ["{k.ssh_public}"]
          bad:
            protocol: sftp
            address: a.example
            login: me
            private_key: {k.encrypted_ssh_key}
            private_key_passphrase: wrong
            host_keys: ["{k.ssh_public}", "{truncated}"]
          locked:
            protocol: sftp
            address: a.example
            login: me
            private_key: {k.encrypted_ssh_key}
            host_keys: ["{k.ssh_public}"]
          missing:
            protocol: sftp
            address: a.example
            login: me
            private_key: {k.folder}/id_missing
            host_keys: ["{k.ssh_public}"]
        accounts:
          acme:
            public_keys: ["{k.ssh_public}", "{truncated}"]
        """,
        capsys,
    )
    f = tmp_path / "etc" / "gatewayd.yaml"
    assert status == 1
    assert lines == [
        f"{f}:8: host key {k.garbage} is not a private key asyncssh can read (Invalid private key)",
        f"{f}:9: host key {k.encrypted_ssh_key} is encrypted: a server's host key has no "
        "passphrase",
        f"{f}:10: host key {tmp_path}/blocker/ssh_host_rsa_key is missing and cannot be "
        f"generated: {tmp_path}/blocker is not a folder",
        f"{f}:24: this passphrase does not decrypt {k.encrypted_ssh_key}",
        f"{f}:25: not an OpenSSH public key line ('ssh-ed25519 AAAA...'): Invalid public key",
        f"{f}:30: {k.encrypted_ssh_key} is encrypted: give 'private_key_passphrase'",
        f"{f}:36: cannot read {k.folder}/id_missing: No such file or directory",
        f"{f}:40: not an OpenSSH public key line ('ssh-ed25519 AAAA...'): Invalid public key",
    ]
    assert not (k.folder / "new_ed25519_key").exists()  # generated by serve, not checked


def test_generated_host_keys_are_checked_once_they_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = check_config(tmp_path, "servers:\n  sftp: {protocol: sftp}\n", capsys)
    assert status == 0  # none yet: serve generates them
    generated = tmp_path / "var" / "sftp" / "sftp" / "ssh_host_ed25519_key"
    generated.parent.mkdir(parents=True)
    generated.write_bytes(b"\x00" * 10)  # e.g. a disk that filled up
    status, lines = check_config(tmp_path, "servers:\n  sftp: {protocol: sftp}\n", capsys)
    assert (status, lines) == (
        1,
        [
            f"{tmp_path}/etc/gatewayd.yaml:3: host key {generated} is not a private key "
            "asyncssh can read (Invalid private key)"
        ],
    )


def test_asyncssh_is_imported_only_for_sftp(tmp_path: Path, keys: Keys) -> None:
    def imports_asyncssh(text: str) -> bool:
        config = tmp_path / "gatewayd.yaml"
        config.write_text(text)
        code = (
            "import sys; from gatewayd.config import load_config; "
            f"load_config({str(config)!r}); print('asyncssh' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip() == "True"

    # Without an SFTP server, account keys are no one's business (and are not checked).
    fake = "accounts: {acme: {public_keys: ['ssh-ed25519 AAAA x']}}\n"
    assert not imports_asyncssh(fake + "servers: {web: {protocol: http}}\n")
    real = f"accounts: {{acme: {{public_keys: ['{keys.ssh_public}']}}}}\n"
    assert imports_asyncssh(real + "servers: {sftp: {protocol: sftp}}\n")


# ---------------------------------------------------------------------- the demo


def test_the_shipped_demo_passes_check_config(demo_config: DemoConfig) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(demo_config.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("OK (2 servers, 1 partner, 2 accounts, 1 API user, 2 rules)\n")
