"""Every shell example of the README, run as written against the demo that `scripts/run`
starts.

The demo (a copy of `etc/` and `rules/`) runs as `scripts/run` runs it: `gatewayd serve
-c etc/gatewayd.yaml` from the folder that holds them, which stands for the checkout.
The examples run in the README's order in one `bash` session in that folder, as a reader
would type them in one terminal (variables and `export`s carry over). What the test
changes, and only that:

- the demo's fixed ports (8080, 8081, 2222) become free ones, in the copied
  configuration and in the commands; the CLI's default API address names port 8080, so
  the session sets `GATEWAYD_API_URL` to the free one;
- password prompts are answered: `sftp` and `ssh` run under `sshpass` with the password
  the README gives, `sftp>` lines become an `sftp -b` batch, and a `gatewayd` command
  that prompts runs in a terminal of its own;
- `/etc/gatewayd/gatewayd.yaml` (an installed gateway) is the demo's configuration;
- curl reports each HTTP status on stderr (a `.curlrc` of the test's own), so that every
  curl answer is checked: the status the README's comment names, else a 2xx.

Every command must exit 0; some have more checks (the files they move, what they print).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gatewayd.passwords import verify_password
from tests.conftest import CHECKOUT, DemoConfig
from tests.daemon_proc import daemon_env
from tests.gateway_env import make_file

README = CHECKOUT / "README.md"
DEMO_PORTS = ("8080", "8081", "2222")  # api, http, sftp: as etc/gatewayd.yaml ships them
TIMEOUT = 60.0  # seconds for one example; the slowest (80 MiB over loopback) takes a few
BIG = 80 << 20  # big.iso, of which the README's HEAD example says 73400320 bytes are held
HELD = 73400320

# Examples the test does not run, and why. Nothing else may be left out.
SKIPPED = {
    "scripts/run": "the test starts the demo as it does (gatewayd serve -c etc/gatewayd.yaml "
    "from the checkout), on free ports and in a copy of etc/ and rules/",
    "scripts/test": "it runs the whole suite, this test included",
    "gatewayd db copy -c /etc/gatewayd/gatewayd.yaml --to "
    "postgresql://gatewayd@db.example.org/gatewayd": "it needs a PostgreSQL server and a "
    "stopped gateway: tests/test_db_copy.py runs it against the tests' private server",
    # Setting up the nodes of a machine under systemd: tests/test_systemd.py checks the
    # template unit, tests/test_cluster_*.py run nodes.
    "mkdir -p /etc/gatewayd/nodes": "it writes to the system's /etc",
    "$EDITOR /etc/gatewayd/nodes/gw-1.yaml /etc/gatewayd/nodes/gw-2.yaml": "an editor",
    "systemctl disable --now gatewayd && systemctl enable --now gatewayd@gw-1 gatewayd@gw-2": (
        "it needs systemd as the init system and an installed gateway"
    ),
}


# ------------------------------------------------------------------------- the README


@dataclass
class Example:
    """One command of a ```sh or ```console block, continuation lines joined."""

    line: int  # in README.md
    command: str  # as written, comment removed (backslash-newlines kept)
    comment: str = ""
    session: list[str] = field(default_factory=list)  # the `sftp>` lines that follow it

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.command}"


def _split_comment(text: str) -> tuple[str, str]:
    """`command  # comment` -> (command, comment); a `#` inside quotes is not one."""
    for match in re.finditer(r"\s#\s?", text):
        before = text[: match.start()]
        if before.count("'") % 2 == 0 and before.count('"') % 2 == 0:
            return before.rstrip(), text[match.end() :].strip()
    return text.rstrip(), ""


def readme_examples(text: str) -> list[Example]:
    examples: list[Example] = []
    language: str | None = None
    pending: tuple[int, str] | None = None  # a command continued on the next line
    for number, line in enumerate(text.splitlines(), start=1):
        if language is None:
            match = re.fullmatch(r"```(sh|console)\s*", line)
            language = match.group(1) if match else None
            continue
        if line.startswith("```"):
            language = None
            continue
        if pending is not None:
            start, joined = pending
            line, number = joined + "\n" + line, start
            pending = None
        elif language == "console":
            if not line.startswith("$ "):
                continue  # what the command prints, for the reader
            line = line[2:]
        if line.rstrip().endswith("\\"):
            pending = (number, line)
            continue
        if line.startswith("sftp> "):
            assert examples and examples[-1].command.startswith("sftp "), line
            examples[-1].session.append(line.removeprefix("sftp> "))
            continue
        command, comment = _split_comment(line)
        if command.strip():
            examples.append(Example(number, command.strip(), comment))
    assert language is None and pending is None, "README.md: an unclosed block"
    return examples


def test_the_readme_examples_are_found() -> None:
    examples = readme_examples(README.read_text(encoding="utf-8"))
    commands = [e.command for e in examples]
    assert "gatewayd transfer add -r outbox -p loopback -f report.csv --watch" in commands
    sftp = next(e for e in examples if e.session)
    assert sftp.session == ["put report.csv inbox/", "ls -l outbox", "get outbox/report.csv"]
    digest = next(e for e in examples if "Repr-Digest" in e.command)
    assert digest.command.endswith("\\\n     -T report.csv http://127.0.0.1:8081/inbox/")
    assert digest.comment == "placed only if it matches"
    assert not any("archive" in c for c in commands if "transfer add" in c)


# ----------------------------------------------------------------------- the demo


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _with_ports(text: str, ports: dict[str, int]) -> str:
    for demo_port, port in ports.items():
        text = re.sub(rf"\b{demo_port}\b", str(port), text)
    return text


@dataclass
class Demo:
    root: Path
    ports: dict[str, int]  # demo port -> the free one used instead
    proc: subprocess.Popen[str]
    lines: list[str]

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['8080']}"

    def rewrite(self, text: str) -> str:
        """`text` with the demo's ports replaced by the free ones."""
        return _with_ports(text, self.ports)

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.api + path,
            headers={"Authorization": "Basic " + b64encode(b"admin:admin").decode()},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def output(self) -> str:
        """The last lines of the demo's log, access lines left out."""
        return "".join([line for line in self.lines if "aiohttp.access" not in line][-40:])


def _wait_line(demo: Demo, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in list(demo.lines)):
            return
        if demo.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"the demo never printed {text!r}:\n{demo.output()}")


@pytest.fixture
def demo(demo_config: DemoConfig) -> Iterator[Demo]:
    """The demo on free ports, started as `scripts/run` starts it."""
    root = demo_config.root
    config = demo_config.path.read_text(encoding="utf-8")
    for demo_port in DEMO_PORTS:
        assert re.search(rf"\b{demo_port}\b", config), f"the demo no longer uses {demo_port}"
    ports = dict(zip(DEMO_PORTS, _free_ports(len(DEMO_PORTS)), strict=True))
    demo_config.path.write_text(_with_ports(config, ports), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "serve", "-c", "etc/gatewayd.yaml"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=daemon_env(), start_new_session=True,
    )  # fmt: skip
    demo = Demo(root, ports, proc, [])

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            demo.lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait_line(demo, "gatewayd ready")
        yield demo
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, demo.output()
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            reader.join(5)


# ----------------------------------------------------------------- running commands


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    http: list[int] = field(default_factory=list)  # the statuses curl reported

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


_HTTP = re.compile(r"^__http (\d{3})$", re.MULTILINE)


def _ran(returncode: int, stdout: str, stderr: str) -> Ran:
    return Ran(
        returncode, stdout, _HTTP.sub("", stderr).strip("\n"), list(map(int, _HTTP.findall(stderr)))
    )


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


class Shell:
    """One bash session, as in a terminal: each command runs in it, in order, so that
    variables, `export` and `. .venv/bin/activate` carry over to the next."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.proc = subprocess.Popen(
            ["bash", "--norc", "--noprofile"], cwd=cwd, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._seen = b""

    def run(self, command: str, stdin: Path | None = None) -> Ran:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        marker = f"__done {self.count} "
        source = shlex.quote(str(stdin)) if stdin is not None else "/dev/null"
        script = (
            f"{{\n{command}\n}} >{shlex.quote(str(out))} 2>{shlex.quote(str(err))} <{source}\n"
            f'echo "{marker}$?"\n'
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + TIMEOUT
        while (found := re.search(rf"{marker}(\d+)\n".encode(), self._seen)) is None:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, left))
            if not ready:
                so_far = _ran(-1, _text(out), _text(err))
                raise AssertionError(f"still running after {TIMEOUT:g} s: {command}\n{so_far}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the shell exited during: {command}")
            self._seen += chunk
        self._seen = self._seen[found.end() :]
        return _ran(int(found.group(1)), _text(out), _text(err))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def in_terminal(
    command: str, cwd: Path, env: dict[str, str], answers: list[tuple[str, str]]
) -> Ran:
    """Run `command` on a terminal of its own, answering each prompt in turn."""
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-c", command], cwd=cwd, env=env,
        stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    screen, answered = b"", 0
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            if answers and answers[0][0].encode() in screen[answered:]:
                os.write(main, answers.pop(0)[1].encode() + b"\n")
                answered = len(screen)
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the program ended and closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
        returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    assert not answers, f"never asked {answers[0][0]!r}:\n{screen.decode(errors='replace')}"
    return Ran(returncode, screen.decode(errors="replace").replace("\r\n", "\n"), "")


def normalized(command: str) -> str:
    """A command on one line, its spaces collapsed: the key of the tables below."""
    return " ".join(command.replace("\\\n", " ").split())


# -------------------------------------------------------------------- expectations


@dataclass
class Reader:
    """What a reader of the README has around the demo: files, and what they saw."""

    demo: Demo
    notes: dict[str, Any] = field(default_factory=dict)

    def path(self, relative: str) -> Path:
        return self.demo.root / relative

    def wait_status(self, transfer_id: int, status: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            transfer = self.demo.get(f"/api/transfers/{transfer_id}")
            if transfer["status"] == status or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert transfer["status"] == status, (transfer, self.demo.output())
        return transfer


Check = Callable[[Reader, Example, Ran], None]


def _same(reader: Reader, a: str, b: str) -> None:
    left, right = reader.path(a).read_bytes(), reader.path(b).read_bytes()
    assert left == right, f"{a} ({len(left)} bytes) differs from {b} ({len(right)} bytes)"


def _uploaded(reader: Reader, example: Example, ran: Ran) -> None:
    """An upload of report.csv: DONE, in the account's folder, and archived by the rule."""
    transfer = reader.wait_status(json.loads(ran.stdout)["transferId"], "DONE")
    placed = Path(transfer["localFilepath"])
    assert placed.parent == reader.path("var/data/inbox/demo"), transfer
    assert placed.read_bytes() == reader.path("report.csv").read_bytes()
    archived = reader.path(f"var/data/archive/inbox/demo/{transfer['id']}_{placed.name}")
    assert archived.read_bytes() == placed.read_bytes()


def _lists_transfers(reader: Reader, example: Example, ran: Ran) -> None:
    listed = json.loads(ran.stdout)["transfers"]
    assert [t["status"] for t in listed] == ["DONE"], listed


def _both_sides_done(reader: Reader, client_id: int, name: str) -> None:
    """The client transfer to `loopback` and the server transfer it made, as `relay`."""
    client = reader.wait_status(client_id, "DONE")
    assert (client["partner"], client["rule"], client["isSend"]) == ("loopback", "outbox", True)
    # HTTP carries no followID: the server transfer is the one `relay` started since.
    served = reader.demo.get("/api/transfers?account=relay&sort=id-&limit=50")["transfers"]
    mine = [t for t in served if t["id"] > client_id and t["srcFilename"] == name]
    assert len(mine) == 1, (client, served)
    server = reader.wait_status(mine[0]["id"], "DONE")
    assert (server["rule"], server["isServer"]) == ("inbox", True), server
    placed = Path(server["localFilepath"])
    assert placed.parent == reader.path("var/data/inbox/relay"), server
    assert placed.read_bytes() == reader.path("var/data/outbox/report.csv").read_bytes()


def _watched_to_done(name: str) -> Check:
    def check(reader: Reader, example: Example, ran: Ran) -> None:
        last = ran.stdout.strip().splitlines()[-1]
        done = re.fullmatch(r"transfer (\d+) DONE: .+, sha256 [0-9a-f]{64}", last)
        assert done, ran
        _both_sides_done(reader, int(done.group(1)), name)

    return check


def _posted_to_loopback(reader: Reader, example: Example, ran: Ran) -> None:
    created = json.loads(ran.stdout)
    assert created["status"] == "PLANNED", created
    _both_sides_done(reader, created["id"], "report.csv")


def _created(reader: Reader, example: Example, ran: Ran) -> None:
    match = re.fullmatch(r"transfer (\d+) created \(PLANNED\)\n", ran.stdout)
    assert match, ran
    reader.notes["created"] = int(match.group(1))


def _latest_is_the_created(reader: Reader, example: Example, ran: Ran) -> None:
    header, row, footer = ran.stdout.strip().splitlines()
    assert header.split()[:2] == ["ID", "STATUS"] and footer.startswith("1 of ")
    assert row.split()[0] == str(reader.notes["created"]), ran


def _partial_big_upload(reader: Reader, example: Example) -> None:
    """What the README's HEAD example finds: an upload of big.iso cut after HELD bytes
    (sent here as one piece of a longer file, which the server keeps as unfinished)."""
    port = reader.demo.ports["8081"]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("PUT", "/inbox/big.iso")
    connection.putheader("Authorization", "Basic " + b64encode(b"demo:demo").decode())
    connection.putheader("Content-Range", f"bytes 0-{HELD - 1}/{BIG}")
    connection.putheader("Content-Length", str(HELD))
    connection.endheaders()
    with reader.path("big.iso").open("rb") as big:
        left = HELD
        while left:
            chunk = big.read(min(left, 1 << 20))
            connection.send(chunk)
            left -= len(chunk)
    answer = connection.getresponse()
    assert (answer.status, answer.getheader("Upload-Offset")) == (202, str(HELD)), answer.read()
    connection.close()


def _offset_held(reader: Reader, example: Example, ran: Ran) -> None:
    headers = [line.strip().lower() for line in ran.stdout.splitlines()]
    assert f"upload-offset: {HELD}" in headers, ran


def _big_resumed(reader: Reader, example: Example, ran: Ran) -> None:
    _same(reader, "var/data/inbox/demo/big.iso", "big.iso")


def _downloaded(reader: Reader, example: Example, ran: Ran) -> None:
    _same(reader, "report.csv", "var/data/outbox/report.csv")


def _cut_download(reader: Reader, example: Example) -> None:
    """What `curl -C -` resumes: a download cut half-way."""
    local = reader.path("report.csv")
    os.truncate(local, reader.path("var/data/outbox/report.csv").stat().st_size // 2)


def _resumed_download(reader: Reader, example: Example, ran: Ran) -> None:
    assert ran.http == [206], ran
    _downloaded(reader, example, ran)


def _count_uploads(reader: Reader, example: Example) -> None:
    reader.notes["sent"] = reader.path("report.csv").read_bytes()
    inbox = reader.path("var/data/inbox/demo")
    reader.notes["inbox"] = sorted(p.name for p in inbox.iterdir()) if inbox.is_dir() else []


def _sftp_session(reader: Reader, example: Example, ran: Ran) -> None:
    if not example.session:
        return  # a login, then `bye`
    inbox = reader.path("var/data/inbox/demo")
    new = sorted(set(p.name for p in inbox.iterdir()) - set(reader.notes["inbox"]))
    assert len(new) == 1 and (inbox / new[0]).read_bytes() == reader.notes["sent"], new
    offered = reader.path("var/data/outbox/report.csv").stat().st_size
    listed = [line.split() for line in ran.stdout.splitlines() if not line.startswith("sftp>")]
    assert any(w[-1:] == ["report.csv"] and str(offered) in w for w in listed), ran  # ls -l
    _downloaded(reader, example, ran)


def _sha256_over_ssh(reader: Reader, example: Example, ran: Ran) -> None:
    held = reader.path("var/data/inbox/demo/report.csv").read_bytes()
    assert ran.stdout.split() == [hashlib.sha256(held).hexdigest(), "inbox/report.csv"], ran


def _hash_of(password: str) -> Check:
    def check(reader: Reader, example: Example, ran: Ran) -> None:
        hashes = re.findall(r"\$argon2id\$\S+", ran.stdout)
        assert len(hashes) == 1 and verify_password(hashes[0], password), ran
        assert password not in ran.stdout

    return check


def _config_ok(reader: Reader, example: Example, ran: Ran) -> None:
    assert ran.stdout.startswith("etc/gatewayd.yaml: OK (2 servers, 1 partner, 2 accounts"), ran
    assert ran.stderr.count("demo secret in use") == 4, ran


STDIN = {"gatewayd hash-password --stdin": "correct horse battery staple\n"}
PROMPTS = {
    "gatewayd hash-password": [
        ("Password: ", "correct horse battery staple"),
        ("Repeat password: ", "correct horse battery staple"),
    ]
}
BEFORE: dict[str, Callable[[Reader, Example], None]] = {
    "sftp -P 2222 demo@127.0.0.1": _count_uploads,
    "curl -sI -u demo:demo http://127.0.0.1:8081/inbox/big.iso": _partial_big_upload,
    "curl -u demo:demo -C - -O http://127.0.0.1:8081/outbox/report.csv": _cut_download,
}
CHECKS: dict[str, Check] = {
    "curl -u demo:demo -T report.csv http://127.0.0.1:8081/inbox/": _uploaded,
    "curl -u demo:demo -H 'Waarp-Rule-Name: inbox' -T report.csv "
    "http://127.0.0.1:8081/report.csv": _uploaded,
    'curl -u demo:demo -H "Repr-Digest: sha-256=:$(openssl dgst -sha256 -binary report.csv '
    '| base64):" -T report.csv http://127.0.0.1:8081/inbox/': _uploaded,
    "curl -u admin:admin http://127.0.0.1:8080/api/transfers": _lists_transfers,
    "gatewayd transfer add -r outbox -p loopback -f report.csv --watch": _watched_to_done(
        "report.csv"
    ),
    "gatewayd hash-password": _hash_of("correct horse battery staple"),
    "gatewayd hash-password --stdin": _hash_of("correct horse battery staple"),
    "sftp -P 2222 demo@127.0.0.1": _sftp_session,
    "ssh -p 2222 demo@127.0.0.1 sha256sum inbox/report.csv": _sha256_over_ssh,
    "curl -sI -u demo:demo http://127.0.0.1:8081/inbox/big.iso": _offset_held,
    "curl -u demo:demo -C 73400320 -T big.iso http://127.0.0.1:8081/inbox/big.iso": _big_resumed,
    "curl -u demo:demo -O http://127.0.0.1:8081/outbox/report.csv": _downloaded,
    "curl -u demo:demo -C - -O http://127.0.0.1:8081/outbox/report.csv": _resumed_download,
    'curl -u admin:admin -H \'Content-Type: application/json\' -d \'{"rule": "outbox", '
    '"partner": "loopback", "file": "report.csv"}\' '
    "http://127.0.0.1:8080/api/transfers": _posted_to_loopback,
    "gatewayd transfer add -r outbox -p loopback -f report.csv -i order=42": _created,
    "gatewayd transfer list --partner loopback --sort id- --limit 1": _latest_is_the_created,
    "gatewayd transfer add -r outbox -p loopback -f report.csv -o copy.csv --watch": (
        _watched_to_done("copy.csv")
    ),
    "gatewayd check-config -c /etc/gatewayd/gatewayd.yaml": _config_ok,
}


def _expected_statuses(example: Example) -> Callable[[int], bool]:
    """The HTTP status the README's comment names (`# 201, ...`), else any 2xx."""
    named = re.search(r"\b([1-5]\d\d)\b", example.comment)
    if named:
        return lambda status: status == int(named.group(1))
    return lambda status: 200 <= status < 300


# ------------------------------------------------------------------------- the test


SSH_OPTIONS = (
    "-F /dev/null -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={known_hosts} "
    "-o PreferredAuthentications=password -o PubkeyAuthentication=no "
    "-o NumberOfPasswordPrompts=1 -o LogLevel=ERROR"
)


def _prepare(root: Path, scratch: Path) -> dict[str, str]:
    """The reader's files and the session's environment."""
    make_file(root / "report.csv", 200_000, seed=11)  # what the reader sends
    make_file(root / "var" / "data" / "outbox" / "report.csv", 300_000, seed=12)  # and offers
    make_file(root / "big.iso", BIG, seed=13)
    venv = Path(sys.prefix)
    if (venv / "bin" / "activate").is_file() and (venv / "bin" / "gatewayd").is_file():
        (root / ".venv").symlink_to(venv)  # the checkout's .venv, made by scripts/setup
    else:  # a Python without the console script: a .venv that stands for it
        bin_dir = root / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
        (bin_dir / "gatewayd").write_text(f'#!/bin/sh\nexec {sys.executable} -m gatewayd "$@"\n')
        (bin_dir / "gatewayd").chmod(0o755)
    (scratch / "curl").mkdir()
    (scratch / "curl" / ".curlrc").write_text('write-out = "%{stderr}__http %{http_code}\\n"\n')
    env = {k: v for k, v in daemon_env().items() if not k.startswith("GATEWAYD_")}
    # Only the README's `. .venv/bin/activate` puts gatewayd on the PATH.
    env["PATH"] = os.pathsep.join(
        d for d in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if not (Path(d) / "gatewayd").exists()
    )  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    env.update(CURL_HOME=str(scratch / "curl"), XDG_CONFIG_HOME=str(scratch / "xdg"))
    return env


def test_every_readme_example_runs_against_the_demo(demo: Demo, tmp_path: Path) -> None:
    examples = readme_examples(README.read_text(encoding="utf-8"))
    keys = {normalized(e.command) for e in examples}
    for table in (SKIPPED, STDIN, PROMPTS, BEFORE, CHECKS):
        stale = set(table) - keys
        assert not stale, f"no README example is {stale}: update the test's tables"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = _prepare(demo.root, scratch)
    env["GATEWAYD_API_URL"] = demo.api  # the CLI's default address names port 8080
    shell = Shell(demo.root, env, scratch)
    reader = Reader(demo)
    passwords: dict[str, str] = {}
    ssh_options = SSH_OPTIONS.format(known_hosts=scratch / "known_hosts")
    skipped: list[str] = []
    try:
        for number, example in enumerate(examples):
            key = normalized(example.command)
            if key in SKIPPED:
                skipped.append(key)
                continue
            command = demo.rewrite(example.command).replace(
                "/etc/gatewayd/gatewayd.yaml", "etc/gatewayd.yaml"
            )
            words = command.split()
            login = re.search(r"\b(\w+)@127\.0\.0\.1\b", command)
            if words[0] == "sftp":
                said = re.search(r"password: (\S+)", example.comment)
                assert said and login, f"{example}: which password?"
                passwords[login.group(1)] = said.group(1)
                batch = scratch / f"batch-{number}"
                batch.write_text("".join(f"{line}\n" for line in example.session))
                command = (
                    f"sshpass -p {shlex.quote(said.group(1))} sftp {ssh_options} "
                    f"-o BatchMode=no -b {batch} {command.removeprefix('sftp ')}"
                )
            elif words[0] == "ssh":
                assert login and login.group(1) in passwords, f"{example}: which password?"
                password = shlex.quote(passwords[login.group(1)])
                command = f"sshpass -p {password} ssh {ssh_options} {command[4:]}"
            if key in BEFORE:
                BEFORE[key](reader, example)
            if key in PROMPTS:
                terminal_env = {**env, "PATH": f"{demo.root}/.venv/bin:{env['PATH']}"}
                ran = in_terminal(command, demo.root, terminal_env, list(PROMPTS[key]))
            else:
                stdin = None
                if key in STDIN:
                    stdin = scratch / f"stdin-{number}"
                    stdin.write_text(STDIN[key])
                try:
                    ran = shell.run(command, stdin)
                except AssertionError as exc:
                    raise AssertionError(
                        f"{example}\n{exc}\n--- the demo\n{demo.output()}"
                    ) from None
            context = f"{example}\n{ran}\n--- the demo's last lines\n{demo.output()}"
            assert ran.returncode == 0, context
            assert "Traceback" not in ran.stdout + ran.stderr, context
            if "curl " in command:
                expected = _expected_statuses(example)
                assert ran.http and all(map(expected, ran.http)), context
            if key in CHECKS:
                try:
                    CHECKS[key](reader, example, ran)
                except AssertionError as exc:
                    raise AssertionError(f"{context}\n--- check\n{exc}") from None
    finally:
        shell.close()
    assert sorted(skipped) == sorted(SKIPPED), skipped
    assert "admin:admin" not in "".join(demo.lines) and "relay:relay" not in "".join(demo.lines)
