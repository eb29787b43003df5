"""A real gateway in a temp folder, for pipeline tests: config and rules written as
YAML, loaded by the real loader, a real SQLite store, a manual clock, pipeline hooks."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gatewayd.clock import ManualClock
from gatewayd.config import ensure_folders, load_config
from gatewayd.gateway import Gateway
from gatewayd.model import Status, Transfer
from gatewayd.pipeline.engine import Hooks
from gatewayd.pipeline.server import CoreServerContext
from gatewayd.store import make_store

FINAL = (Status.DONE, Status.ERROR, Status.CANCELLED, Status.PAUSED, Status.INTERRUPTED)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_file(path: Path, size: int, seed: int = 1) -> bytes:
    """A file of `size` pseudo-random bytes (different per seed), returned too."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    data = (block * (size // len(block) + 1))[:size]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


class GatewayEnv:
    """Builds the files of a gateway under `root` and runs it in this event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.share = root / "share"  # the `local` partner's folder
        self.share.mkdir(parents=True, exist_ok=True)
        self.out = root / "out"  # where test tasks leave traces
        self.out.mkdir(exist_ok=True)
        self.config_file = root / "etc" / "gatewayd.yaml"
        self.daemon: dict[str, Any] = {
            "home": "..",
            "progress_interval": 0.001,
            "temp_rename_timeout": 30,
            "exec_timeout": 10,
        }
        self.partners: dict[str, Any] = {"share": {"protocol": "local", "root": str(self.share)}}
        self.accounts: dict[str, Any] = {}
        self.rules: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}  # more top-level sections (logging, ...)
        self.clock = ManualClock()
        self.hooks = Hooks()
        self.gateway: Gateway | None = None

    def rule(self, name: str, direction: str, **fields: Any) -> None:
        rule = {"name": name, "direction": direction, "path": f"/{name}", "allow": "all"}
        rule.update(fields)
        self.rules[name] = rule

    def write(self) -> None:
        config = {
            "daemon": self.daemon,
            "scheduler": {"attempts": 0},
            "partners": self.partners,
            "accounts": self.accounts,
            "api": {"port": 0},  # tests never take a fixed port
            **self.extra,
        }
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(config))
        rules_dir = self.root / "rules"
        rules_dir.mkdir(exist_ok=True)
        for old in rules_dir.glob("*.yaml"):
            old.unlink()
        for name, rule in self.rules.items():
            (rules_dir / f"{name}.yaml").write_text(yaml.safe_dump(rule))

    def load(self) -> Any:
        self.write()
        loaded = load_config(self.config_file)
        ensure_folders(loaded)
        return loaded

    async def start(self) -> Gateway:
        loaded = self.load()
        store = make_store(loaded.config.database, loaded.paths.database)
        await store.open()
        self.gateway = Gateway(loaded, store, clock=self.clock, hooks=self.hooks)
        await self.gateway.start()
        return self.gateway

    async def plan(self, request: dict[str, Any]) -> Transfer:
        """A client transfer created through the real transfer service with nothing
        running (for tests that then start `gatewayd serve` on these files)."""
        loaded = self.load()
        store = make_store(loaded.config.database, loaded.paths.database)
        await store.open()
        try:
            return await Gateway(loaded, store).service.create({"nbOfAttempts": 0, **request})
        finally:
            await store.close()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop(5)
            await self.gateway.store.close()
            self.gateway = None

    @property
    def gw(self) -> Gateway:
        assert self.gateway is not None, "gateway not started"
        return self.gateway

    def server(self, name: str = "test") -> CoreServerContext:
        return self.gw.server_context(name, "test")

    def folder(self, rule: str) -> Path:
        return self.gw.loaded.paths.rule_folder(self.gw.loaded.config.rules[rule])

    async def create(self, **request: Any) -> Transfer:
        request.setdefault("nbOfAttempts", 0)
        return await self.gw.service.create(request)

    async def row(self, transfer_id: int) -> Transfer:
        row = await self.gw.store.get_transfer(transfer_id)
        assert row is not None, f"transfer {transfer_id} is gone"
        return row

    async def wait_for(
        self, transfer_id: int, check: Callable[[Transfer], bool], what: str, timeout: float = 15
    ) -> Transfer:
        """Wait (bounded) until the row satisfies `check`; the scheduler's state changes
        and the store's commits are the events, no fixed sleep."""
        async with asyncio.timeout(timeout):
            while True:
                row = await self.row(transfer_id)
                if check(row):
                    return row
                await asyncio.sleep(0.005)
        raise AssertionError(f"transfer {transfer_id} never became {what}")

    async def wait_end(self, transfer_id: int, timeout: float = 15) -> Transfer:
        try:
            return await self.wait_for(transfer_id, lambda t: t.status in FINAL, "final", timeout)
        except TimeoutError:
            row = await self.row(transfer_id)
            raise AssertionError(
                f"transfer {transfer_id} still {row.status} at {row.step} after {timeout}s"
            ) from None


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def exec_task(script: str, *args: str) -> dict[str, Any]:
    """An EXEC task running `/bin/sh -c script` (markers substituted in args)."""
    return {"type": "EXEC", "args": {"path": "/bin/sh", "args": ["-c", script, "sh", *args]}}


def trace_task(out: Path, label: str) -> dict[str, Any]:
    """An EXEC task appending `label` and the transfer's file to out/trace."""
    return exec_task(f'echo "{label} $1" >> {out}/trace', "#TRUEFILENAME#")


def environ_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
