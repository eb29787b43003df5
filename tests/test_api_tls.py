"""The admin API over HTTPS (`api.tls_cert` / `api.tls_key`): aiohttp and the CLI trust
the certificate they are given, and refuse one they were not."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.api_support import PASSWORD, ApiEnv, basic
from tests.daemon_proc import daemon_env


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatewayd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "api.crt", folder / "api.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = ApiEnv(tmp_path / "gw")
    env.extra["api"] = {"tls_cert": str(cert), "tls_key": str(key)}
    gateway = await env.start()
    try:
        assert gateway.api is not None and gateway.api.scheme == "https"
        url = f"https://127.0.0.1:{gateway.api_port}/api/about"
        trusting = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(
                url, ssl=trusting, headers={"Authorization": basic("admin")}
            ) as answer:
                assert answer.status == 200
                assert (await answer.json())["user"] == "admin"
            try:
                async with session.get(url, ssl=ssl.create_default_context()) as answer:
                    raise AssertionError(f"an unknown certificate was accepted: {answer.status}")
            except aiohttp.ClientConnectorCertificateError:
                pass
        env_vars = {
            **daemon_env(),
            "GATEWAYD_API_URL": f"https://127.0.0.1:{gateway.api_port}",
            "GATEWAYD_API_USER": "admin",
            "GATEWAYD_API_PASSWORD": PASSWORD,
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "gatewayd", "status", "--format", "json", *args],
                capture_output=True, text=True, env=env_vars, timeout=60, check=False,
            )  # fmt: skip

        trusted, untrusted = await asyncio.gather(
            asyncio.to_thread(cli, "--cacert", str(cert)), asyncio.to_thread(cli)
        )
        assert trusted.returncode == 0, trusted.stderr
        assert untrusted.returncode == 3 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        await env.stop()


def test_tls_needs_both_files(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.extra["api"] = {"tls_cert": "api.crt"}
    env.write()
    result = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check-config", "-c", str(env.config_file)],
        capture_output=True, text=True, env=daemon_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "give both tls_cert and tls_key" in result.stderr
