"""SETINFO."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.tasks import task_class
from gatewayd.tasks.markers import substitute
from tests.tasks_support import file_ctx, run_task


async def test_setinfo_substitutes_markers_in_key_and_value(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    await run_task("SETINFO", {"key": "received_#RULE#", "value": "#TRUEFILENAME#@#DATE#"}, ctx)
    assert ctx.transfer.transfer_info["received_inbox"] == "report.csv@20240305"
    # Readable back through #TI_<key>#.
    assert substitute("#TI_received_inbox#", ctx) == "report.csv@20240305"


async def test_setinfo_keeps_the_value_type(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    ctx.transfer.transfer_info["count"] = 1
    await run_task("SETINFO", {"key": "count", "value": 2}, ctx)
    await run_task("SETINFO", {"key": "meta", "value": {"by": "#REQUESTERHOST#", "n": [1]}}, ctx)
    assert ctx.transfer.transfer_info["count"] == 2
    assert ctx.transfer.transfer_info["meta"] == {"by": "alice", "n": [1]}
    # The value is not logged (transfer info may hold anything).
    assert not any("alice" in message for message in ctx.log.messages)


@pytest.mark.parametrize(
    ("args", "problems"),
    [
        ({"key": "k", "value": "v"}, []),
        ({"key": "k", "value": None}, []),
        ({"key": "k"}, ["missing argument 'value'"]),
        ({"key": "", "value": 1}, ["argument 'key' must be a non-empty string"]),
        ({"key": "k", "value": 1, "extra": 2}, ["unknown argument 'extra'"]),
    ],
)
def test_check_args(args: dict[str, object], problems: list[str]) -> None:
    cls = task_class("SETINFO")
    assert cls is not None
    assert cls.check_args(args) == problems
