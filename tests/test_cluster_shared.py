"""Two real `gatewayd serve` nodes started at once on one PostgreSQL database and one
state folder (names gw-a and gw-b, ports of their own): they present the same SSH host
key (made by whichever came first), accept each other's API tokens, see one audit log,
report their own name in `/metrics`, count failed logins together (SFTP and API
failures through both add up to a ban on both), and share one HTTP port with SO_REUSEPORT (the
kernel gives connections to both)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
import yaml

from tests.conftest import DemoConfig
from tests.daemon_proc import DaemonProcess
from tests.pg_support import pg_raw
from tests.sftp_peers import free_port

pytestmark = pytest.mark.timeout(120)
NODES = ("gw-a", "gw-b")
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
WRONG = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}
# The API's throttle bans an address at its tenth failure (gatewayd.api.auth.THROTTLE).
BAN_AT = 10
# Uploads on new connections to the shared port: both nodes get some (all to one node by
# chance: 2 in 2**UPLOADS).
UPLOADS = 12


def node_configs(demo_config: DemoConfig, dsn: str) -> list[Path]:
    """One config file per node, in the same folder: same home, so the same state, data
    and rules folders; only the node name (and ephemeral ports) differ."""

    def change(data: dict[str, Any]) -> None:
        data["database"] = {"backend": "postgresql", "dsn": dsn, "pool_size": 4}
        data["api"]["port"] = 0
        for server in data["servers"].values():
            server["port"] = 0
        data["servers"]["http"].update(port=free_port(), reuse_port=True)
        data["logging"]["format"] = "json"

    demo_config.edit(change)
    base = yaml.safe_load(demo_config.path.read_text())
    paths = []
    for node in NODES:
        base["daemon"]["node"] = node
        path = demo_config.path.with_name(f"{node}.yaml")
        path.write_text(yaml.safe_dump(base, sort_keys=False))
        paths.append(path)
    return paths


def port_of(daemon: DaemonProcess, event: str, server: str | None = None) -> int:
    for line in daemon.lines:
        if f'"{event}"' in line:
            entry = json.loads(line)
            if server is None or entry.get("server") == server:
                return int(entry["port"])
    raise AssertionError(f"no {event} line for {server}:\n{daemon.output}")


async def wait_failures(dsn: str, key: str, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            rows = await pg_raw(dsn, "SELECT failures FROM login_failures WHERE key = $1", key)
            if rows and rows[0][0] >= count:
                return
            await asyncio.sleep(0.05)  # polling the database, bounded by the timeout


async def sftp_login(port: int, password: str) -> None:
    async with asyncssh.connect(
        "127.0.0.1", port, username="demo", password=password, known_hosts=None,
        preferred_auth="password", client_keys=None,
    ) as conn:  # fmt: skip
        await conn.run("true", check=False)


async def test_two_nodes_share_identity_tokens_audit_and_throttle(
    demo_config: DemoConfig, pg_database: str
) -> None:
    configs = node_configs(demo_config, pg_database)
    daemons = list(await asyncio.gather(*(DaemonProcess.start(c) for c in configs)))
    try:
        await asyncio.gather(*(d.wait_for("gatewayd ready", 60) for d in daemons))
        apis = [f"http://127.0.0.1:{port_of(d, 'api listening')}" for d in daemons]
        sftp = [port_of(d, "server listening", "sftp") for d in daemons]

        # One identity: the host key each node presents is the one in the state folder.
        keys = [await asyncssh.get_server_host_key("127.0.0.1", port) for port in sftp]
        assert keys[0] is not None and keys[1] is not None
        state = demo_config.root / "var"
        published = [p.read_bytes() for p in sorted(state.glob("sftp/sftp/*.pub"))]
        presented = [k.export_public_key("openssh") for k in keys]
        assert presented[0] == presented[1], "both nodes present the same host key"
        assert presented[0] in published
        made = [line for d in daemons for line in d.lines if "host key generated" in line]
        assert len(made) == 2, "one node made the two keys (ed25519, rsa), the other loaded"
        assert sorted(p.name for p in state.glob("gatewayd*.lock")) == [
            "gatewayd-gw-a.lock",
            "gatewayd-gw-b.lock",
        ]

        async with aiohttp.ClientSession() as session:
            # A token issued by node A works on node B (and its revocation on B holds on A).
            async with session.post(
                f"{apis[0]}/api/tokens", json={"comment": "cluster"}, headers=ADMIN
            ) as answer:
                assert answer.status == 201, await answer.text()
                issued = await answer.json()
            bearer = {"Authorization": f"Bearer {issued['token']}"}
            async with session.get(f"{apis[1]}/api/about", headers=bearer) as answer:
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["user"] == "admin"
            async with session.get(f"{apis[1]}/api/audit", headers=ADMIN) as answer:
                entries = (await answer.json())["entries"]
            assert [e["target"] for e in entries if e["action"] == "token.create"] == [
                f"token/{issued['id']}"
            ], "node B sees node A's audit entry"
            async with session.delete(
                f"{apis[1]}/api/tokens/{issued['id']}", headers=ADMIN
            ) as answer:
                assert answer.status == 204, await answer.text()
            async with session.get(f"{apis[0]}/api/about", headers=bearer) as answer:
                assert answer.status == 401, "revoked through B, refused by A"

            # Each node's /metrics reports that node.
            for api, node in zip(apis, NODES, strict=True):
                async with session.get(f"{api}/metrics", headers=ADMIN) as answer:
                    text = await answer.text()
                assert f'node="{node}"' in text and "gatewayd_transfers_running" in text
                other = NODES[1 - NODES.index(node)]
                assert f'node="{other}"' not in text

            # One port, two nodes: the uploads (each on a new connection) go to both.
            http = port_of(daemons[0], "server listening", "http")
            assert port_of(daemons[1], "server listening", "http") == http
            for i in range(UPLOADS):
                async with session.put(
                    f"http://127.0.0.1:{http}/inbox/f{i}.txt",
                    data=b"x" * 100,
                    headers={
                        "Authorization": "Basic " + base64.b64encode(b"demo:demo").decode(),
                        "Connection": "close",
                    },
                ) as answer:
                    assert answer.status in (200, 201, 204), await answer.text()
            owners = await pg_raw(
                pg_database,
                "SELECT owner, count(*) FROM transfers WHERE is_server = 1 GROUP BY owner",
            )
            counts = {row[0]: row[1] for row in owners}
            assert sorted(counts) == sorted(NODES) and sum(counts.values()) == UPLOADS, counts

            # Partners' failed logins through both nodes add up: half through each SFTP
            # port, then neither node lets even the right password in (the answers of
            # the later failures are slowed down: the count is read in the database).
            guesses = [
                asyncio.ensure_future(sftp_login(sftp[i % 2], "wrong")) for i in range(BAN_AT)
            ]
            try:
                await wait_failures(pg_database, "partners:address:127.0.0.1", BAN_AT)
                for port in sftp:
                    with pytest.raises(asyncssh.PermissionDenied):
                        await sftp_login(port, "demo")
            finally:
                for guess in guesses:
                    guess.cancel()
                await asyncio.gather(*guesses, return_exceptions=True)
            for daemon in daemons:
                refused = [x for x in daemon.lines if "login refused: too many failures" in x]
                assert len(refused) == 1, daemon.output

            # Failed API logins through both nodes add up: half through each, then both
            # refuse even the right password. The failures' answers are slowed down
            # (up to 8 s): they are not awaited, the count is read in the database.
            wrong = [
                asyncio.ensure_future(session.get(f"{apis[i % 2]}/api/about", headers=WRONG))
                for i in range(BAN_AT)
            ]
            try:
                await wait_failures(pg_database, "api:address:127.0.0.1", BAN_AT)
                for api in apis:
                    async with session.get(f"{api}/api/about", headers=ADMIN) as answer:
                        assert answer.status == 429, await answer.text()
                        assert int(answer.headers["Retry-After"]) > 800
            finally:
                for request in wrong:
                    request.cancel()
                await asyncio.gather(*wrong, return_exceptions=True)
        for daemon in daemons:
            failed = [x for x in daemon.lines if "api login failed" in x]
            assert 1 <= len(failed) < BAN_AT, "each node saw only its share of the failures"
    finally:
        codes = [await d.stop() for d in daemons]
    assert codes == [0, 0], "".join(d.output for d in daemons)
    assert "admin:admin" not in "".join(d.output for d in daemons)


async def test_a_console_session_survives_the_loss_of_its_node_and_ends_everywhere(
    demo_config: DemoConfig, pg_database: str
) -> None:
    """Logged in through node A, the browser goes on through node B once A is killed
    (kill -9), and through A again after its restart; a logout through A ends it on B."""
    configs = node_configs(demo_config, pg_database)
    daemons = list(await asyncio.gather(*(DaemonProcess.start(c) for c in configs)))
    try:
        await asyncio.gather(*(d.wait_for("gatewayd ready", 60) for d in daemons))
        apis = [f"http://127.0.0.1:{port_of(d, 'api listening')}" for d in daemons]
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{apis[0]}/api/session", json={"user": "admin", "password": "admin"}
            ) as answer:
                assert answer.status == 201, await answer.text()
                cookie = answer.cookies["gatewayd_session"].value
                csrf = (await answer.json())["csrfToken"]
            browser = {"Cookie": f"gatewayd_session={cookie}"}
            stored = await pg_raw(pg_database, "SELECT * FROM console_sessions")
            assert len(stored) == 1 and cookie not in repr(stored) and csrf not in repr(stored)

            await daemons[0].kill()
            async with session.get(f"{apis[1]}/api/session", headers=browser) as answer:
                body = await answer.json()
            assert (body["user"], body["csrfToken"]) == ("admin", csrf), "B knows the session"
            # A change through B: the CSRF token given by A holds there.
            async with session.post(
                f"{apis[1]}/api/tokens",
                json={"comment": "from the console"},
                headers={**browser, "X-CSRF-Token": csrf},
            ) as answer:
                assert answer.status == 201, await answer.text()
            async with session.post(
                f"{apis[1]}/api/tokens", json={"comment": "no token"}, headers=browser
            ) as answer:
                assert answer.status == 403, "a change without the CSRF token is refused"

            daemons[0] = await DaemonProcess.start(configs[0])
            await daemons[0].wait_for("gatewayd ready", 60)
            apis[0] = f"http://127.0.0.1:{port_of(daemons[0], 'api listening')}"
            async with session.get(f"{apis[0]}/api/transfers", headers=browser) as answer:
                assert answer.status == 200, "the restarted node still knows the session"
            async with session.delete(
                f"{apis[0]}/api/session", headers={**browser, "X-CSRF-Token": csrf}
            ) as answer:
                assert answer.status == 204, await answer.text()
            async with session.get(f"{apis[1]}/api/transfers", headers=browser) as answer:
                assert answer.status == 401, "logged out through A: ended on B at once"
        assert await pg_raw(pg_database, "SELECT * FROM console_sessions") == []
    finally:
        codes = [await d.stop() for d in daemons]
    assert codes == [0, 0], "".join(d.output for d in daemons)
    assert cookie not in "".join(d.output for d in daemons), "the cookie is never logged"
