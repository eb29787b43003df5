"""Accounts, partners and API users written through the admin API: one YAML file each in
their folders, checked like check-config, written atomically (0600), put in force at
once, audited, their secrets hashed (accounts, users) or kept as given (partners) and
never shown back."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gatewayd.config import load_config
from gatewayd.config.problems import ConfigError
from gatewayd.model import ErrorCode, Status
from tests.api_support import PASSWORD, ApiEnv, basic
from tests.cluster_support import HEADERS, Cluster, call
from tests.daemon_proc import DaemonProcess
from tests.sftp_peers import listening_port, need, sftp
from tests.test_api_daemon import api_port

BOB_PASSWORD = "bob-secret-8c1f"
OPS_PASSWORD = "ops-secret-27aa"
PARTNER_PASSWORD = "partner-secret-51de"


def listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*"))} if folder.is_dir() else {}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("inbox", "receive")
    yield environment
    await environment.stop()


async def test_an_account_made_through_the_api_logs_in_over_sftp_until_deleted(
    tmp_path: Path,
) -> None:
    need("sftp", "sshpass")
    env = ApiEnv(tmp_path)
    env.rule("inbox", "receive")
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    env.extra["logging"] = {"format": "json"}
    env.write()
    daemon = await DaemonProcess.start(env.config_file)
    folder = tmp_path / "accounts"
    try:
        port = await api_port(daemon)
        await daemon.wait_for("gatewayd ready")
        sftp_port = await listening_port(daemon)
        base = f"http://127.0.0.1:{port}/api/accounts/bob"
        admin = {"Authorization": basic("admin")}

        async def login() -> bool:
            done = await sftp(sftp_port, "bob", ["ls /"], password=BOB_PASSWORD, timeout=30)
            return done.returncode == 0

        async with aiohttp.ClientSession(headers=admin) as http:
            async with http.put(base, json={"password": BOB_PASSWORD}) as answer:
                created = await answer.json()
                assert answer.status == 201, created
            assert created["hasPassword"] and created["enabled"], created
            file = folder / "bob.yaml"
            text = file.read_text()
            assert "$argon2id$" in text and BOB_PASSWORD not in text, text
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
            assert await login(), "bob cannot log in just after his creation"

            async with http.put(base, json={"enabled": False}) as answer:
                disabled = await answer.json()
                assert answer.status == 200, disabled
            assert disabled["enabled"] is False and disabled["hasPassword"], disabled
            assert not await login(), "a disabled account still logs in"

            # Enabled again: the password was kept by the edits.
            async with http.put(base, data="enabled: true\n", headers=_yaml()) as answer:
                assert answer.status == 200, await answer.text()
            assert await login(), "bob cannot log in once enabled again"

            async with http.delete(base) as answer:
                assert answer.status == 204, await answer.text()
            assert not file.exists()
            assert not await login(), "a deleted account still logs in"
            async with http.get(base) as answer:
                assert answer.status == 404

            async with http.get(f"http://127.0.0.1:{port}/api/audit") as answer:
                audit = await answer.text()
            actions = [e["action"] for e in json.loads(audit)["entries"]]
            for action in ("account.create", "account.replace", "account.delete"):
                assert action in actions, actions
            assert BOB_PASSWORD not in audit
    finally:
        assert await daemon.stop() == 0, daemon.output
    assert BOB_PASSWORD not in daemon.output
    assert "$argon2id$" not in daemon.output


def _yaml() -> dict[str, str]:
    return {"Content-Type": "application/yaml"}


async def test_bad_bodies_are_refused_with_every_problem_and_change_nothing(env: ApiEnv) -> None:
    env.accounts["main"] = {"enabled": True}
    await env.start()
    folder = env.root / "accounts"
    answer = await env.api.call(
        "PUT", "/api/accounts/x", json_body={"max_uploads": -1, "nope": 1, "public_keys": "k"}
    )
    assert answer.status == 400, answer.text
    messages = " | ".join(e["message"] for e in answer.errors)
    assert "max_uploads" in messages and "nope" in messages, messages
    assert all(code == "invalid_account" for code in answer.codes())
    assert {e.get("field") for e in answer.errors} >= {"max_uploads", "nope"}, answer.errors
    # YAML: the line of the mistake in the body.
    answer = await env.api.call(
        "PUT",
        "/api/accounts/x",
        data="enabled: true\nmax_uploads: -1\n",
        content_type="application/yaml",
    )
    assert answer.status == 400, answer.text
    assert answer.errors[0]["message"].startswith("line 2: "), answer.errors
    answer = await env.api.call("PUT", "/api/accounts/x", json_body={"name": "y"})
    assert (answer.status, answer.codes()) == (400, ["name_mismatch"])
    answer = await env.api.call("PUT", "/api/accounts/x", json_body={"password": ""})
    assert answer.status == 400, answer.text
    # The main file's objects are the admin's: read-only here.
    answer = await env.api.call("PUT", "/api/accounts/main", json_body={"enabled": False})
    assert (answer.status, answer.codes()) == (409, ["defined_in_main_file"])
    answer = await env.api.call("DELETE", "/api/accounts/main")
    assert answer.status == 409, answer.text
    answer = await env.api.call("DELETE", "/api/accounts/nobody")
    assert answer.status == 404, answer.text
    answer = await env.api.call("PUT", "/api/partners/p", json_body={"protocol": "carrier-pigeon"})
    assert answer.status == 400 and "unknown protocol" in answer.text, answer.text
    answer = await env.api.call(
        "PUT", "/api/users/u", json_body={"permissions": {"transfers": "rx"}}
    )
    assert answer.status == 400, answer.text
    fields = {e.get("field") for e in answer.errors}
    assert "password" in answer.text and "permissions.transfers" in fields, answer.errors
    assert listing(folder) == {} and listing(env.root / "partners") == {}
    assert listing(env.root / "users") == {}
    assert set(env.gw.loaded.config.accounts) == {"main"}


async def test_api_users_are_made_disabled_and_deleted_and_grant_no_more_than_theirs(
    env: ApiEnv,
) -> None:
    env.users["keeper"] = {"users": "rwd", "transfers": "r"}
    await env.start()
    answer = await env.api.call(
        "PUT",
        "/api/users/ops",
        json_body={"password": OPS_PASSWORD, "permissions": {"transfers": "r"}},
    )
    assert answer.status == 201, answer.text
    assert answer.body == {
        "name": "ops",
        "enabled": True,
        "permissions": {"transfers": "r"},
        "inMainFile": False,
    }
    file = env.root / "users" / "ops.yaml"
    assert "$argon2id$" in file.read_text() and OPS_PASSWORD not in file.read_text()
    about = await env.api.call("GET", "/api/about", user="ops", password=OPS_PASSWORD)
    assert about.status == 200 and about.body["user"] == "ops", about.text
    listed = await env.api.call("GET", "/api/users")
    assert OPS_PASSWORD not in listed.text and "argon2" not in listed.text

    answer = await env.api.call("PUT", "/api/users/ops", json_body={"enabled": False})
    assert answer.status == 200 and answer.body["enabled"] is False, answer.text
    refused = await env.api.call("GET", "/api/about", user="ops", password=OPS_PASSWORD)
    assert refused.status == 401, refused.text

    # keeper may manage users, but not hand out what it does not have.
    answer = await env.api.call(
        "PUT",
        "/api/users/sneaky",
        user="keeper",
        json_body={"password": "x-pass-1", "permissions": {"transfers": "rw"}},
    )
    assert (answer.status, answer.codes()) == (403, ["forbidden"]), answer.text
    assert not (env.root / "users" / "sneaky.yaml").exists()

    answer = await env.api.call("DELETE", "/api/users/ops", user="keeper")
    assert answer.status == 204, answer.text
    assert not file.exists() and "ops" not in env.gw.loaded.config.api.users


async def test_partners_keep_their_password_as_given_and_never_show_it(env: ApiEnv) -> None:
    await env.start()
    share = env.root / "elsewhere"
    share.mkdir()
    body = {"protocol": "local", "root": str(share), "password": PARTNER_PASSWORD}
    answer = await env.api.call("PUT", "/api/partners/far", json_body=body)
    assert answer.status == 201, answer.text
    assert answer.body["hasPassword"] is True and PARTNER_PASSWORD not in answer.text
    file = env.root / "partners" / "far.yaml"
    assert PARTNER_PASSWORD in file.read_text()  # needed to log in to the partner
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert env.gw.loaded.config.partners["far"].password == PARTNER_PASSWORD
    for path in ("/api/partners", "/api/partners/far"):
        shown = await env.api.call("GET", path)
        assert shown.status == 200 and PARTNER_PASSWORD not in shown.text, shown.text
    # An edit without the password keeps it.
    answer = await env.api.call(
        "PUT", "/api/partners/far", json_body={"protocol": "local", "root": str(share)}
    )
    assert answer.status == 200 and answer.body["hasPassword"], answer.text
    assert env.gw.loaded.config.partners["far"].password == PARTNER_PASSWORD
    # Disabled: kept, but no transfer with it is created.
    body = {"protocol": "local", "root": str(share), "enabled": False}
    answer = await env.api.call("PUT", "/api/partners/far", json_body=body)
    assert answer.status == 200 and answer.body["enabled"] is False, answer.text
    refused = await env.api.call(
        "POST", "/api/transfers", json_body={"rule": "inbox", "partner": "far", "file": "a"}
    )
    assert (refused.status, refused.codes()) == (400, ["disabled"]), refused.text
    audit = await env.api.call("GET", "/api/audit")
    assert "partner.create" in audit.text and PARTNER_PASSWORD not in audit.text
    # The main file's partner is not the API's to change.
    answer = await env.api.call("DELETE", "/api/partners/share")
    assert answer.status == 409, answer.text
    answer = await env.api.call("DELETE", "/api/partners/far")
    assert answer.status == 204, answer.text


def host_key_line() -> str:
    """A well-formed OpenSSH ed25519 public key line (never connected to)."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}"


async def test_an_edit_made_from_what_get_shows_keeps_the_fields_never_shown(
    env: ApiEnv,
) -> None:
    # What the console does: GET the partner, PUT its fields back with one changed.
    await env.start()
    key = env.root / "id_partner"
    need("ssh-keygen")
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", PARTNER_PASSWORD, "-f", str(key)], check=True
    )
    body = {
        "protocol": "sftp",
        "address": "127.0.0.1",
        "port": 2222,
        "login": "us",
        "host_keys": [host_key_line()],
        "private_key": str(key),
        "private_key_passphrase": PARTNER_PASSWORD,
    }
    answer = await env.api.call("PUT", "/api/partners/keyed", json_body=body)
    assert answer.status == 201, answer.text
    shown = await env.api.get("/api/partners/keyed")
    assert PARTNER_PASSWORD not in json.dumps(shown) and "private_key" not in shown["options"]
    assert shown["inMainFile"] is False
    edit = {
        "protocol": shown["protocol"],
        "address": shown["address"],
        "port": 2223,
        "login": shown["login"],
        **shown["options"],
    }
    answer = await env.api.call("PUT", "/api/partners/keyed", json_body=edit)
    assert answer.status == 200, answer.text
    partner = env.gw.loaded.config.partners["keyed"]
    assert partner.port == 2223, partner
    assert getattr(partner, "private_key", None) == key, partner
    assert getattr(partner, "private_key_passphrase", None) == PARTNER_PASSWORD
    # Another protocol has no such fields: they are not carried over.
    other = env.root / "other"
    other.mkdir()
    answer = await env.api.call(
        "PUT", "/api/partners/keyed", json_body={"protocol": "local", "root": str(other)}
    )
    assert answer.status == 200, answer.text
    assert "private_key" not in (env.root / "partners" / "keyed.yaml").read_text()
    assert "far" not in env.gw.loaded.config.partners


def test_a_name_in_both_the_main_file_and_a_folder_is_a_mistake_at_its_line(
    tmp_path: Path,
) -> None:
    env = ApiEnv(tmp_path)
    env.accounts["twice"] = {"enabled": True}
    env.write()
    folder = tmp_path / "accounts"
    folder.mkdir()
    (folder / "twice.yaml").write_text("name: twice\nenabled: false\n")
    (folder / "odd.yaml").write_text("name: other\nmax_uploads: -2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env.config_file)
    text = "\n".join(str(p) for p in caught.value.problems)
    assert f"{folder / 'twice.yaml'}:1: account 'twice' is also defined in" in text, text
    assert f"{env.config_file}:" in text, text
    assert f"{folder / 'odd.yaml'}:1: account 'other' must be in a file named other.yaml" in text
    assert f"{folder / 'odd.yaml'}:2: " in text, text


def test_folder_objects_are_loaded_with_the_main_files(tmp_path: Path) -> None:
    env = ApiEnv(tmp_path)
    env.rule("inbox", "receive", allow={"accounts": ["carol"], "partners": []})
    env.write()
    (tmp_path / "accounts").mkdir()
    (tmp_path / "accounts" / "carol.yaml").write_text("name: carol\nenabled: true\n")
    loaded = load_config(env.config_file)
    assert "carol" in loaded.config.accounts
    assert loaded.object_files[("accounts", "carol")] == tmp_path / "accounts" / "carol.yaml"
    assert PASSWORD  # the main file's users are still there
    assert "admin" in loaded.config.api.users


async def test_two_nodes_on_one_database_both_see_a_change_made_through_either(
    pg_database: str, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path / "c", pg_database)
    a, b = await cluster.start("node-a", "node-b")
    ops = {"Authorization": basic("ops", OPS_PASSWORD)}

    async def status_at(session: aiohttp.ClientSession, url: str, **kw: object) -> int:
        async with session.get(url, **kw) as answer:  # type: ignore[arg-type]
            return answer.status

    async def until(session: aiohttp.ClientSession, url: str, wanted: int, **kw: object) -> None:
        try:
            async with asyncio.timeout(15):
                while await status_at(session, url, **kw) != wanted:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{url} never answered {wanted}:\n{cluster.output()}") from None

    try:
        async with aiohttp.ClientSession() as s:
            body = {"password": OPS_PASSWORD, "permissions": {"transfers": "r"}}
            status, answer, _ = await call(s, "PUT", f"{a.api}/api/users/ops", body)
            assert status == 201, answer
            await until(s, f"{b.api}/api/users/ops", 200, headers=HEADERS)
            await until(s, f"{b.api}/api/about", 200, headers=ops)
            status, answer, _ = await call(s, "DELETE", f"{b.api}/api/users/ops")
            assert status == 204, answer
            await until(s, f"{a.api}/api/about", 401, headers=ops)
            await until(s, f"{a.api}/api/users/ops", 404, headers=HEADERS)
    finally:
        codes = await cluster.stop()
    assert set(codes.values()) == {0}, cluster.output()
    assert OPS_PASSWORD not in cluster.output()


async def test_a_delete_the_configuration_cannot_load_without_is_rolled_back(
    env: ApiEnv,
) -> None:
    await env.start()
    answer = await env.api.call("PUT", "/api/accounts/carol", json_body={"enabled": True})
    assert answer.status == 201, answer.text
    rule = {"name": "carols", "direction": "receive", "path": "/carols"}
    rule["allow"] = {"accounts": ["carol"]}
    answer = await env.api.call("POST", "/api/rules", json_body=rule)
    assert answer.status == 201, answer.text
    file = env.root / "accounts" / "carol.yaml"
    before = file.read_text()
    answer = await env.api.call("DELETE", "/api/accounts/carol")
    assert answer.status == 409, answer.text
    assert "carol" in answer.text and answer.codes()[0] == "invalid_config", answer.errors
    assert file.read_text() == before
    assert "carol" in env.gw.loaded.config.accounts


async def test_a_transfer_planned_before_its_partner_was_disabled_fails_when_due(
    env: ApiEnv,
) -> None:
    await env.start()
    share = env.root / "far-away"
    (share / "inbox").mkdir(parents=True)
    (share / "inbox" / "a.txt").write_text("a")
    body = {"protocol": "local", "root": str(share)}
    assert (await env.api.call("PUT", "/api/partners/far", json_body=body)).status == 201
    start = (env.clock.now() + timedelta(hours=1)).isoformat()
    planned = await env.api.call(
        "POST",
        "/api/transfers",
        json_body={"rule": "inbox", "partner": "far", "file": "a.txt", "start": start},
    )
    assert planned.status == 201 and planned.body["status"] == "PLANNED", planned.text
    body["enabled"] = False
    assert (await env.api.call("PUT", "/api/partners/far", json_body=body)).status == 200
    env.clock.advance(3601)
    row = await env.wait_end(planned.body["id"])
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeForbidden), row
    assert "disabled" in row.error_msg
