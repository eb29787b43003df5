"""ICAP, EMAIL and NOTIFY in the rule chains of real HTTP uploads (curl), against real
peers: Debian's c-icap (content filtering), aiosmtpd (STARTTLS, AUTH), an aiohttp
receiver that checks the HMAC; and the gateway-wide error chain (`daemon.error_tasks`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gatewayd.config import ConfigError
from gatewayd.config.loader import load_rule_text
from gatewayd.config.schema import Config
from gatewayd.model import ErrorCode, Status, Transfer
from gatewayd.store.base import TransferFilter
from tests.gateway_env import GatewayEnv
from tests.http_support import PASSWORD, free_port, http_gateway, make_cert, run_curl
from tests.notice_peers import MARKER, CIcap, NotifyReceiver, SmtpSink, wait_until

ALICE = f"alice:{PASSWORD}"
SECRET = "notice-secret-0123456789"
SMTP_PASSWORD = "smtp-pass-9876"


@dataclass
class Peers:
    env: GatewayEnv
    base: str
    smtp: SmtpSink
    hook: NotifyReceiver
    clean: Path
    quarantine: Path
    icap: CIcap


async def rows(env: GatewayEnv) -> list[Transfer]:
    found, _ = await env.gw.store.list_transfers(TransferFilter(limit=100))
    return found


async def upload(peers: Peers, tmp_path: Path, rule: str, name: str, data: bytes) -> Transfer:
    """curl PUTs `data` as `name` into `rule`; the transfer row once it has ended."""
    (tmp_path / name).write_bytes(data)
    await run_curl("-u", ALICE, "-T", str(tmp_path / name), f"{peers.base}/{rule}/")
    env = peers.env
    mine = [t for t in await rows(env) if t.rule == rule and t.dest_filename.endswith(name)]
    assert len(mine) == 1, mine
    return await env.wait_end(mine[0].id or 0)


def swap_config(env: GatewayEnv, config: Config) -> None:
    """The running gateway's tasks see `config` from their next run (as after a reload)."""
    env.gw.rt.loaded = dataclasses.replace(env.gw.rt.loaded, config=config)


def gateway(
    tmp_path: Path, icap: CIcap, smtp: SmtpSink, hook: NotifyReceiver, ca: Path
) -> GatewayEnv:
    env = http_gateway(tmp_path / "gw")
    env.extra["icap"] = {
        "scan": {"url": icap.url, "timeout": 5, "preview": 1024},
        # ICAP over TLS, the server's certificate checked against its CA (itself).
        "scan-tls": {"url": icap.tls_url, "timeout": 5, "ca_file": str(ca)},
        # The same server, trusted by nobody here: refused, never scanned in clear.
        "untrusted": {"url": icap.tls_url, "timeout": 5, "preview": None},
    }
    env.extra["smtp"] = {
        "mail": {
            "host": "127.0.0.1",
            "port": smtp.port,
            "tls": "starttls",
            "user": "gateway",
            "password": SMTP_PASSWORD,
            "from": "gateway@example.test",
            "ca_file": str(ca),
            "timeout": 5,
        }
    }
    env.extra["notify"] = {
        "hook": {"url": hook.url, "secret": SECRET, "retries": 2, "retry_delay": 0.05},
        # Nothing listens there.
        "dead": {"url": f"http://127.0.0.1:{free_port()}/", "secret": SECRET, "retries": 1,
                 "retry_delay": 0.05},
    }  # fmt: skip
    # The gateway-wide error chain: one notice for every failed transfer.
    env.daemon["error_tasks"] = [{"type": "NOTIFY", "args": {"endpoint": "hook"}}]
    clean, quarantine = tmp_path / "clean", tmp_path / "quarantine"
    # Files arrive in the rule's folder (the staging folder, which no one else reads);
    # the chain moves them where they are seen only once scanned.
    env.rule(
        "scanned",
        "receive",
        allow={"accounts": ["alice"]},
        post=[
            {"type": "ICAP", "args": {"server": "scan", "quarantine": str(quarantine)}},
            {"type": "MOVE", "args": {"path": str(clean)}},
        ],
        error=[
            {
                "type": "EMAIL",
                "args": {
                    "to": ["ops@example.test"],
                    "subject": "#ERRORSTRCODE# on #TRUEFILENAME#",
                    "body": "code #ERRORCODE#: #ERRORMSG# (from #REQUESTERHOST#)",
                },
            }
        ],
    )
    env.rule(
        "scanned-tls",
        "receive",
        allow={"accounts": ["alice"]},
        post=[{"type": "ICAP", "args": {"server": "#TI_scanner#"}}],
    )
    env.rule(
        "warned",
        "receive",
        allow={"accounts": ["alice"]},
        post=[{"type": "NOTIFY", "args": {"endpoint": "dead", "failure": "warning"}}],
    )
    env.rule(
        "mailed",
        "receive",
        allow={"accounts": ["alice"]},
        post=[
            {
                "type": "EMAIL",
                "args": {
                    "to": "ops@example.test, audit@example.test",
                    "subject": "#TRUEFILENAME# arrived (#FILESIZE# bytes)",
                    "body": "rule #RULE#, account #REQUESTERHOST#",
                    "attach": True,
                    "max_attachment": 1000,
                },
            },
        ],
    )
    return env


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[Peers]:
    certs = make_cert(tmp_path / "certs", "smtp")
    smtp = SmtpSink(certs, "gateway", SMTP_PASSWORD)
    hook = NotifyReceiver(SECRET, fail_first=1)
    icap = CIcap(tmp_path / "c-icap", certs)
    await smtp.start()
    await hook.start()
    await icap.start()
    env = gateway(tmp_path, icap, smtp, hook, certs.cert)
    await env.start()
    try:
        yield Peers(
            env,
            f"http://127.0.0.1:{env.gw.servers['web'].bound_port}",
            smtp,
            hook,
            tmp_path / "clean",
            tmp_path / "quarantine",
            icap,
        )
    finally:
        await env.stop()
        await icap.stop(graceful=False)
        await hook.stop()
        await smtp.stop()


async def test_icap_passes_clean_refuses_and_quarantines_marked_with_error_chains(
    peers: Peers, tmp_path: Path
) -> None:
    env = peers.env
    staging = env.folder("scanned") / "alice"
    clean_data = b"an ordinary report\n" * 500  # more than the preview
    done = await upload(peers, tmp_path, "scanned", "report.txt", clean_data)
    assert done.status == Status.DONE, done
    assert (peers.clean / "report.txt").read_bytes() == clean_data
    assert not (staging / "report.txt").exists()  # moved out of staging last
    assert done.local_filepath == str(peers.clean / "report.txt")
    assert peers.smtp.messages == [] and peers.hook.posts == []  # no error chain ran

    bad_data = b"x" * 3000 + MARKER.encode() + b"y" * 100
    failed = await upload(peers, tmp_path, "scanned", "evil.txt", bad_data)
    assert failed.status == Status.ERROR and failed.error_code == ErrorCode.TeExternalOperation
    assert "ICAP" in failed.error_msg and "evil.txt refused by 'scan'" in failed.error_msg
    assert "403 Forbidden" in failed.error_msg, failed.error_msg
    # Quarantined, never where clean files go, no longer in staging.
    assert (peers.quarantine / "evil.txt").read_bytes() == bad_data
    assert not (peers.clean / "evil.txt").exists() and not (staging / "evil.txt").exists()
    assert failed.local_filepath == str(peers.quarantine / "evil.txt")

    # The rule's error chain: the mail, markers filled in, through STARTTLS + AUTH.
    await wait_until(lambda: len(peers.smtp.messages) == 1, "the error mail")
    mail = peers.smtp.messages[0]
    assert mail["Subject"] == "TeExternalOperation on evil.txt"
    text = mail.get_body().get_content()  # type: ignore[union-attr]
    assert text.startswith("code E: task #0 (ICAP) failed: ICAP: evil.txt refused"), text
    assert "(from alice)" in text
    assert mail["Message-ID"] == f"<{failed.remote_id}.error-tasks.0@example.test>"
    assert peers.smtp.envelopes == [("gateway@example.test", ["ops@example.test"])]

    # The gateway-wide error chain: NOTIFY, signed, answered 500 once and tried again
    # with the same key; task number 1 (after the rule's one error task).
    await wait_until(lambda: len(peers.hook.posts) == 2, "the notice and its retry")
    (first_headers, first_body, first_ok), (headers, body, ok) = peers.hook.posts
    assert first_ok and ok and first_body == body
    assert headers["Idempotency-Key"] == first_headers["Idempotency-Key"]
    assert headers["Idempotency-Key"] == f"{failed.remote_id}.error-tasks.1"
    notice = json.loads(body)
    assert notice["id"] == failed.id and notice["rule"] == "scanned"
    assert notice["errorCode"] == "TeExternalOperation" and "refused" in notice["errorMsg"]
    assert all(SECRET not in row.error_msg for row in await rows(env))


async def test_icap_down_fails_clearly_and_leaves_the_file(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    await peers.icap.stop()  # c-icap stopped: the file must not pass unscanned
    data = b"clean but unscanned\n"
    failed = await upload(peers, tmp_path, "scanned", "waiting.txt", data)
    assert failed.status == Status.ERROR and failed.error_code == ErrorCode.TeExternalOperation
    assert "scan by 'scan' failed: cannot connect to 127.0.0.1" in failed.error_msg
    staged = env.folder("scanned") / "alice" / "waiting.txt"
    assert staged.read_bytes() == data  # the failed task left its input untouched
    assert not (peers.clean / "waiting.txt").exists()
    assert not (peers.quarantine / "waiting.txt").exists()
    await wait_until(lambda: len(peers.hook.posts) == 2, "the gateway-wide notice")
    assert json.loads(peers.hook.posts[-1][1])["errorMsg"] == failed.error_msg.split("; ")[0]


async def test_icap_server_that_never_answers_is_a_timeout(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await reader.read(65536))  # takes the request, never answers
        await reader.read()  # until the gateway gives up and closes

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        slow = env.gw.rt.loaded.config.icap["scan"].model_copy(
            update={"url": f"icap://127.0.0.1:{port}/scan", "timeout": 0.5}
        )
        swap_config(env, env.gw.rt.loaded.config.model_copy(update={"icap": {"scan": slow}}))
        failed = await upload(peers, tmp_path, "scanned", "slow.txt", b"data\n")
    finally:
        server.close()
        await server.wait_closed()
    assert received and received[0].startswith(b"RESPMOD icap://127.0.0.1:")
    assert failed.status == Status.ERROR and failed.error_code == ErrorCode.TeExternalOperation
    assert "did not answer within 0.5 s" in failed.error_msg, failed.error_msg
    assert (env.folder("scanned") / "alice" / "slow.txt").exists()


async def test_icap_reqmod(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    reqmod = env.gw.rt.loaded.config.icap["scan"].model_copy(update={"method": "REQMOD"})
    swap_config(env, env.gw.rt.loaded.config.model_copy(update={"icap": {"scan": reqmod}}))
    done = await upload(peers, tmp_path, "scanned", "put-clean.txt", b"fine\n" * 400)
    assert done.status == Status.DONE, done
    failed = await upload(peers, tmp_path, "scanned", "put-bad.txt", MARKER.encode())
    assert failed.status == Status.ERROR and "refused by 'scan'" in failed.error_msg, failed
    assert (peers.quarantine / "put-bad.txt").exists()


async def test_notify_over_https(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    certs = make_cert(tmp_path / "certs-https", "hook")
    secure = NotifyReceiver(SECRET, certs=certs)
    await secure.start()
    try:
        hook = env.gw.rt.loaded.config.notify["hook"].model_copy(
            update={"url": secure.url, "ca_file": certs.cert}
        )
        notify = {**env.gw.rt.loaded.config.notify, "hook": hook}
        swap_config(env, env.gw.rt.loaded.config.model_copy(update={"notify": notify}))
        await upload(peers, tmp_path, "scanned", "https.txt", MARKER.encode())
        await wait_until(lambda: len(secure.posts) == 1, "the notice over HTTPS")
    finally:
        await secure.stop()
    headers, body, good = secure.posts[0]
    assert good and json.loads(body)["errorCode"] == "TeExternalOperation"
    assert headers["Idempotency-Key"].endswith(".error-tasks.1")
    assert secure.url.startswith("https://") and peers.hook.posts == []


async def test_icap_over_tls(peers: Peers, tmp_path: Path) -> None:
    async def scanned(name: str, data: bytes, scanner: str) -> Transfer:
        (tmp_path / name).write_bytes(data)
        info = f"Waarp-Transfer-Info: scanner={scanner}"
        url = f"{peers.base}/scanned-tls/"
        await run_curl("-u", ALICE, "-H", info, "-T", str(tmp_path / name), url)
        mine = [t for t in await rows(peers.env) if t.dest_filename.endswith(name)]
        return await peers.env.wait_end(mine[0].id or 0)

    clean = await scanned("tls-clean.txt", b"clean over TLS\n", "scan-tls")
    assert clean.status == Status.DONE, clean
    marked = await scanned("tls-marked.txt", MARKER.encode(), "scan-tls")
    assert marked.status == Status.ERROR and "refused by 'scan-tls'" in marked.error_msg
    untrusted = await scanned("tls-untrusted.txt", b"clean\n", "untrusted")
    assert untrusted.status == Status.ERROR, untrusted
    assert "scan by 'untrusted' failed" in untrusted.error_msg
    assert "certificate verify failed" in untrusted.error_msg, untrusted.error_msg


async def test_email_post_task_with_attachment_and_stable_message_id(
    peers: Peers, tmp_path: Path
) -> None:
    small = b"small attachment\n"
    done = await upload(peers, tmp_path, "mailed", "small.txt", small)
    assert done.status == Status.DONE, done
    await wait_until(lambda: len(peers.smtp.messages) == 1, "the mail")
    mail = peers.smtp.messages[0]
    assert mail["Subject"] == f"small.txt arrived ({len(small)} bytes)"
    assert mail["Message-ID"] == f"<{done.remote_id}.post-tasks.0@example.test>"
    attachments = list(mail.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["small.txt"]
    assert attachments[0].get_content() == small
    assert peers.smtp.envelopes[0][1] == ["ops@example.test", "audit@example.test"]

    big = b"z" * 1001  # over max_attachment: named, not attached
    done = await upload(peers, tmp_path, "mailed", "big.bin", big)
    assert done.status == Status.DONE, done
    await wait_until(lambda: len(peers.smtp.messages) == 2, "the second mail")
    mail = peers.smtp.messages[1]
    assert list(mail.iter_attachments()) == []
    text = mail.get_body().get_content()  # type: ignore[union-attr]
    assert "rule mailed, account alice" in text and "not attached: 1001 bytes" in text


async def test_an_undelivered_notice_may_be_a_warning(peers: Peers, tmp_path: Path) -> None:
    done = await upload(peers, tmp_path, "warned", "w.txt", b"data\n")
    assert done.status == Status.DONE and done.error_code == ErrorCode.TeWarning, done
    assert "NOTIFY: notice to 'dead' failed" in done.error_msg, done.error_msg
    assert peers.hook.posts == []  # a warning is no failure: no error chain ran


# aiosmtpd sees TLS only when it comes by STARTTLS: with implicit TLS it warns that
# AUTH does not require it, though the connection is TLS from its first byte.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_email_over_implicit_tls(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    certs = make_cert(tmp_path / "certs-implicit", "smtps")
    smtps = SmtpSink(certs, "gateway", SMTP_PASSWORD, implicit=True)
    await smtps.start()
    try:
        mail = env.gw.rt.loaded.config.smtp["mail"].model_copy(
            update={"port": smtps.port, "tls": "implicit", "ca_file": certs.cert}
        )
        swap_config(env, env.gw.rt.loaded.config.model_copy(update={"smtp": {"mail": mail}}))
        done = await upload(peers, tmp_path, "mailed", "tls.txt", b"over TLS\n")
        assert done.status == Status.DONE, done
        await wait_until(lambda: len(smtps.messages) == 1, "the mail over implicit TLS")
    finally:
        await smtps.stop()
    assert smtps.messages[0]["Subject"] == "tls.txt arrived (9 bytes)"
    assert peers.smtp.messages == []  # not through the STARTTLS server


async def test_email_refused_login_is_the_task_error(peers: Peers, tmp_path: Path) -> None:
    env = peers.env
    smtp = env.gw.rt.loaded.config.smtp["mail"].model_copy(
        # aiosmtplib tries LOGIN after PLAIN is refused, and waits for aiosmtpd's answer
        # to it until its timeout: keep that short.
        update={"password": "wrong", "timeout": 1.5}
    )
    config = env.gw.rt.loaded.config.model_copy(update={"smtp": {"mail": smtp}})
    swap_config(env, config)
    failed = await upload(peers, tmp_path, "mailed", "nomail.txt", b"data\n")
    assert failed.status == Status.ERROR and failed.error_code == ErrorCode.TeExternalOperation
    assert "EMAIL: mail through 'mail' failed" in failed.error_msg, failed.error_msg
    assert "wrong" not in failed.error_msg and peers.smtp.messages == []


def test_gateway_error_tasks_are_checked_like_a_rules(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.daemon["error_tasks"] = [{"type": "NOTIFY", "args": {"endpoint": "x", "bogus": 1}}]
    with pytest.raises(ConfigError) as caught:
        env.load()
    text = str(caught.value)
    assert "gatewayd.yaml" in text and "NOTIFY: unknown argument 'bogus'" in text, text


def test_the_readme_example_settings_and_rule_load(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Scanning and notices", 1)[1].split("\n## ", 1)[0]
    settings_text, rule_text = (
        block.split("\n```", 1)[0] for block in section.split("```yaml\n")[1:3]
    )
    settings = yaml.safe_load(settings_text)
    rule = yaml.safe_load(rule_text.replace("/srv/gatewayd", str(tmp_path / "srv")))
    env = GatewayEnv(tmp_path)
    env.daemon.update(settings.pop("daemon"))
    env.extra.update(settings)
    env.rules[rule["name"]] = rule
    loaded = env.load()
    assert loaded.config.daemon.error_tasks[0].type == "NOTIFY"
    assert loaded.config.smtp["mail"].sender == "gateway@example.com"
    assert "password" not in repr(loaded.config.smtp["mail"])
    assert "secret" not in repr(loaded.config.notify["ops"])
    assert [t.type for t in loaded.config.rules["scanned-inbox"].post] == ["ICAP", "MOVE"]


def test_unknown_server_names_are_config_problems_with_file_and_line(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.extra["smtp"] = {
        name: {"host": "127.0.0.1", "from": "gw@example.test"} for name in ("a", "b")
    }
    env.daemon["error_tasks"] = [{"type": "NOTIFY", "args": {}}]
    env.rule(
        "checked",
        "receive",
        post=[
            {"type": "ICAP", "args": {"server": "nope"}},
            {"type": "EMAIL", "args": {"to": "x@example.test", "subject": "s"}},
            {"type": "EMAIL", "args": {"server": "#TI_mail#", "to": "x@y.z", "subject": "s"}},
        ],
    )
    with pytest.raises(ConfigError) as caught:
        env.load()
    problems = [str(p) for p in caught.value.problems]
    text = "\n".join(problems)
    assert "NOTIFY: argument 'endpoint' is needed: 0 `notify:` entries" in text, text
    assert "ICAP: unknown `icap:` entry 'nope' (declared: none)" in text, text
    assert "EMAIL: argument 'server' is needed: 2 `smtp:` entries" in text, text
    assert len(problems) == 3, problems  # the marker is judged at run time
    assert any("checked.yaml:" in p and "'nope'" in p for p in problems), problems


def test_a_rule_sent_through_the_api_is_checked_for_server_names(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.extra["notify"] = {"ops": {"url": "http://127.0.0.1:9/", "secret": "s3cret"}}
    loaded = env.load()
    good = "name: r\ndirection: receive\npath: /r\npost:\n  - type: NOTIFY\n"
    assert load_rule_text(loaded, good, "r.yaml").post[0].type == "NOTIFY"
    bad = good + "    args: {endpoint: opps}\n"
    with pytest.raises(ConfigError) as caught:
        load_rule_text(loaded, bad, "r.yaml")
    (problem,) = caught.value.problems
    assert "r.yaml:6" in str(problem) and "unknown `notify:` entry 'opps'" in str(problem)
