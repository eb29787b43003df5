"""`/api/servers`, `/api/partners`, `/api/accounts`, `/api/users`, `/api/about` and
`/api/audit` over HTTP; no answer ever carries a secret."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field

from gatewayd.config.schema import PartnerConfig, ServerConfig
from gatewayd.ports import ProtocolServer, ProtocolSpec, ServerContext, register
from gatewayd.store.migrate import load_migrations
from tests.api_support import ApiEnv, password_hash

PARTNER_PASSWORD = "partner-pw-Zq9"
SERVER_PASSPHRASE = "server-passphrase-Xk2"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----"


class ApiTestServerConfig(ServerConfig):
    """A server protocol of this test, with a secret option and a plain one."""

    banner: str = "hello"
    key_passphrase: Annotated[str, Field(repr=False)] = ""


class ApiTestPartnerConfig(PartnerConfig):
    remote_dir: str = "/"
    private_key: str = ""


class ApiTestServer(ProtocolServer):
    def __init__(self, name: str, config: ServerConfig, ctx: ServerContext) -> None:
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self, grace: float = 0.0) -> None:
        self.started = False

    @property
    def bound_port(self) -> int:
        return 4242


register(
    ProtocolSpec(
        name="apitest",
        server_config=ApiTestServerConfig,
        partner_config=ApiTestPartnerConfig,
        server_factory=ApiTestServer,
    )
)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.extra["servers"] = {
        "edge": {"protocol": "apitest", "key_passphrase": SERVER_PASSPHRASE, "banner": "hi"},
        "spare": {"protocol": "apitest", "enabled": False},
    }
    environment.partners["bank"] = {
        "protocol": "apitest",
        "address": "bank.example",
        "port": 22,
        "login": "us",
        "password": PARTNER_PASSWORD,
        "private_key": PRIVATE_KEY,
    }
    environment.accounts["acme"] = {
        "password": password_hash(),
        "public_keys": ["ssh-ed25519 AAAA x"],
    }
    environment.users["ops"] = {"transfers": "r", "servers": "r"}
    environment.rule("inbox", "receive", allow={"accounts": ["acme"]})
    environment.rule("other", "receive", path="/other")
    yield environment
    await environment.stop()


def assert_no_secret(text: str) -> None:
    for secret in (PARTNER_PASSWORD, SERVER_PASSPHRASE, "PRIVATE KEY", "$argon2", 'password"'):
        assert secret not in text, secret


async def test_servers(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call("GET", "/api/servers")
    assert answer.status == 200
    assert_no_secret(answer.text)
    edge, spare = answer.body["servers"]
    assert edge == {
        "name": "edge",
        "protocol": "apitest",
        "address": "127.0.0.1",
        "port": 0,
        "enabled": True,
        "state": "running",
        "boundPort": 4242,
        "options": {
            "reuse_port": False,
            "max_uploads_per_account": 64,
            "max_downloads_per_account": 64,
            "banner": "hi",
        },
    }
    assert (spare["state"], spare["boundPort"]) == ("disabled", None)
    assert (await env.api.get("/api/servers/edge")) == edge
    assert (await env.api.call("GET", "/api/servers/nope")).status == 404


async def test_partners(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call("GET", "/api/partners")
    assert_no_secret(answer.text)
    names = [p["name"] for p in answer.body["partners"]]
    assert names == ["bank", "share"]
    bank = await env.api.get("/api/partners/bank")
    assert bank == {
        "name": "bank",
        "protocol": "apitest",
        "address": "bank.example",
        "port": 22,
        "login": "us",
        "hasPassword": True,
        "maxTransfers": None,
        "enabled": True,
        "options": {"remote_dir": "/"},
        "inMainFile": True,
    }
    share = await env.api.get("/api/partners/share")
    assert share["hasPassword"] is False and share["options"]["root"] == str(env.share)
    assert (await env.api.call("GET", "/api/partners/nope")).status == 404


async def test_accounts_and_users(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call("GET", "/api/accounts")
    assert_no_secret(answer.text)
    assert answer.body == {
        "accounts": [
            {
                "name": "acme",
                "enabled": True,
                "hasPassword": True,
                "publicKeys": ["ssh-ed25519 AAAA x"],
                "maxUploads": None,
                "maxDownloads": None,
                "rules": ["inbox", "other"],
                "inMainFile": True,
            }
        ]
    }
    assert (await env.api.get("/api/accounts/acme"))["rules"] == ["inbox", "other"]
    answer = await env.api.call("GET", "/api/users")
    assert_no_secret(answer.text)
    users = {u["name"]: u["permissions"] for u in answer.body["users"]}
    assert users["ops"] == {"transfers": "r", "servers": "r"}
    assert (await env.api.get("/api/users/ops"))["name"] == "ops"
    assert (await env.api.call("GET", "/api/users/ghost")).status == 404


async def test_about(env: ApiEnv) -> None:
    await env.start()
    env.clock.advance(90)
    about = await env.api.get("/api/about", user="ops")
    assert about["version"] and about["name"] == "gatewayd"
    assert about["uptime"] == 90.0
    assert about["started"] == "2024-01-01T00:00:00+00:00"
    assert about["servers"] == {
        "edge": {"protocol": "apitest", "state": "running", "address": "127.0.0.1", "port": 4242},
        "spare": {"protocol": "apitest", "state": "disabled", "address": "127.0.0.1", "port": 0},
    }
    assert about["database"] == {
        "state": "ok",
        "backend": "sqlite",
        "schemaVersion": len(load_migrations()),
    }
    assert about["scheduler"] == {"state": "running", "running": 0, "queued": 0}
    assert about["user"] == "ops"


async def test_audit_log_lists_changes_newest_first(env: ApiEnv) -> None:
    await env.start()
    await env.api.call("POST", "/api/tokens", json_body={"comment": "one"})
    await env.api.call("PUT", "/api/rules/third", json_body={"direction": "send", "path": "/t"})
    entries = (await env.api.get("/api/audit"))["entries"]
    assert [(e["who"], e["action"], e["target"]) for e in entries] == [
        ("admin", "rule.create", "rule/third"),
        ("admin", "token.create", entries[1]["target"]),
    ]
    assert entries[0]["at"].endswith("+00:00")
    assert (await env.api.get("/api/audit?limit=1&offset=1"))["entries"] == entries[1:]
    answer = await env.api.call("GET", "/api/audit?limit=x")
    assert answer.status == 400
    answer = await env.api.call("GET", "/api/audit", user="ops")
    assert answer.status == 403
