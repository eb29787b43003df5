"""An in-process gateway with its admin API on an ephemeral port, and a small HTTP
client for it (real HTTP over loopback, real store, real files)."""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from argon2 import PasswordHasher, Type

from gatewayd.gateway import Gateway
from tests.gateway_env import GatewayEnv

PASSWORD = "s3cret-for-tests"
ALL = {
    area: "rwd" for area in ("transfers", "servers", "partners", "rules", "users", "administration")
}


@functools.cache
def password_hash() -> str:
    """One argon2id hash for every test user, with cheap parameters: real ones cost a
    noticeable fraction of a second per check, and every configuration load checks each
    user against the demo passwords."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID).hash(PASSWORD)


def basic(user: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any
    text: str

    @property
    def errors(self) -> list[dict[str, str]]:
        assert isinstance(self.body, dict) and "errors" in self.body, self.text
        return self.body["errors"]

    def codes(self) -> list[str]:
        return [e["errorCode"] for e in self.errors]


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str
    default_user: str = "admin"
    calls: list[str] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        content_type: str | None = None,
        user: str | None = None,
        password: str = PASSWORD,
        token: str | None = None,
        auth: str | None = None,
    ) -> Answer:
        headers: dict[str, str] = {}
        if auth is not None:
            if auth:
                headers["Authorization"] = auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Authorization"] = basic(user or self.default_user, password)
        if json_body is not None:
            data = json.dumps(json_body)
            content_type = content_type or "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.base + path, data=data, headers=headers) as r:
            text = await r.text()
            try:
                body = json.loads(text) if text else None
            except ValueError:
                body = None
            self.calls.append(f"{method} {path} -> {r.status}")
            return Answer(r.status, body, r.headers, text)

    async def get(self, path: str, **kw: Any) -> Any:
        answer = await self.call("GET", path, **kw)
        assert answer.status == 200, answer.text
        return answer.body


class ApiEnv(GatewayEnv):
    """GatewayEnv with admin users and an HTTP client of the API."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.users: dict[str, dict[str, str]] = {"admin": dict(ALL)}
        self._session: aiohttp.ClientSession | None = None
        self._api: Api | None = None

    def write(self) -> None:
        api = {"port": 0, **self.extra.get("api", {})}
        api["users"] = {
            name: {"password": password_hash(), "permissions": perms}
            for name, perms in self.users.items()
        }
        self.extra["api"] = api
        super().write()

    async def start(self) -> Gateway:
        gateway = await super().start()
        self._session = aiohttp.ClientSession()
        self._api = Api(self._session, f"http://127.0.0.1:{gateway.api_port}")
        return gateway

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await super().stop()

    @property
    def api(self) -> Api:
        assert self._api is not None, "gateway not started"
        return self._api
