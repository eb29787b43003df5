"""EMAIL and NOTIFY across a real kill -9 of `gatewayd serve`: a task that ran is not
run again, and the one the crash cut is sent again with the same key (at least once).
The case is the error chain (the rule's, then the gateway-wide one), which a crash did
not resume before; a post chain resumes at its task as every chain does (test_crash_resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gatewayd import crashpoints
from tests.crash_support import all_rows, died_by_itself, start_daemon
from tests.daemon_proc import wait_row
from tests.gateway_env import GatewayEnv, exec_task
from tests.http_support import PASSWORD, free_port, http_gateway, make_cert, run_curl, wait_port
from tests.notice_peers import NotifyReceiver, SmtpSink, wait_until

SECRET = "crash-notice-secret"
EMAIL = {"type": "EMAIL", "args": {"to": "ops@example.test", "subject": "#TRUEFILENAME#"}}


async def crash_and_resume(
    tmp_path: Path, **rule: Any
) -> tuple[dict[str, Any], SmtpSink, NotifyReceiver]:
    """Upload a file over HTTP into the rule `alerted` of a real daemon that kills itself
    once a NOTIFY's receiver answered; check that it did, start it again and return the
    row once the transfer ended, with the peers."""
    certs = make_cert(tmp_path / "certs", "smtp")
    smtp = SmtpSink(certs, "gateway", "smtp-pass")
    hook = NotifyReceiver(SECRET)
    await smtp.start()
    await hook.start()
    port = free_port()
    env: GatewayEnv = http_gateway(tmp_path / "gw", port=port)
    env.extra["smtp"] = {
        "mail": {
            "host": "127.0.0.1",
            "port": smtp.port,
            "user": "gateway",
            "password": "smtp-pass",
            "from": "gateway@example.test",
            "ca_file": str(certs.cert),
        }
    }
    env.extra["notify"] = {"hook": {"url": hook.url, "secret": SECRET}}
    env.daemon["error_tasks"] = [{"type": "NOTIFY", "args": {}}]
    env.rule("alerted", "receive", allow={"accounts": ["alice"]}, **rule)
    db = env.load().paths.database
    daemon = await start_daemon(env.config_file, crash_at=crashpoints.NOTICE_SENT)
    try:
        await wait_port(port, timeout=30)
        (tmp_path / "a.txt").write_bytes(b"alert me\n")
        # The daemon dies before it answers: curl sees the connection drop.
        await run_curl("-u", f"alice:{PASSWORD}", "-T", str(tmp_path / "a.txt"),
                       f"http://127.0.0.1:{port}/alerted/")  # fmt: skip
        await died_by_itself(daemon)
        assert len(smtp.messages) == 1 and len(hook.posts) == 1
        (row,) = all_rows(db)
        assert row["task_number"] == 1, row  # EMAIL's end was committed, NOTIFY's not

        daemon = await start_daemon(env.config_file)
        final = ("DONE", "ERROR")
        done = await wait_row(db, row["id"], lambda r: r["status"] in final, "ended", daemon)
        await wait_until(lambda: len(hook.posts) == 2, "the notice sent again")
        # Secrets never reach the log.
        assert SECRET not in daemon.output and "smtp-pass" not in daemon.output
        return done, smtp, hook
    finally:
        await daemon.stop()
        await hook.stop()
        await smtp.stop()


def check_resent(done: dict[str, Any], smtp: SmtpSink, hook: NotifyReceiver, step: str) -> None:
    first, again = hook.posts
    assert first[2] and again[2]  # both signed right
    key = f"{done['remote_id']}.{step}.1"
    assert first[0]["Idempotency-Key"] == again[0]["Idempotency-Key"] == key
    assert json.loads(again[1])["id"] == done["id"]
    # The mail's task had ended before the crash: it is not sent a second time.
    assert len(smtp.messages) == 1
    assert smtp.messages[0]["Message-ID"] == f"<{done['remote_id']}.{step}.0@example.test>"


async def test_an_error_chain_cut_by_kill_9_resumes_at_its_cut_task(tmp_path: Path) -> None:
    # The rule's error chain mails (task 0); the gateway-wide one notifies (task 1).
    done, smtp, hook = await crash_and_resume(tmp_path, post=[exec_task("exit 3")], error=[EMAIL])
    assert done["status"] == "ERROR" and done["error_code"] == "TeExternalOperation", done
    assert done["step"] == "POST TASKS" and "exited with code 3" in done["error_msg"], done
    check_resent(done, smtp, hook, "error-tasks")
    assert json.loads(hook.posts[1][1])["errorCode"] == "TeExternalOperation"
