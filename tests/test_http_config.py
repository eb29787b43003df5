"""HTTP options checked by the config loader (file:line), and the header parsers."""

from __future__ import annotations

import base64
import hashlib
import textwrap
from pathlib import Path

import pytest

from gatewayd.config import ConfigError, load_config
from protocols.http import headers as h
from protocols.http.config import HttpPartnerConfig, HttpServerConfig
from tests.http_support import make_cert


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "etc" / "gatewayd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("daemon: {home: ..}\napi: {enabled: false}\n" + textwrap.dedent(body))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(p) for p in caught.value.problems]


def test_http_and_https_servers_and_partners_load(tmp_path: Path) -> None:
    pair = make_cert(tmp_path, "c")
    cert = tmp_path / "c.pem"  # the certificate and its key in one file
    cert.write_bytes(pair.cert.read_bytes() + pair.key.read_bytes())
    path = write_config(
        tmp_path,
        f"""
        servers:
          web: {{protocol: http, port: 8081, max_body_size: 1000, max_uploads_per_account: 2}}
          webs: {{protocol: https, port: 8443, cert_file: {cert}, key_file: {cert}}}
        partners:
          acme: {{protocol: https, address: acme.example, ca_file: {cert}, base_path: /dav/}}
          pinned:
            protocol: https
            address: 10.0.0.1
            cert_sha256: "{"AB:" * 31}AB"
        """,
    )
    config = load_config(path).config
    web, webs = config.servers["web"], config.servers["webs"]
    assert isinstance(web, HttpServerConfig) and web.max_body_size == 1000
    assert isinstance(webs, HttpServerConfig) and webs.cert_file == cert
    acme, pinned = config.partners["acme"], config.partners["pinned"]
    assert isinstance(acme, HttpPartnerConfig) and acme.base_path == "/dav"
    assert isinstance(pinned, HttpPartnerConfig) and pinned.cert_sha256 == "ab" * 32


def test_mistakes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        servers:
          webs: {protocol: https, port: 8443}
          web:
            protocol: http
            cert_file: /etc/ssl/c.pem
          rel:
            protocol: https
            cert_file: certs/c.pem
            key_file: /k.pem
          typo: {protocol: http, max_bodysize: 3}
        partners:
          both: {protocol: https, ca_file: /a.pem, cert_sha256: "00"}
          plain: {protocol: http, ca_file: /a.pem}
        """,
    )
    found = problems(path)
    expected = [
        (5, "an https server needs 'cert_file' and 'key_file'"),
        (6, "cert_file: TLS settings need protocol https"),
        (11, "must be an absolute path, got 'certs/c.pem'"),
        (13, "unknown key 'max_bodysize'"),
        (15, "must be a SHA-256 fingerprint"),
        (16, "ca_file: TLS settings need protocol https"),
    ]
    for line, words in expected:
        assert any(f"gatewayd.yaml:{line}:" in p and words in p for p in found), (line, found)


def test_range_and_content_range() -> None:
    assert h.parse_range(None, 100) is None
    assert h.parse_range("bytes=10-", 100) == (10, 99)
    assert h.parse_range("bytes=10-19", 100) == (10, 19)
    assert h.parse_range("bytes=10-500", 100) == (10, 99)
    assert h.parse_range("bytes=-30", 100) == (70, 99)
    assert h.parse_range("bytes=-300", 100) == (0, 99)
    assert h.parse_range("bytes=0-1,5-6", 100) is None  # multi-range: the whole file
    assert h.parse_range("items=1-2", 100) is None
    with pytest.raises(h.RangeNotSatisfiable):
        h.parse_range("bytes=100-", 100)
    with pytest.raises(h.RangeNotSatisfiable):
        h.parse_range("bytes=-0", 100)

    part = h.parse_content_range("bytes 100-199/1000")
    assert (part.start, part.end, part.total, part.length) == (100, 199, 1000, 100)
    assert h.parse_content_range("bytes 0-9/*").total is None
    end = h.parse_content_range("bytes */1000")
    assert (end.start, end.length, end.total) == (1000, 0, 1000)
    for bad in ("bytes 10-5/100", "bytes 0-100/100", "100-200/300", "bytes=0-1/2"):
        with pytest.raises(h.HeaderError):
            h.parse_content_range(bad)


def test_digests() -> None:
    sha = hashlib.sha256(b"data").digest()
    b64 = base64.b64encode(sha).decode()
    assert h.parse_sha256([("Repr-Digest", f"sha-256=:{b64}:")], whole_body=False) == sha.hex()
    assert h.parse_sha256([("Digest", f"MD5=x, SHA-256={b64}")], whole_body=False) == sha.hex()
    content = [("Content-Digest", f"sha-256=:{b64}:")]
    assert h.parse_sha256(content, whole_body=True) == sha.hex()
    assert h.parse_sha256(content, whole_body=False) is None, "a piece's digest is not the file's"
    assert h.parse_sha256([("Repr-Digest", "sha-512=:AA==:")], whole_body=True) is None
    assert h.repr_digest(sha.hex()) == f"sha-256=:{b64}:"
    other = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    for bad in (
        [("Repr-Digest", f"sha-256={b64}")],
        [("Digest", "SHA-256=AAAA")],
        [("Repr-Digest", f"sha-256=:{b64}:"), ("Digest", f"SHA-256={other}")],
    ):
        with pytest.raises(h.HeaderError):
            h.parse_sha256(bad, whole_body=True)


def test_transfer_info_and_basic_credentials() -> None:
    info = h.parse_transfer_info(['a=1, b="x, y", c={"k": [1, 2]}', "d=plain text", "e=true"])
    assert info == {"a": 1, "b": "x, y", "c": {"k": [1, 2]}, "d": "plain text", "e": True}
    assert h.parse_transfer_info([h.format_transfer_info(info)]) == info
    for bad in ("novalue", "=1", 'a="x" junk'):
        with pytest.raises(h.HeaderError):
            h.parse_transfer_info([bad])
    with pytest.raises(h.HeaderError):
        h.parse_transfer_info(["a=" + "1" * (h.MAX_INFO_BYTES + 1)])

    assert h.basic_credentials(h.basic_authorization("zoé", "pâss:word")) == ("zoé", "pâss:word")
    latin = "Basic " + base64.b64encode("zoé:pw".encode("latin-1")).decode()
    assert h.basic_credentials(latin) == ("zoé", "pw")
    for bad in ("Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        with pytest.raises(h.HeaderError):
            h.basic_credentials(bad)
