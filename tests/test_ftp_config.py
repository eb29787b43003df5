"""FTP options checked by the config loader (file:line) and by check-config (the files
they name), and the pieces of the protocol's text: commands, replies, listings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gatewayd.errors import AlreadyRunning, LimitReached, ResumeRefused, TransferError
from gatewayd.model import ErrorCode
from gatewayd.ports import Entry
from protocols.ftp import listing
from protocols.ftp.config import FtpPartnerConfig, FtpServerConfig
from protocols.ftp.errors import reply_for
from protocols.ftp.wire import ReplyParser, parse_command, reply
from tests.http_support import make_cert
from tests.test_config_files import check_config
from tests.test_http_config import problems, write_config


def test_ftp_servers_and_partners_load(tmp_path: Path) -> None:
    pair = make_cert(tmp_path, "c")
    path = write_config(
        tmp_path,
        f"""
        servers:
          plain: {{protocol: ftp, port: 2121, passive_ports: [50000, 50010]}}
          ftps:
            protocol: ftp
            port: 990
            tls: implicit
            cert_file: {pair.cert}
            key_file: {pair.key}
            passive_address: 203.0.113.7
        partners:
          acme: {{protocol: ftp, address: ftp.example, login: me, password: pw, tls: explicit}}
        """,
    )
    config = load(path)
    plain, ftps = config.servers["plain"], config.servers["ftps"]
    assert isinstance(plain, FtpServerConfig) and plain.passive_ports == (50000, 50010)
    assert isinstance(ftps, FtpServerConfig) and ftps.tls == "implicit"
    acme = config.partners["acme"]
    assert isinstance(acme, FtpPartnerConfig) and acme.ftp_port == 21 and acme.uses_tls


def load(path: Path):  # type: ignore[no-untyped-def]
    from gatewayd.config import load_config

    return load_config(path).config


def test_mistakes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        servers:
          nocert: {protocol: ftp, tls: required}
          plaincert: {protocol: ftp, cert_file: /c.pem}
          ports: {protocol: ftp, passive_ports: [60000, 50000]}
          nat: {protocol: ftp, passive_address: gw.example}
          typo: {protocol: ftp, eof_grace: -1}
        partners:
          nopw: {protocol: ftp, address: a.example, login: me}
          both: {protocol: ftp, address: a, login: me, password: p, tls: explicit, ca_file: /a, cert_sha256: "00"}
        """,  # noqa: E501
    )
    found = problems(path)
    expected = [
        (5, "tls: required needs 'cert_file' and 'key_file'"),
        (6, "cert_file: TLS settings need a 'tls' mode"),
        (7, "'passive_ports' must be [first, last]"),
        (8, "must be an IPv4 address"),
        (9, "must be at least 0"),
        (11, "an ftp partner needs 'password'"),
        (12, "must be a SHA-256 fingerprint"),
    ]
    for line, words in expected:
        assert any(f"gatewayd.yaml:{line}:" in p and words in p for p in found), (line, found)


def test_check_config_loads_the_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = make_cert(tmp_path / "k", "server")
    not_a_key = tmp_path / "k" / "copy.crt"
    not_a_key.write_bytes(pair.cert.read_bytes())
    status, lines = check_config(
        tmp_path,
        f"""
        servers:
          ftps:
            protocol: ftp
            tls: explicit
            cert_file: {pair.cert}
            key_file: {not_a_key}
        partners:
          p:
            protocol: ftp
            address: a
            login: me
            password: x
            tls: explicit
            ca_file: {pair.key}
        """,
        capsys,
    )
    assert status != 0
    assert any(":7:" in line and "private key" in line for line in lines), lines
    assert any(":15:" in line and "no PEM certificate" in line for line in lines), lines


def test_commands_replies_and_listings() -> None:
    # ABOR arrives wrapped in Telnet IP and DM (sent as urgent data).
    assert parse_command(b"\xff\xf4\xff\xf2ABOR\r\n").verb == "ABOR"
    assert parse_command(b"stor a b.txt\r\n").arg == "a b.txt"
    # A file name cannot inject a reply line.
    assert reply(550, "no file x\r\n230 ok") == b"550 no file x  230 ok\r\n"
    parser = ReplyParser()
    assert parser.feed(b"211-Features:\r\n") is None
    assert parser.feed(b" SIZE\r\n") is None
    done = parser.feed(b"211 End\r\n")
    assert done is not None and done.code == 211 and done.lines == ("Features:", "SIZE", "End")
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    entry = Entry("r.csv", False, 42, when)
    line = listing.mlsx_line(entry, when)
    assert line == "type=file;size=42;modify=20260304050607; r.csv"
    parsed = listing.parse_mlsx(line)
    assert parsed == listing.Listed("r.csv", False, 42, when)
    ls = listing.list_line(entry, "alice", when)
    back = listing.parse_list_line(ls, now=when)
    assert back is not None and (back.name, back.size, back.mtime) == (
        "r.csv",
        42,
        when.replace(second=0),
    )
    vsftpd = "-rw-------    1 1001     1001       400000 Jan 02  2024 s b.bin"
    old = listing.parse_list_line(vsftpd, now=when)
    assert (
        old is not None and old.name == "s b.bin" and old.mtime == datetime(2024, 1, 2, tzinfo=UTC)
    )


def test_refusals_map_to_replies() -> None:
    assert (
        reply_for(ResumeRefused("x", 10, 4))[0] == 554
        and "byte 4" in reply_for(ResumeRefused("x", 10, 4))[1]
    )
    assert reply_for(LimitReached("busy", 7.2)) == (450, "busy; try again in 8 s")
    assert reply_for(AlreadyRunning("x"))[0] == 450
    assert reply_for(TransferError(ErrorCode.TeForbidden, "no"))[0] == 550
    assert reply_for(TransferError(ErrorCode.TeFileNotFound, "no"))[0] == 550
    assert reply_for(TransferError(ErrorCode.TeShuttingDown, "bye"))[0] == 421
    assert reply_for(TransferError(ErrorCode.TeBadSize, "full"))[0] == 452
