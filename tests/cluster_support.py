"""Several real `gatewayd serve` nodes on one PostgreSQL database, sharing one data
folder and one rules folder (each with its own state folder: its lock, its keys), and
a receiving gatewayd on SQLite that stands for a partner (its HTTP server's own rows
say what it received, and when). Used by tests/test_cluster_control.py and
scripts/soak_cluster.py."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.api_support import ALL, PASSWORD, basic, password_hash
from tests.daemon_proc import DaemonProcess

HEADERS = {"Authorization": basic("admin")}


def port_of(daemon: DaemonProcess, event: str, server: str | None = None) -> int:
    for line in daemon.lines:
        if f'"{event}"' in line:
            entry = json.loads(line)
            if server is None or entry.get("server") == server:
                return int(entry["port"])
    raise AssertionError(f"no {event} line for {server}:\n{daemon.output}")


@dataclass
class Node:
    name: str
    daemon: DaemonProcess
    api: str

    def log_events(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.daemon.lines:
            if f'"{event}"' in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found


@dataclass
class Receiver:
    """A gatewayd on SQLite with an HTTP server: the partner `recv` of the nodes."""

    daemon: DaemonProcess
    root: Path
    port: int

    @property
    def inbox(self) -> Path:
        return self.root / "data" / "inbox" / "relay"

    def rows(self) -> list[dict[str, Any]]:
        db = self.root / "var" / "gatewayd.db"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY id")]


def max_overlap(intervals: list[tuple[str, str]]) -> int:
    """The most intervals (start, stop: the codec's UTC text) open at one moment."""
    events = []
    for start, stop in intervals:
        events.append((datetime.fromisoformat(start), 1))
        events.append((datetime.fromisoformat(stop), -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same time
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@dataclass
class Cluster:
    root: Path
    dsn: str
    partners: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    daemon_extra: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"attempts": 0})
    nodes: dict[str, Node] = field(default_factory=dict)
    receiver: Receiver | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def share(self) -> Path:
        return self.root / "share"

    def write_rules(self) -> None:
        folder = self.root / "rules"
        folder.mkdir(parents=True, exist_ok=True)
        for name, rule in self.rules.items():
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(rule))

    def config(self, name: str) -> Path:
        self.share.mkdir(parents=True, exist_ok=True)
        config = {
            "daemon": {
                "home": str(self.root),
                "state_dir": f"state-{name}",
                "data_dir": "data",
                "rules_dir": "rules",
                "node": name,
                "progress_interval": 0.1,
                "shutdown_timeout": 5,
                **self.daemon_extra,
            },
            "database": {"backend": "postgresql", "dsn": self.dsn, "pool_size": 4},
            "logging": {"format": "json", "level": "info"},
            "scheduler": self.scheduler,
            "api": {
                "address": "127.0.0.1",
                "port": 0,
                "users": {"admin": {"password": password_hash(), "permissions": ALL}},
            },
            "servers": {},
            "partners": self.partners,
            "accounts": {},
        }
        path = self.root / "etc" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    async def start(self, *names: str) -> list[Node]:
        """Start the nodes at once; return once every one is ready."""
        self.write_rules()
        daemons = [await DaemonProcess.start(self.config(n)) for n in names]
        started = []
        for name, daemon in zip(names, daemons, strict=True):
            await daemon.wait_for("gatewayd ready", timeout=60)
            node = Node(name, daemon, f"http://127.0.0.1:{port_of(daemon, 'api listening')}")
            self.nodes[name] = node
            started.append(node)
        return started

    async def start_receiver(self, rate: int = 0) -> Receiver:
        """The partner `recv` (HTTP, account `relay`), its uploads unlimited."""
        root = self.root / "recv"
        (root / "rules").mkdir(parents=True, exist_ok=True)
        rule = {
            "name": "inbox",
            "direction": "receive",
            "path": "/inbox",
            "on_collision": "rename",
            "allow": {"accounts": ["relay"]},
        }
        (root / "rules" / "inbox.yaml").write_text(yaml.safe_dump(rule))
        config = {
            "daemon": {"home": str(root), "state_dir": "state", "data_dir": "data"},
            "logging": {"format": "json", "level": "info"},
            "api": {"enabled": False},
            "servers": {
                "http": {
                    "protocol": "http",
                    "address": "127.0.0.1",
                    "port": 0,
                    "max_uploads_per_account": 0,
                }
            },
            "partners": {},
            "accounts": {"relay": {"password": password_hash()}},
        }
        path = root / "etc" / "gatewayd.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon = await DaemonProcess.start(path)
        await daemon.wait_for("gatewayd ready", timeout=60)
        self.receiver = Receiver(daemon, root, port_of(daemon, "server listening", "http"))
        self.partners["recv"] = {
            "protocol": "http",
            "address": "127.0.0.1",
            "port": self.receiver.port,
            "base_path": "/inbox",
            "login": "relay",
            "password": PASSWORD,
            "max_rate": rate,
        }
        return self.receiver

    async def stop(self) -> dict[str, int]:
        """Stop every daemon (SIGTERM, at once); their exit statuses."""
        daemons = {n.name: n.daemon for n in self.nodes.values()}
        if self.receiver is not None:
            daemons["recv"] = self.receiver.daemon
        codes = await asyncio.gather(*(d.stop() for d in daemons.values()))
        return dict(zip(daemons, codes, strict=True))

    def output(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.daemon.output[-6000:]}" for n in self.nodes.values())


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any, float]:
    """(status, JSON body, seconds) of one API call."""
    began = time.monotonic()
    async with session.request(method, url, json=body, headers=HEADERS) as answer:
        text = await answer.text()
        status = answer.status
    seconds = time.monotonic() - began
    try:
        return status, json.loads(text), seconds
    except ValueError:
        return status, text, seconds
