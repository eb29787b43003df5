"""The API commands of the CLI (`transfer`, `rule`, `partner`, `server`, `token`,
`status`) as real subprocesses against a real `gatewayd serve`: outputs that parse,
exit statuses a script can rely on, one-line errors, and a watched transfer."""

from __future__ import annotations

import base64
import http.server
import json
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.cli.output import progress_bar
from tests.api_support import PASSWORD, ApiEnv
from tests.daemon_proc import daemon_env
from tests.gateway_env import make_file

MiB = 1 << 20


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    lines: list[str]
    env: ApiEnv
    url: str

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _wait_line(lines: list[str], proc: subprocess.Popen[str], text: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(lines):
            if text in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise AssertionError(f"gatewayd never printed {text!r}:\n{''.join(lines)}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("cli")
    env = ApiEnv(root)
    env.extra["logging"] = {"format": "json"}
    env.users["reader"] = {"transfers": "r"}
    env.partners["slow"] = {"protocol": "local", "root": str(env.share), "max_rate": 4 * MiB}
    env.rule("out", "send")
    env.rule("in", "receive")
    loaded = env.load()
    out_folder = loaded.paths.rule_folder(loaded.config.rules["out"])
    make_file(out_folder / "small.bin", 100_000)
    make_file(out_folder / "big.bin", 6 * MiB)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "serve", "-c", str(env.config_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=daemon_env(), start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        port = json.loads(_wait_line(lines, proc, "api listening"))["port"]
        _wait_line(lines, proc, "gatewayd ready")
        yield Daemon(proc, lines, env, f"http://127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
    assert PASSWORD not in "".join(lines)


def cli_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    env = daemon_env()
    for key in list(env):
        if key.startswith("GATEWAYD_"):
            del env[key]
    env.update(
        GATEWAYD_API_URL=daemon.url,
        GATEWAYD_API_USER="admin",
        GATEWAYD_API_PASSWORD=PASSWORD,
        XDG_CONFIG_HOME=str(daemon.env.root / "xdg"),  # no client file of the developer's
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def gatewayd(daemon: Daemon, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True, text=True, env=cli_env(daemon, **extra), timeout=60, check=False,
    )  # fmt: skip


def ok(daemon: Daemon, *args: str, **extra: str) -> str:
    result = gatewayd(daemon, *args, **extra)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(ok(daemon, *args, "--format", "json"))


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gatewayd: "), result.stderr
    return lines[0]


# --------------------------------------------------------------------------- transfers


def test_add_then_watch_to_completion(daemon: Daemon) -> None:
    created = as_json(daemon, "transfer", "add", "-r", "out", "-p", "slow", "-f", "big.bin",
                      "-o", "copy.bin", "-i", "batch=7", "-i", "note=hello",
                      "--attempts", "0")  # fmt: skip
    assert created["status"] == "PLANNED" and created["transferInfo"]["batch"] == 7
    assert created["transferInfo"]["note"] == "hello"
    result = gatewayd(daemon, "transfer", "watch", str(created["id"]), "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"transfer {created['id']} DONE: 6.0 MiB, sha256 ")
    # Not a terminal: one line per change on stderr, no bar.
    assert f"transfer {created['id']}: " in result.stderr and "\r" not in result.stderr
    assert (daemon.env.share / "copy.bin").stat().st_size == 6 * MiB
    # It followed the live stream of running transfers, not a poll of the row (the
    # stream's access line is written once the server notices the client left).
    _wait_line(daemon.lines, daemon.proc, "GET /api/transfers/events ")
    final = as_json(daemon, "transfer", "watch", str(created["id"]))
    assert final["status"] == "DONE" and final["sha256"]


def test_add_with_watch_and_a_failure_exits_6(daemon: Daemon) -> None:
    result = gatewayd(daemon, "transfer", "add", "-r", "in", "-p", "share", "-f", "missing.bin",
                      "--attempts", "0", "--watch", "--interval", "0.05")  # fmt: skip
    assert result.returncode == 6, (result.stdout, result.stderr)
    assert "ERROR: TeFileNotFound" in result.stdout


def test_watch_draws_a_progress_bar_on_a_terminal(daemon: Daemon) -> None:
    created = as_json(daemon, "transfer", "add", "-r", "out", "-p", "slow", "-f", "big.bin",
                      "-o", "bar.bin")  # fmt: skip
    main, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "transfer", "watch", str(created["id"]),
             "--interval", "0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary,
            env=cli_env(daemon), text=True,
        )  # fmt: skip
        os.close(secondary)
        screen = b""
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(main, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(main)
    text = screen.decode(errors="replace")
    frames = [f for f in text.split("\r") if "ETA" in f]
    assert frames, text
    assert "100%" in frames[-1] and "6.0 MiB/6.0 MiB" in frames[-1]
    assert "#" * 30 in frames[-1]


def test_progress_bar_rendering() -> None:
    line = progress_bar(3 * MiB, 12 * MiB, 1.5 * MiB, 6.0, "RUNNING DATA", width=20)
    assert line == (
        "[#####...............]  25%  3.0 MiB/12.0 MiB  1.5 MiB/s  ETA 00:06  RUNNING DATA"
    )
    assert progress_bar(10, -1, None, None).startswith("[" + "?" * 30 + "]")
    assert "ETA 1:01:01" in progress_bar(0, 10, 1.0, 3661)


def test_list_and_get_parse_in_every_format(daemon: Daemon) -> None:
    created = as_json(daemon, "transfer", "add", "-r", "out", "-p", "share", "-f", "small.bin",
                      "-d", "2031-01-01T00:00:00+00:00")  # fmt: skip
    listed = as_json(daemon, "transfer", "list", "--sort", "id-", "-l", "50")
    assert listed["transfers"][0]["id"] == created["id"]
    as_yaml = yaml.safe_load(ok(daemon, "transfer", "list", "--format", "yaml", "-s", "PLANNED"))
    assert created["id"] in [t["id"] for t in as_yaml["transfers"]]
    assert {t["status"] for t in as_yaml["transfers"]} == {"PLANNED"}
    human = ok(daemon, "transfer", "list", "--status", "PLANNED", "--sort", "start+")
    header = human.splitlines()[0].split()
    assert header[:4] == ["ID", "STATUS", "STEP", "RULE"]
    assert any(line.split()[0] == str(created["id"]) for line in human.splitlines()[1:])
    got = yaml.safe_load(ok(daemon, "transfer", "get", str(created["id"]), "--format", "yaml"))
    assert got["id"] == created["id"] and got["start"].startswith("2031-01-01T00:00:00")
    text = ok(daemon, "transfer", "get", str(created["id"]))
    assert f"ID:          {created['id']}" in text and "Status:      PLANNED" in text


def test_pause_resume_cancel_retry(daemon: Daemon) -> None:
    def later() -> int:
        return as_json(daemon, "transfer", "add", "-r", "out", "-p", "share", "-f", "small.bin",
                       "-d", "2031-01-01T00:00:00Z")["id"]  # fmt: skip

    tid = later()
    assert ok(daemon, "transfer", "pause", str(tid)) == f"transfer {tid} paused (PAUSED)\n"
    again = gatewayd(daemon, "transfer", "pause", str(tid))
    assert again.returncode == 1
    assert one_line_error(again) == "gatewayd: HTTP 409: cannot pause a transfer that is PAUSED"
    assert ok(daemon, "transfer", "cancel", str(tid)) == f"transfer {tid} cancelled (CANCELLED)\n"
    assert gatewayd(daemon, "transfer", "resume", str(tid)).returncode == 1
    retried = ok(daemon, "transfer", "retry", str(tid))
    assert retried.startswith("transfer ") and retried.endswith(f"to retry transfer {tid}\n")
    other = later()
    ok(daemon, "transfer", "pause", str(other))
    # A resumed transfer is due at once (its start time is now).
    assert as_json(daemon, "transfer", "resume", str(other))["status"] == "PLANNED"


def test_exit_statuses(daemon: Daemon) -> None:
    bad = gatewayd(daemon, "transfer", "add", "-r", "nope", "-p", "share", "-f", "x")
    assert bad.returncode == 1 and "unknown rule 'nope'" in one_line_error(bad)
    assert bad.stdout == ""
    missing = gatewayd(daemon, "transfer", "get", "999999")
    assert missing.returncode == 5 and "HTTP 404" in one_line_error(missing)
    wrong = gatewayd(daemon, "status", GATEWAYD_API_PASSWORD="wrong")
    assert wrong.returncode == 4 and "HTTP 401" in one_line_error(wrong)
    forbidden = gatewayd(daemon, "rule", "list", GATEWAYD_API_USER="reader")
    assert forbidden.returncode == 4 and "HTTP 403" in one_line_error(forbidden)
    nobody = gatewayd(daemon, "status", GATEWAYD_API_USER="", GATEWAYD_API_PASSWORD="")
    assert nobody.returncode == 4 and "no credentials" in one_line_error(nobody)
    away = gatewayd(daemon, "status", "--url", "http://127.0.0.1:9")
    assert away.returncode == 3 and "cannot reach the API" in one_line_error(away)
    usage = gatewayd(daemon, "transfer", "get", "abc")
    assert usage.returncode == 2
    usage = gatewayd(daemon, "transfer", "list", "--format", "xml")
    assert usage.returncode == 2


# --------------------------------------------------------------------------- rules


def test_rule_apply_get_list_delete(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "drop.yaml"
    text = "# Dropped files.\nname: drop\ndirection: receive\npath: /drop\nallow: all\n"
    source.write_text(text)
    assert ok(daemon, "rule", "apply", "-f", str(source)) == "rule drop created\n"
    assert (daemon.env.root / "rules" / "drop.yaml").read_text() == text
    source.write_text(text.replace("/drop", "/dropped"))
    assert ok(daemon, "rule", "apply", "-f", str(source)) == "rule drop replaced\n"
    rule = yaml.safe_load(ok(daemon, "rule", "get", "drop"))
    assert (rule["name"], rule["path"]) == ("drop", "/dropped")
    names = [r["name"] for r in as_json(daemon, "rule", "list")["rules"]]
    assert "drop" in names and "out" in names
    assert ok(daemon, "rule", "list").splitlines()[0].split() == [
        "NAME",
        "DIRECTION",
        "PATH",
        "COMMENT",
    ]
    source.write_text("name: broken\ndirection: nowhere\npath: /b\n")
    refused = gatewayd(daemon, "rule", "apply", "-f", str(source))
    assert refused.returncode == 1 and "line 2" in one_line_error(refused)
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("direction: send\n")
    assert gatewayd(daemon, "rule", "apply", "-f", str(nameless)).returncode == 2
    assert ok(daemon, "rule", "delete", "drop") == "rule drop deleted\n"
    assert gatewayd(daemon, "rule", "get", "drop").returncode == 5


# --------------------------------------------------------------------------- the rest


def test_partner_server_and_status(daemon: Daemon) -> None:
    partners = as_json(daemon, "partner", "list")["partners"]
    assert [p["name"] for p in partners] == ["share", "slow"]
    assert ok(daemon, "partner", "list").splitlines()[0].split()[:2] == ["NAME", "PROTOCOL"]
    share = yaml.safe_load(ok(daemon, "partner", "get", "share", "--format", "yaml"))
    assert share["protocol"] == "local" and share["hasPassword"] is False
    assert "Protocol:" in ok(daemon, "partner", "get", "share")
    assert as_json(daemon, "server", "list") == {"servers": []}
    assert ok(daemon, "server", "list") == "(none)\n"
    status = as_json(daemon, "status")
    assert status["database"]["state"] == "ok" and status["scheduler"]["state"] == "running"
    assert "Scheduler:" in ok(daemon, "status")


def test_tokens_from_the_cli(daemon: Daemon) -> None:
    result = gatewayd(daemon, "token", "create", "--permission", "transfers=r",
                      "--expires-in", "1h", "--comment", "ci")  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert len(result.stdout.splitlines()) == 1 and token.count(".") == 2
    token_id = result.stderr.split()[1]
    as_token = {"GATEWAYD_API_TOKEN": token, "GATEWAYD_API_USER": "", "GATEWAYD_API_PASSWORD": ""}
    assert gatewayd(daemon, "transfer", "list", **as_token).returncode == 0
    assert gatewayd(daemon, "rule", "list", **as_token).returncode == 4
    listed = as_json(daemon, "token", "list")["tokens"]
    assert token_id in [t["id"] for t in listed] and token not in json.dumps(listed)
    assert ok(daemon, "token", "revoke", token_id) == f"token {token_id} revoked\n"
    revoked = gatewayd(daemon, "transfer", "list", **as_token)
    assert revoked.returncode == 4 and "revoked" in one_line_error(revoked)


def test_client_config_file(daemon: Daemon, tmp_path: Path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(f"url: {daemon.url}\nuser: admin\npassword: {PASSWORD}\n")
    config.chmod(0o644)
    bare = {"GATEWAYD_API_URL": "", "GATEWAYD_API_USER": "", "GATEWAYD_API_PASSWORD": ""}
    refused = gatewayd(daemon, "status", "--client-config", str(config), **bare)
    assert refused.returncode == 2 and "chmod 600" in one_line_error(refused)
    config.chmod(0o600)
    assert gatewayd(daemon, "status", "--client-config", str(config), **bare).returncode == 0
    found = gatewayd(daemon, "status", GATEWAYD_CLIENT_CONFIG=str(config), **bare)
    assert found.returncode == 0
    config.write_text("url: x\ncolour: red\n")
    odd = gatewayd(daemon, "status", "--client-config", str(config), **bare)
    assert odd.returncode == 2 and "unknown setting colour" in one_line_error(odd)


# --------------------------------------------------------------------- --manage-tokens


class _TokenApi(http.server.BaseHTTPRequestHandler):
    """Stands for the admin API's `POST /api/tokens`, recording what the CLI sends."""

    server: _RecordingServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.seen.append(
            (self.path, dict(self.headers), json.loads(self.rfile.read(length)))
        )
        answer = json.dumps(
            {"id": "t-1", "token": "x.y.z", "expires": "2031-01-01T00:00:00+00:00"}
        ).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(http.server.ThreadingHTTPServer):
    seen: list[tuple[str, dict[str, str], Any]]


@pytest.fixture
def token_api() -> Iterator[_RecordingServer]:
    server = _RecordingServer(("127.0.0.1", 0), _TokenApi)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_token_create_sends_manage_tokens_only_when_asked(
    token_api: _RecordingServer, tmp_path: Path
) -> None:
    # The API of this branch does not know `manageTokens` yet (it answers 400 "unknown
    # field"): this checks the request the CLI builds, on the wire.
    env = {k: v for k, v in daemon_env().items() if not k.startswith("GATEWAYD_")}
    env.update(GATEWAYD_API_PASSWORD="pw", XDG_CONFIG_HOME=str(tmp_path))
    url = f"http://127.0.0.1:{token_api.server_address[1]}"

    def create(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gatewayd", "token", "create", "--url", url,
             "--user", "ops", *extra],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    managing = create("--manage-tokens", "--expires-in", "2h", "--comment", "rotation")
    assert managing.returncode == 0, managing.stderr
    assert managing.stdout == "x.y.z\n"
    plain = create("--permission", "transfers=r")
    assert plain.returncode == 0, plain.stderr
    (path1, headers1, body1), (path2, _, body2) = token_api.seen
    assert path1 == path2 == "/api/tokens"
    assert headers1["Content-Type"] == "application/json"
    assert headers1["Authorization"] == "Basic " + base64.b64encode(b"ops:pw").decode()
    assert body1 == {"expiresIn": 7200.0, "comment": "rotation", "manageTokens": True}
    assert body2 == {"expiresIn": 86400.0, "permissions": {"transfers": "r"}}


def test_only_a_token_created_with_manage_tokens_lists_tokens(daemon: Daemon) -> None:
    def token(*extra: str) -> dict[str, str]:
        result = gatewayd(daemon, "token", "create", "--expires-in", "10m", *extra)
        assert result.returncode == 0, result.stderr
        return {
            "GATEWAYD_API_TOKEN": result.stdout.strip(),
            "GATEWAYD_API_USER": "",
            "GATEWAYD_API_PASSWORD": "",
        }

    assert gatewayd(daemon, "token", "list", **token("--manage-tokens")).returncode == 0
    assert gatewayd(daemon, "token", "list", **token()).returncode == 4
