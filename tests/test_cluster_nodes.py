"""Several real `gatewayd serve` nodes on one private PostgreSQL database and one data
folder: one daemon per node name, one data folder for all, and the takeover of a node
killed by SIGKILL: its client send resumes on the other node from the recorded offset,
its partners' SFTP and HTTP uploads are resumed on the other node (`reput`, `HEAD` then
`curl -C`), each the same transfer, byte-identical. The lease is 2 s."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.daemon_proc import DaemonProcess, daemon_env
from tests.gateway_env import exec_task, lines, make_file
from tests.http_support import PASSWORD, password_hash, run_curl
from tests.pg_support import pg_raw
from tests.sftp_peers import SftpSession, keygen, need, sftp

pytestmark = pytest.mark.timeout(120)
LEASE = 2.0
MiB = 1 << 20
ADMIN = ("admin", PASSWORD)


@dataclass
class Node:
    name: str
    daemon: DaemonProcess
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"


@dataclass
class Cluster:
    """The files of a few nodes under `root`: one rules folder, one data folder, a
    `local` partner `share` (throttled), an account `acme` (key and password)."""

    root: Path
    dsn: str
    rate: int = 4 * MiB
    lease: float = LEASE
    max_transfers: int = 20
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.share = self.root / "share"
        self.share.mkdir(parents=True)
        rules = self.root / "rules"
        rules.mkdir()
        for name, direction in (("out", "send"), ("inbox", "receive")):
            rule = {"name": name, "direction": direction, "path": f"/{name}", "allow": "all"}
            (rules / f"{name}.yaml").write_text(yaml.safe_dump(rule))
        # Uploads whose post task takes a while: a kill finds them with their data in.
        self.out = self.root / "out"
        self.out.mkdir()
        slow = {"name": "slowpost", "direction": "receive", "path": "/slowpost", "allow": "all"}
        slow["post"] = [exec_task(f'sleep 4; echo "post $1" >> {self.out}/trace', "#TRUEFILENAME#")]
        (rules / "slowpost.yaml").write_text(yaml.safe_dump(slow))
        # A rule whose folder is not in the data folder: the markers do not cover it.
        ext = {"name": "ext", "direction": "send", "path": "/ext", "allow": "all"}
        ext["folder"] = str(self.root / "ext")
        (rules / "ext.yaml").write_text(yaml.safe_dump(ext))
        self.key = self.root / "keys" / "acme"
        self.public_key = keygen(self.key)
        # One host key for every node: a partner that reconnects to another node sees
        # the same server.
        self.host_key = self.root / "keys" / "host"
        keygen(self.host_key)

    def config(self, node: str, *, data_dir: Path | None = None, state: str | None = None) -> Path:
        config = {
            "daemon": {
                "home": str(self.root),
                "node": node,
                "lease": self.lease,
                "state_dir": str(self.root / (state or node) / "var"),
                "data_dir": str(data_dir or self.data),
                "rules_dir": str(self.root / "rules"),
                "progress_interval": 0.1,
                "shutdown_timeout": 5,
            },
            "database": {"backend": "postgresql", "dsn": self.dsn, "pool_size": 4},
            "scheduler": {
                "attempts": 0,
                "max_transfers": self.max_transfers,
                "max_per_partner": self.max_transfers,
            },
            "logging": {"format": "json"},
            "partners": {
                "share": {"protocol": "local", "root": str(self.share), "max_rate": self.rate}
            },
            "accounts": {"acme": {"password": password_hash(), "public_keys": [self.public_key]}},
            "servers": {
                "sftp": {
                    "protocol": "sftp",
                    "address": "127.0.0.1",
                    "port": 0,
                    "host_keys": [str(self.host_key)],
                },
                "http": {"protocol": "http", "address": "127.0.0.1", "port": 0},
            },
            "api": {
                "port": 0,
                "users": {ADMIN[0]: {"password": password_hash(), "permissions": _all()}},
            },
        }
        path = self.root / "etc" / f"{node}-{state or node}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        return path

    async def start(self, name: str, **kw: Any) -> Node:
        node = Node(name, await DaemonProcess.start(self.config(name, **kw)))
        self.nodes.append(node)
        await node.daemon.wait_for("gatewayd ready")
        for line in node.daemon.lines:
            if '"server listening"' in line:
                entry = json.loads(line)
                node.ports[entry["server"]] = int(entry["port"])
            elif '"api listening"' in line:
                node.ports["api"] = int(json.loads(line)["port"])
        return node

    async def refused(self, name: str, **kw: Any) -> DaemonProcess:
        daemon = await DaemonProcess.start(self.config(name, **kw))
        assert await daemon.finish(60) == 1, daemon.output
        assert "gatewayd ready" not in daemon.output
        assert "Traceback" not in daemon.output, daemon.output
        return daemon

    async def close(self) -> None:
        for node in self.nodes:
            if node.daemon.proc.returncode is None:
                await node.daemon.kill()


def _all() -> dict[str, str]:
    areas = ("transfers", "servers", "partners", "rules", "users", "administration")
    return dict.fromkeys(areas, "rwd")


def _auth() -> dict[str, str]:
    token = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def api_get(node: Node, path: str) -> Any:
    async with (
        aiohttp.ClientSession(headers=_auth()) as session,
        session.get(node.api + path) as answer,
    ):
        assert answer.status == 200, await answer.text()
        return await answer.json()


async def row(dsn: str, transfer_id: int) -> dict[str, Any]:
    [found] = await pg_raw(dsn, "SELECT * FROM transfers WHERE id = $1", transfer_id)
    return dict(found)


async def wait_row(
    dsn: str, transfer_id: int, check: Any, what: str, timeout: float = 40
) -> dict[str, Any]:
    """Poll the shared database (bounded): the nodes are other processes, their
    commits the only events to wait on."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                rows = await pg_raw(dsn, "SELECT * FROM transfers WHERE id = $1", transfer_id)
                if rows and check(found := dict(rows[0])):
                    return found
                await asyncio.sleep(0.02)
    except TimeoutError:
        last = await pg_raw(dsn, "SELECT * FROM transfers WHERE id = $1", transfer_id)
        raise AssertionError(f"transfer {transfer_id} never {what}: {last}") from None


@pytest.fixture
async def cluster(tmp_path: Path, pg_database: str) -> Any:
    c = Cluster(tmp_path, pg_database)
    try:
        yield c
    finally:
        await c.close()


async def test_one_daemon_per_node_name_and_one_data_folder(cluster: Cluster) -> None:
    a = await cluster.start("gw-a")
    # Another state folder, so that only the database can tell it is a second gw-a.
    twin = await cluster.refused("gw-a", state="twin")
    [line] = [x for x in twin.lines if "cannot start" in x]
    assert "another gatewayd runs as node 'gw-a'" in line, line
    assert f"pid {a.daemon.proc.pid}" in line and os.uname().nodename in line, line

    # A node that shares a's state folder (its lock file is its own) but not its data
    # folder: the marker a wrote is missing there.
    other = cluster.root / "elsewhere"
    alien = await cluster.refused("gw-c", data_dir=other, state="gw-a")
    [line] = [x for x in alien.lines if "cannot start" in x]
    assert "node gw-c does not see the data folder of node gw-a" in line, line
    assert str(other / ".gatewayd-nodes" / "gw-a") in line and "is missing" in line, line
    assert not (other / ".gatewayd-nodes" / "gw-c").exists(), "its marker is taken back"

    [line] = [x for x in a.daemon.lines if "rule folders outside the data folder" in x]
    assert json.loads(line)["rules"] == "ext", line

    about = await api_get(a, "/api/about")
    nodes = {n["name"]: n for n in about["nodes"]}
    assert about["node"] == "gw-a" and set(nodes) == {"gw-a", "gw-c"}
    assert (
        nodes["gw-a"]["alive"]
        and nodes["gw-a"]["this"]
        and nodes["gw-a"]["pid"] == (a.daemon.proc.pid)
    )
    assert not nodes["gw-c"]["alive"] and nodes["gw-c"]["stopped"], "refused: recorded stopped"
    assert await a.daemon.stop() == 0, a.daemon.output
    [(stopped,)] = await pg_raw(cluster.dsn, "SELECT stopped FROM nodes WHERE name = 'gw-a'")
    assert stopped is not None, "a clean stop is recorded: nobody takes it over"


async def test_kill_9_mid_send_the_other_node_takes_over_and_resumes(cluster: Cluster) -> None:
    data = make_file(cluster.data / "out" / "big.bin", 10 * MiB + 7)
    a = await cluster.start("gw-a")
    b = await cluster.start("gw-b")
    async with (
        aiohttp.ClientSession(headers=_auth()) as session,
        session.post(
            f"{a.api}/api/transfers", json={"rule": "out", "partner": "share", "file": "big.bin"}
        ) as answer,
    ):
        assert answer.status == 201, await answer.text()
        transfer_id = (await answer.json())["id"]
    running = await wait_row(
        cluster.dsn,
        transfer_id,
        lambda r: r["status"] == "RUNNING" and r["progress"] > 0,
        "made progress",
    )
    owner = {"gw-a": a, "gw-b": b}[running["owner"]]
    survivor = b if owner is a else a
    await owner.daemon.kill()
    killed = time.monotonic()
    at_kill = await row(cluster.dsn, transfer_id)
    recorded = at_kill["progress"]
    assert at_kill["status"] == "RUNNING" and at_kill["step"] == "DATA"
    assert 0 < recorded < len(data)

    taken = await wait_row(
        cluster.dsn, transfer_id, lambda r: r["taken_over_by"] is not None, "taken over"
    )
    took = time.monotonic() - killed
    assert taken["taken_over_by"] == survivor.name and taken["taken_over_at"]
    resumed = json.loads(await survivor.daemon.wait_for('"data starts"', timeout=20))
    assert resumed["transfer_id"] == transfer_id and resumed["offset"] == recorded
    done = await wait_row(
        cluster.dsn, transfer_id, lambda r: r["status"] in ("DONE", "ERROR"), "ended"
    )
    finished = time.monotonic() - killed
    assert done["status"] == "DONE", done["error_msg"]
    assert (done["owner"], done["taken_over_by"]) == (survivor.name, survivor.name)
    assert (cluster.share / "big.bin").read_bytes() == data
    assert not (cluster.share / "big.bin.part").exists()
    [line] = [x for x in survivor.daemon.lines if '"node taken over"' in x]
    entry = json.loads(line)
    assert (entry["dead"], entry["by"], entry["transfers"]) == (owner.name, survivor.name, 1)
    assert entry["silent_for"] >= LEASE
    print(
        f"\nlease {LEASE}s: kill -9 -> takeover {took:.2f}s, -> DONE {finished:.2f}s "
        f"(resumed at {recorded} of {len(data)} bytes)"
    )

    shown = await api_get(survivor, f"/api/transfers/{transfer_id}")
    assert (shown["node"], shown["takenOverBy"]) == (survivor.name, survivor.name)
    assert shown["takenOverAt"] and shown["status"] == "DONE"
    about = await api_get(survivor, "/api/about")
    nodes = {n["name"]: n for n in about["nodes"]}
    assert set(nodes) == {"gw-a", "gw-b"}
    dead, alive = nodes[owner.name], nodes[survivor.name]
    assert not dead["alive"] and dead["takenOverBy"] == survivor.name and dead["takenOverAt"]
    assert dead["running"] == 0 and alive["alive"] and alive["this"] and not dead["this"]
    status = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gatewayd", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **daemon_env(),
            "GATEWAYD_API_URL": survivor.api,
            "GATEWAYD_API_USER": ADMIN[0],
            "GATEWAYD_API_PASSWORD": ADMIN[1],
        },
    )
    assert status.returncode == 0, status.stderr
    assert f"taken over by {survivor.name}" in status.stdout, status.stdout
    assert "alive, this node" in status.stdout, status.stdout
    assert await survivor.daemon.stop() == 0, survivor.daemon.output


async def test_partners_resume_their_uploads_on_the_other_node(cluster: Cluster) -> None:
    need("sftp")
    local = cluster.root / "local"
    by_sftp = make_file(local / "s.bin", 4 * MiB + 11, seed=5)
    by_http = make_file(local / "h.bin", 4 * MiB + 13, seed=6)
    a = await cluster.start("gw-a")
    b = await cluster.start("gw-b")
    # Same host key on both nodes: `reput` to b meets the server a was.
    scans = [
        await asyncio.to_thread(
            subprocess.run,
            ["ssh-keyscan", "-t", "ed25519", "-p", str(n.ports["sftp"]), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        for n in (a, b)
    ]
    keys = [s.stdout.split()[1:] for s in scans]
    assert keys[0] and keys[0] == keys[1], scans

    # About four seconds each (8 Mbit/s, 1 MB/s), cut by the kill.
    session = await SftpSession.start(
        a.ports["sftp"], "acme", cluster.key, [f"put {local}/s.bin /inbox/s.bin"],
        options=("-l", "8000"),
    )  # fmt: skip
    curl = asyncio.ensure_future(
        run_curl(
            "-u", f"acme:{PASSWORD}", "--limit-rate", "1M", "-T", str(local / "h.bin"),
            f"http://127.0.0.1:{a.ports['http']}/inbox/h.bin",
        )
    )  # fmt: skip
    # Its data all in, its post task running when the node dies: the other node
    # finishes it alone.
    small = make_file(local / "small.bin", 50_000, seed=7)
    finishing = asyncio.ensure_future(
        run_curl(
            "-u", f"acme:{PASSWORD}", "-T", str(local / "small.bin"),
            f"http://127.0.0.1:{a.ports['http']}/slowpost/small.bin",
        )
    )  # fmt: skip
    try:
        ids = {}
        async with asyncio.timeout(30):
            while len(ids) < 3:
                found = await pg_raw(
                    cluster.dsn,
                    "SELECT id, dest_filename FROM transfers WHERE status = 'RUNNING' "
                    "AND (progress > 0 AND step = 'DATA' OR step = 'POST TASKS')",
                )
                ids = {r["dest_filename"]: r["id"] for r in found}
                await asyncio.sleep(0.02)
        # While a runs them, b refuses to resume them: they are being uploaded.
        busy = await run_curl(
            "-u", f"acme:{PASSWORD}", "-C", "100", "-T", str(local / "h.bin"),
            f"http://127.0.0.1:{b.ports['http']}/inbox/h.bin",
        )  # fmt: skip
        assert busy.status == 409 and b"already being uploaded" in busy.body, busy
        busy_sftp = await sftp(
            b.ports["sftp"], "acme", [f"reput {local}/s.bin /inbox/s.bin"], key=cluster.key
        )
        assert busy_sftp.returncode != 0, busy_sftp.output
    finally:
        await a.daemon.kill()
    cut = await session.finish()
    assert cut.returncode != 0, cut.output
    assert (await curl).status != 201
    assert (await finishing).status != 201
    alone = await wait_row(
        cluster.dsn, ids.pop("small.bin"), lambda r: r["status"] in ("DONE", "ERROR"), "ended"
    )
    assert alone["status"] == "DONE", alone["error_msg"]
    assert (alone["owner"], alone["taken_over_by"]) == ("gw-b", "gw-b")
    assert (cluster.data / "slowpost" / "acme" / "small.bin").read_bytes() == small
    # b ran its post task again (a's EXEC was cut by the kill: tasks are at least once);
    # a's own EXEC runs in a session of its own and outlives the killed daemon, so it
    # may have written its line too.
    ran = [
        json.loads(x)
        for x in b.daemon.lines
        if '"task done"' in x and f'"transfer_id": {alone["id"]}' in x
    ]
    assert [r["step"] for r in ran] == ["POST TASKS"], ran
    assert "post small.bin" in lines(cluster.out / "trace")
    for name, transfer_id in ids.items():
        taken = await wait_row(
            cluster.dsn, transfer_id, lambda r: r["taken_over_by"] is not None, "taken over"
        )
        assert taken["status"] == "INTERRUPTED", "waits for its partner"
        assert taken["taken_over_by"] == "gw-b" and taken["progress"] > 0, name

    resumed = await sftp(
        b.ports["sftp"], "acme", [f"reput {local}/s.bin /inbox/s.bin"], key=cluster.key
    )
    resumed.ok()
    url = f"http://127.0.0.1:{b.ports['http']}/inbox/h.bin"
    head = await run_curl("-u", f"acme:{PASSWORD}", "-I", url)
    held = int(head.headers["upload-offset"])
    assert held == (await row(cluster.dsn, ids["h.bin"]))["progress"] > 0
    pushed = await run_curl(
        "-u", f"acme:{PASSWORD}", "-C", str(held), "-T", str(local / "h.bin"), url
    )
    assert pushed.status == 201, pushed

    inbox = cluster.data / "inbox" / "acme"
    for name, data in (("s.bin", by_sftp), ("h.bin", by_http)):
        done = await wait_row(
            cluster.dsn, ids[name], lambda r: r["status"] in ("DONE", "ERROR"), "ended"
        )
        assert done["status"] == "DONE", done["error_msg"]
        assert (done["owner"], done["taken_over_by"]) == ("gw-b", "gw-b")
        assert (inbox / name).read_bytes() == data
    assert sorted(p.name for p in inbox.iterdir()) == ["h.bin", "s.bin"], "no _1"
    [(count,)] = await pg_raw(cluster.dsn, "SELECT count(*) FROM transfers")
    assert count == 3, "the same transfers resumed, no new ones"
    assert await b.daemon.stop() == 0, b.daemon.output


async def post_send(node: Node, file: str) -> int:
    async with (
        aiohttp.ClientSession(headers=_auth()) as session,
        session.post(
            f"{node.api}/api/transfers", json={"rule": "out", "partner": "share", "file": file}
        ) as answer,
    ):
        assert answer.status == 201, await answer.text()
        return int((await answer.json())["id"])


async def test_a_node_frozen_past_its_lease_is_fenced(cluster: Cluster) -> None:
    """SIGSTOP (a frozen VM, a long pause) of the node running a send: the other takes
    it over and resumes it; thawed, the frozen node writes nothing and exits 3."""
    data = make_file(cluster.data / "out" / "big.bin", 10 * MiB + 3)
    a = await cluster.start("gw-a")
    b = await cluster.start("gw-b")
    transfer_id = await post_send(a, "big.bin")
    running = await wait_row(
        cluster.dsn,
        transfer_id,
        lambda r: r["status"] == "RUNNING" and r["progress"] > 0,
        "made progress",
    )
    frozen = {"gw-a": a, "gw-b": b}[running["owner"]]
    survivor = b if frozen is a else a
    os.kill(frozen.daemon.proc.pid, signal.SIGSTOP)
    try:
        await wait_row(
            cluster.dsn,
            transfer_id,
            lambda r: r["taken_over_by"] == survivor.name and r["owner"] == survivor.name,
            "taken over and resumed",
        )
    finally:
        os.kill(frozen.daemon.proc.pid, signal.SIGCONT)
    assert await frozen.daemon.finish(20) == 3, frozen.daemon.output
    [line] = [x for x in frozen.daemon.lines if "fenced:" in x]
    assert f"node {frozen.name} fenced" in line, line
    after = await row(cluster.dsn, transfer_id)
    assert after["owner"] == survivor.name, "the thawed node wrote nothing over it"
    done = await wait_row(
        cluster.dsn, transfer_id, lambda r: r["status"] in ("DONE", "ERROR"), "ended"
    )
    assert done["status"] == "DONE", done["error_msg"]
    assert done["owner"] == survivor.name
    assert (cluster.share / "big.bin").read_bytes() == data
    assert await survivor.daemon.stop() == 0, survivor.daemon.output


async def test_a_node_that_finds_itself_taken_over_exits_at_once(cluster: Cluster) -> None:
    a = await cluster.start("gw-a")
    # As a node that found it silent would have (while it was cut off, say).
    await pg_raw(
        cluster.dsn,
        "UPDATE nodes SET taken_over_by = 'gw-z', taken_over_at = '2030-01-01T00:00:00.000000Z' "
        "WHERE name = 'gw-a'",
    )
    assert await a.daemon.finish(20) == 3, a.daemon.output
    [line] = [x for x in a.daemon.lines if "fenced:" in x]
    assert "node gw-a fenced: it was taken over by node gw-z" in line, line
    assert "gatewayd stopped" not in a.daemon.output, "no graceful stop: it writes nothing"
