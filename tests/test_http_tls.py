"""HTTPS: curl against our server (certificates made by the test), client certificates,
and gateway to gateway with the partner's certificate verified (CA file or pin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewayd.config import ConfigError
from gatewayd.model import ErrorCode, Status
from tests.gateway_env import GatewayEnv, make_file
from tests.http_support import PASSWORD, CertFiles, http_gateway, make_cert, run_curl

MiB = 1 << 20


@dataclass
class Pki:
    server: CertFiles
    ca: CertFiles
    alice: CertFiles
    bob: CertFiles
    stranger: CertFiles  # alice's name, signed by a CA the server does not know


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    ca = make_cert(folder, "ca", common_name="test CA", ca=True)
    other_ca = make_cert(folder, "other-ca", common_name="other CA", ca=True)
    return Pki(
        server=make_cert(folder, "server"),
        ca=ca,
        alice=make_cert(folder, "alice", common_name="alice", issuer=ca, client=True),
        bob=make_cert(folder, "bob", common_name="bob", issuer=ca, client=True),
        stranger=make_cert(folder, "stranger", common_name="alice", issuer=other_ca, client=True),
    )


@pytest.fixture
async def secure(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[GatewayEnv, str]]:
    env = http_gateway(
        tmp_path / "server",
        protocol="https",
        certs=pki.server,
        client_certs="optional",
        client_ca_file=str(pki.ca.cert),
    )
    await env.start()
    try:
        yield env, f"https://127.0.0.1:{env.gw.servers['web'].bound_port}"
    finally:
        await env.stop()


async def test_curl_over_https_with_password_or_client_certificate(
    secure: tuple[GatewayEnv, str], pki: Pki, tmp_path: Path
) -> None:
    env, base = secure
    source = tmp_path / "tls.bin"
    data = make_file(source, 2 * MiB + 1)
    trust = ("--cacert", str(pki.server.cert))
    untrusted = await run_curl("-u", f"alice:{PASSWORD}", "-T", str(source), f"{base}/inbox/")
    assert untrusted.returncode == 60, "curl verifies the server: our test CA is not trusted"

    up = await run_curl(*trust, "-u", f"alice:{PASSWORD}", "-T", str(source), f"{base}/inbox/")
    assert up.status == 201, up
    assert (env.folder("inbox") / "alice" / "tls.bin").read_bytes() == data

    alice_cert = ("--cert", str(pki.alice.cert), "--key", str(pki.alice.key))
    by_cert = await run_curl(*trust, *alice_cert, "-T", str(source), f"{base}/inbox/c.bin")
    assert by_cert.status == 201, by_cert
    named = await run_curl(*trust, *alice_cert, "-u", "alice:", f"{base}/inbox/c.bin", "-I")
    assert named.status == 200 and named.headers["content-length"] == str(len(data))
    bad_password = await run_curl(*trust, *alice_cert, "-u", "alice:wrong", f"{base}/inbox/")
    assert bad_password.status == 401, "a password given is checked, certificate or not"

    bob_cert = ("--cert", str(pki.bob.cert), "--key", str(pki.bob.key))
    as_other = await run_curl(*trust, *bob_cert, "-u", "alice:", f"{base}/inbox/")
    assert as_other.status == 401, "a certificate only stands for its own login"
    stranger = ("--cert", str(pki.stranger.cert), "--key", str(pki.stranger.key))
    refused = await run_curl(*trust, *stranger, f"{base}/inbox/")
    assert refused.status == 0 and refused.returncode != 0, "unknown CA: no TLS session"

    download = make_file(env.folder("outbox") / "o.bin", 3 * MiB, seed=3)
    got = tmp_path / "o.bin"
    pulled = await run_curl(*trust, *alice_cert, f"{base}/outbox/o.bin", output=got)
    assert pulled.status == 200 and got.read_bytes() == download


@dataclass
class Pair:
    """Gateway `a` (client side, in-process) and gateway `b` (an https server)."""

    a: GatewayEnv
    b: GatewayEnv
    port: int


@pytest.fixture
async def pair(tmp_path: Path, pki: Pki) -> AsyncIterator[Pair]:
    b = http_gateway(tmp_path / "b", protocol="https", certs=pki.server)
    await b.start()
    port = b.gw.servers["web"].bound_port
    a = GatewayEnv(tmp_path / "a")
    login = {"address": "127.0.0.1", "port": port, "login": "alice", "password": PASSWORD}
    a.partners["b"] = {"protocol": "https", "ca_file": str(pki.server.cert), **login}
    a.partners["b_pinned"] = {
        "protocol": "https", "cert_sha256": pki.server.fingerprint(), **login
    }  # fmt: skip
    a.partners["b_wrong_pin"] = {"protocol": "https", "cert_sha256": "ab" * 32, **login}
    a.partners["b_system_store"] = {"protocol": "https", **login}
    a.partners["b_bad_login"] = {**a.partners["b"], "password": "not-the-password"}
    a.rule("push", "send")
    a.rule("pull", "receive")
    await a.start()
    try:
        yield Pair(a, b, port)
    finally:
        await a.stop()
        await b.stop()


async def test_gateway_to_gateway_over_https_with_verification(pair: Pair) -> None:
    a, b = pair.a, pair.b
    data = make_file(a.folder("push") / "g2g.bin", 5 * MiB + 3)
    sent = await a.create(rule="push", partner="b", file="g2g.bin", output="inbox/g2g.bin")
    row = await a.wait_end(sent.id or 0)
    assert row.status == Status.DONE, row.error_msg
    assert (b.folder("inbox") / "alice" / "g2g.bin").read_bytes() == data

    offered = make_file(b.folder("outbox") / "back.bin", 3 * MiB + 1, seed=5)
    pulled = await a.create(rule="pull", partner="b_pinned", file="outbox/back.bin")
    row = await a.wait_end(pulled.id or 0)
    assert row.status == Status.DONE, row.error_msg
    assert (a.folder("pull") / "back.bin").read_bytes() == offered


@pytest.mark.parametrize(
    ("partner", "code", "words"),
    [
        ("b_wrong_pin", ErrorCode.TeConnection, "does not match cert_sha256"),
        ("b_system_store", ErrorCode.TeConnection, "TLS verification"),
        ("b_bad_login", ErrorCode.TeBadAuthentication, "401"),
    ],
)
async def test_untrusted_or_refused_partner_fails_cleanly(
    pair: Pair, partner: str, code: ErrorCode, words: str
) -> None:
    a, b = pair.a, pair.b
    make_file(a.folder("push") / "no.bin", 1000)
    sent = await a.create(rule="push", partner=partner, file="no.bin", output="inbox/no.bin")
    row = await a.wait_end(sent.id or 0)
    assert row.status == Status.ERROR and row.error_code == code, row.error_msg
    assert words in row.error_msg
    assert "not-the-password" not in row.error_msg and PASSWORD not in row.error_msg
    assert not (b.folder("inbox") / "alice").exists()


async def test_https_server_with_unusable_certificate_does_not_start(
    tmp_path: Path, pki: Pki
) -> None:
    env = http_gateway(tmp_path, protocol="https", certs=CertFiles(pki.server.cert, pki.ca.key))
    with pytest.raises(
        ConfigError, match=r"the private key .*ca\.key does not match the certificate .*server\.crt"
    ):
        await env.start()
    await env.stop()


async def test_gateway_client_certificate_stands_for_the_password(tmp_path: Path, pki: Pki) -> None:
    b = http_gateway(
        tmp_path / "b",
        protocol="https",
        certs=pki.server,
        client_certs="required",
        client_ca_file=str(pki.ca.cert),
    )
    await b.start()
    a = GatewayEnv(tmp_path / "a")
    try:
        port = b.gw.servers["web"].bound_port
        peer = {"protocol": "https", "address": "127.0.0.1", "port": port, "login": "alice"}
        peer["ca_file"] = str(pki.server.cert)
        a.partners["b"] = {**peer, "cert_file": str(pki.alice.cert), "key_file": str(pki.alice.key)}
        a.partners["b_no_cert"] = {**peer, "password": PASSWORD}
        a.rule("push", "send")
        await a.start()
        data = make_file(a.folder("push") / "m.bin", 300_000)
        sent = await a.create(rule="push", partner="b", file="m.bin", output="inbox/m.bin")
        row = await a.wait_end(sent.id or 0)
        assert row.status == Status.DONE, row.error_msg
        assert (b.folder("inbox") / "alice" / "m.bin").read_bytes() == data

        refused = await a.create(rule="push", partner="b_no_cert", file="m.bin", output="inbox/n")
        row = await a.wait_end(refused.id or 0)
        assert row.status == Status.ERROR, "without its certificate, no TLS session"
        assert row.error_code in (ErrorCode.TeConnection, ErrorCode.TeConnectionReset)
        assert not (b.folder("inbox") / "alice" / "n").exists()
    finally:
        await a.stop()
        await b.stop()
