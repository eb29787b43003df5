"""Our SFTP server against OpenSSH's `sftp` and `ssh` clients, with a real `gatewayd
serve`: uploads and downloads through the pipeline, refusals, logins, exec checksums."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from gatewayd.passwords import hash_password
from tests.daemon_proc import DaemonProcess
from tests.gateway_env import GatewayEnv, lines, make_file, trace_task
from tests.sftp_peers import keygen, listening_port, need, sftp, ssh

PASSWORD = "correct horse"
WRONG = "wrong-battery-staple"


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY id")]


def setup_env(tmp_path: Path) -> tuple[GatewayEnv, Path]:
    """Accounts acme (key and password) and other; rules inbox (both), outbox (acme,
    shared) and secret (other only); pre and post tasks trace what they see."""
    env = GatewayEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    env.accounts["acme"] = {"password": hash_password(PASSWORD), "public_keys": [keygen(key)]}
    env.accounts["other"] = {"password": hash_password(PASSWORD)}
    env.extra["servers"] = {"sftp": {"protocol": "sftp", "port": 0}}
    env.extra["logging"] = {"format": "json"}
    traced = {"pre": [trace_task(env.out, "pre")], "post": [trace_task(env.out, "post")]}
    env.rule("inbox", "receive", allow={"accounts": ["acme", "other"]}, **traced)
    env.rule("outbox", "send", shared_folder=True, allow={"accounts": ["acme"]}, **traced)
    env.rule("secret", "receive", allow={"accounts": ["other"]})
    return env, key


async def test_openssh_clients_against_gatewayd_serve(tmp_path: Path) -> None:
    need("sftp", "ssh", "sshpass")
    env, key = setup_env(tmp_path)
    loaded = env.load()
    inbox = loaded.paths.rule_folder(loaded.config.rules["inbox"])
    outbox = loaded.paths.rule_folder(loaded.config.rules["outbox"])
    report = make_file(outbox / "report.csv", 300_000, seed=2)
    theirs = make_file(inbox / "other" / "theirs.txt", 10, seed=3)
    local = tmp_path / "local"
    data = make_file(local / "a.bin", 2_000_000 + 7)
    second = make_file(local / "b.bin", 12_345, seed=4)

    daemon = await DaemonProcess.start(env.config_file)
    try:
        await daemon.wait_for("gatewayd ready")
        port = await listening_port(daemon)

        # Key login: an upload and a download, each a transfer with its tasks.
        done = await sftp(port, "acme", [
            f"put {local}/a.bin /inbox/a.bin",
            f"get /outbox/report.csv {local}/report.csv",
            "ls -l /",
            "ls -l /inbox",
        ], key=key)  # fmt: skip
        done.ok()
        assert (inbox / "acme" / "a.bin").read_bytes() == data
        assert (local / "report.csv").read_bytes() == report
        listing = done.output.split("ls -l /inbox")[1]
        assert "a.bin" in listing and "theirs.txt" not in listing
        assert "secret" not in done.output.split("ls -l /inbox")[0]

        # Everything outside the account's rules is refused, and leaves nothing behind.
        attempts = {
            f"get /inbox/../../../../etc/passwd {local}/x1": "not found",
            f"get ../etc/passwd {local}/x2": "not found",
            f"put {local}/b.bin /etc/b.bin": "Permission denied",
            f"put {local}/b.bin /b.bin": "Permission denied",
            f"put {local}/b.bin /secret/b.bin": "Permission denied",
            "ls /secret": "not found",
            f"put {local}/b.bin /outbox/b.bin": "Permission denied",
            f"get /inbox/theirs.txt {local}/x3": "not found",
            f"get /inbox/../other/theirs.txt {local}/x4": "not found",
            "mkdir /newdir": "Permission denied",
            "mkdir /inbox/sub": "Permission denied",
            "rename /inbox/a.bin /outbox/a.bin": "Permission denied",
            "rename /inbox/a.bin /a.bin": "Permission denied",
            "symlink /inbox/a.bin /inbox/link": "Permission denied",
            "rm /inbox/a.bin": "Permission denied",
            "rmdir /inbox": "Permission denied",
        }
        refused = await sftp(port, "acme", [f"-{c}" for c in attempts], key=key)
        answers = dict(block.split("\n", 1) for block in refused.output.split("sftp> -")[1:])
        assert {c: a.strip() for c, a in answers.items() if attempts[c] not in a} == {}
        assert sorted(p.name for p in local.iterdir()) == ["a.bin", "b.bin", "report.csv"]
        assert sorted(p.name for p in (inbox / "acme").iterdir()) == ["a.bin"]
        assert (inbox / "other" / "theirs.txt").read_bytes() == theirs
        assert not (outbox / "b.bin").exists() and not (outbox / "a.bin").exists()

        # Password login through sshpass; then wrong passwords: refused, logged without
        # the secret.
        (await sftp(port, "acme", [f"put {local}/b.bin /inbox/b.bin"], password=PASSWORD)).ok()
        assert (inbox / "acme" / "b.bin").read_bytes() == second
        for _ in range(2):
            bad = await sftp(port, "acme", ["ls /"], password=WRONG)
            assert bad.returncode != 0
        failure = json.loads(await daemon.wait_for('"login failed"'))
        assert failure["login"] == "acme" and failure["remote"] == "127.0.0.1"

        # Exec checksums, as rclone and SFTPGo users run them.
        digest = await ssh(port, "acme", "sha256sum /inbox/a.bin", key=key)
        assert digest.ok().output == f"{hashlib.sha256(data).hexdigest()}  /inbox/a.bin\n"
        md5 = await ssh(port, "acme", "md5sum 'outbox/report.csv'", key=key)
        assert md5.ok().output == f"{hashlib.md5(report).hexdigest()}  outbox/report.csv\n"
        probe = await ssh(port, "acme", "md5sum", key=key)
        assert probe.ok().output == "d41d8cd98f00b204e9800998ecf8427e  -\n"
        hidden = await ssh(port, "acme", "sha256sum /inbox/theirs.txt /etc/passwd", key=key)
        assert hidden.returncode == 1 and hidden.output.count("No such file") == 2
        shell = await ssh(port, "acme", "cat /etc/passwd", key=key)
        assert shell.returncode == 127 and "root:" not in shell.output
    finally:
        status = await daemon.stop()
    assert status == 0, daemon.output
    assert PASSWORD not in daemon.output and WRONG not in daemon.output

    found = rows(loaded.paths.database)
    summary = [(r["rule"], r["dest_filename"], r["status"], r["progress"]) for r in found]
    assert summary == [
        ("inbox", "a.bin", "DONE", len(data)),
        ("outbox", "report.csv", "DONE", len(report)),
        ("inbox", "b.bin", "DONE", len(second)),
    ]
    assert found[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert found[0]["account"] == "acme" and found[0]["is_server"] == 1
    assert json.loads(found[0]["transfer_info"])["remoteAddress"] == "127.0.0.1"
    assert lines(env.out / "trace") == [
        "pre a.bin", "post a.bin", "pre report.csv", "post report.csv", "pre b.bin",
        "post b.bin",
    ]  # fmt: skip
