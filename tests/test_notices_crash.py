"""EMAIL and NOTIFY across a real kill -9 of `gatewayd serve`: a task that ran is not
run again, and the one the crash cut is sent again with the same key (at least once)."""

from __future__ import annotations

import json
from pathlib import Path

from gatewayd import crashpoints
from tests.crash_support import all_rows, died_by_itself, start_daemon
from tests.daemon_proc import wait_row
from tests.http_support import PASSWORD, free_port, http_gateway, make_cert, run_curl, wait_port
from tests.notice_peers import NotifyReceiver, SmtpSink, wait_until

SECRET = "crash-notice-secret"


async def test_a_notice_cut_by_kill_9_is_sent_again_with_its_key(tmp_path: Path) -> None:
    certs = make_cert(tmp_path / "certs", "smtp")
    smtp = SmtpSink(certs, "gateway", "smtp-pass")
    hook = NotifyReceiver(SECRET)
    await smtp.start()
    await hook.start()
    port = free_port()
    env = http_gateway(tmp_path / "gw", port=port)
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
    env.rule(
        "alerted",
        "receive",
        allow={"accounts": ["alice"]},
        post=[
            {"type": "EMAIL", "args": {"to": "ops@example.test", "subject": "#TRUEFILENAME#"}},
            {"type": "NOTIFY", "args": {}},
        ],
    )
    loaded = env.load()
    db = loaded.paths.database
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
        assert (row["step"], row["task_number"]) == ("POST TASKS", 1), row  # EMAIL committed

        daemon = await start_daemon(env.config_file)
        done = await wait_row(db, row["id"], lambda r: r["status"] == "DONE", "DONE", daemon)
        await wait_until(lambda: len(hook.posts) == 2, "the notice sent again")
        first, again = hook.posts
        assert first[2] and again[2]  # both signed right
        key = f"{done['remote_id']}.post-tasks.1"
        assert first[0]["Idempotency-Key"] == again[0]["Idempotency-Key"] == key
        assert json.loads(again[1])["id"] == row["id"]
        # The mail's task had ended before the crash: it is not sent a second time.
        assert len(smtp.messages) == 1
        assert smtp.messages[0]["Message-ID"] == f"<{done['remote_id']}.post-tasks.0@example.test>"
    finally:
        await daemon.stop()
        await hook.stop()
        await smtp.stop()
