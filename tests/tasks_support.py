"""Helpers for the task tests: a real TaskContext on a fixed clock, a list-backed logger."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gatewayd.model import Transfer
from gatewayd.tasks import TaskContext, task_class

PARIS = ZoneInfo("Europe/Paris")
# 2024-03-05 14:07:09 UTC is 15:07:09 in Paris (CET, +01:00), a Tuesday.
FIXED_NOW = datetime(2024, 3, 5, 14, 7, 9, tzinfo=UTC)


class ListLogger:
    """Records every line; `on_line` is called with each message as it is logged."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self.on_line: Callable[[str], None] | None = None

    def _log(self, level: str, message: str, *args: Any, **_: Any) -> None:
        text = message % args if args else message
        self.records.append((level, text))
        if self.on_line is not None:
            self.on_line(text)

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("debug", message, *args, **kwargs)

    def info(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("info", message, *args, **kwargs)

    def warning(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("warning", message, *args, **kwargs)

    def error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log("error", message, *args, **kwargs)

    @property
    def messages(self) -> list[str]:
        return [text for _, text in self.records]


def make_transfer(**fields: Any) -> Transfer:
    values: dict[str, Any] = {
        "rule": "inbox",
        "is_server": True,
        "is_send": False,
        "requester": "alice",
        "requested": "gw-sftp",
        "protocol": "sftp",
        "id": 42,
        "account": "alice",
    }
    values.update(fields)
    return Transfer(**values)


def make_ctx(tmp_path: Path, transfer: Transfer | None = None, **fields: Any) -> TaskContext:
    """A context whose clock is FIXED_NOW, in Paris, with folders under `tmp_path`."""
    values: dict[str, Any] = {
        "transfer": transfer if transfer is not None else make_transfer(),
        "now": lambda: FIXED_NOW,
        "timezone": PARIS,
        "local_host": "gw-sftp",
        "in_path": str(tmp_path / "in"),
        "out_path": str(tmp_path / "out"),
        "work_path": str(tmp_path / "work"),
        "home_path": str(tmp_path),
        "log": ListLogger(),
    }
    values.update(fields)
    return TaskContext(**values)


def file_ctx(
    tmp_path: Path, name: str = "report.csv", content: bytes = b"a,b\n1,2\n"
) -> TaskContext:
    """A context whose transfer points at a new file `tmp_path/in/<name>`."""
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    transfer = make_transfer(local_filepath=str(path), filesize=len(content))
    return make_ctx(tmp_path, transfer)


async def run_task(type_name: str, args: dict[str, Any], ctx: TaskContext) -> None:
    cls = task_class(type_name)
    assert cls is not None, f"task type {type_name} is not registered"
    await cls(args).run(ctx)


def write_script(path: Path, body: str) -> Path:
    """An executable `#!/bin/sh` script."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary names left in `folder` (there should be none)."""
    return sorted(name for name in os.listdir(folder) if name.startswith("."))
