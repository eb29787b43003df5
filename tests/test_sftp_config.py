"""SFTP options checked by the config loader (file:line), and host keys kept on disk."""

from __future__ import annotations

import stat
import textwrap
from pathlib import Path

import asyncssh
import pytest

from gatewayd.config import ConfigError, load_config
from protocols.sftp import hostkeys
from protocols.sftp.config import SftpPartnerConfig, SftpServerConfig
from tests.sftp_peers import keygen


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "etc" / "gatewayd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("daemon: {home: ..}\napi: {enabled: false}\n" + textwrap.dedent(body))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def test_sftp_servers_and_partners_load(tmp_path: Path) -> None:
    host_key = keygen(tmp_path / "peer_key")
    path = write_config(
        tmp_path,
        f"""
        servers:
          sftp: {{protocol: sftp, port: 2222, offer_chacha20: true,
                  host_keys: [{tmp_path}/keys/ed25519_key]}}
        partners:
          acme:
            protocol: sftp
            address: sftp.acme.example
            login: gw
            password: secret
            host_keys: ["{host_key}"]
            remote_dir: /incoming
        """,
    )
    config = load_config(path).config
    server, partner = config.servers["sftp"], config.partners["acme"]
    assert isinstance(server, SftpServerConfig) and server.offer_chacha20
    assert server.host_keys == (tmp_path / "keys" / "ed25519_key",)
    assert isinstance(partner, SftpPartnerConfig)
    assert (partner.ssh_port, partner.temp_suffix, partner.remote_dir) == (22, ".part", "/incoming")
    assert "secret" not in repr(partner)


def test_sftp_option_mistakes_are_reported_with_their_line(tmp_path: Path) -> None:
    good = keygen(tmp_path / "k")
    path = write_config(
        tmp_path,
        f"""
        servers:
          sftp: {{protocol: sftp, host_keys: [relative/key], chacha: true}}
        partners:
          nokey: {{protocol: sftp, address: h, login: gw, password: pw}}
          badkey: {{protocol: sftp, address: h, login: gw, host_keys: ["ssh-ed25519 AAAA"]}}
          nologin: {{protocol: sftp, address: h, host_keys: ["{good}"], private_key: /k}}
        """,
    )
    found = "\n".join(problems(path))
    assert "gatewayd.yaml:5" in found and "must be an absolute path" in found
    assert "chacha" in found
    assert "gatewayd.yaml:7" in found and "host_keys" in found
    assert "gatewayd.yaml:8" in found and "OpenSSH public key line" in found
    assert "gatewayd.yaml:9" in found and "needs 'login'" in found


def test_host_keys_are_generated_once_and_kept(tmp_path: Path) -> None:
    paths = hostkeys.default_paths(tmp_path / "var", "edge")
    assert [p.name for p in paths] == ["ssh_host_ed25519_key", "ssh_host_rsa_key"]
    first = [hostkeys.load_or_create(p) for p in paths]
    assert [k.get_algorithm() for k in first] == ["ssh-ed25519", "ssh-rsa"]
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.with_name(p.name + ".pub").exists()
    assert stat.S_IMODE(paths[0].parent.stat().st_mode) == 0o700
    again = [hostkeys.load_or_create(p) for p in paths]
    assert [k.export_public_key() for k in again] == [k.export_public_key() for k in first]
    assert (
        asyncssh.read_public_key(paths[0].with_name(paths[0].name + ".pub"))
        == first[0].convert_to_public()
    )
