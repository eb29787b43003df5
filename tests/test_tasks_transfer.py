"""TRANSFER: the request it builds and how it hands it to the transfer service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatewayd.errors import TaskError, TaskWarning, TransferError
from gatewayd.model import ErrorCode, Transfer
from gatewayd.requests import TransferRequest
from gatewayd.tasks import task_class
from gatewayd.tasks.base import TaskContext
from tests.tasks_support import file_ctx, make_transfer, run_task


class Creator:
    """A stand-in transfer service: records requests, returns a transfer that carries the
    parent's follow_id as the real service does."""

    def __init__(self, error: TransferError | None = None) -> None:
        self.calls: list[tuple[dict[str, Any], Transfer]] = []  # requests as the API says them
        self.error = error

    async def __call__(self, typed: TransferRequest, *, parent: Transfer) -> Transfer:
        request = typed.model_dump(by_alias=True, exclude_none=True)
        self.calls.append((request, parent))
        if self.error is not None:
            raise self.error
        return make_transfer(
            id=100 + len(self.calls),
            is_server=False,
            is_send=request["isSend"],
            partner=request["partner"],
            follow_id=parent.follow_id,
            parent_id=parent.id,
        )


def ctx_with(tmp_path: Path, creator: Creator | None) -> TaskContext:
    ctx = file_ctx(tmp_path)
    ctx.transfer.follow_id = "follow-123"
    ctx.transfer.transfer_info["client"] = "ACME"
    ctx.create_transfer = creator
    return ctx


async def test_forward_to_a_partner(tmp_path: Path) -> None:
    creator = Creator()
    ctx = ctx_with(tmp_path, creator)
    args = {
        "file": "#TRUEFULLPATH#",
        "to": "bank",
        "as": "acme-#TI_client#",
        "rule": "outbox",
        "info": {"origin": "#REQUESTERHOST#", "n": 1},
    }
    await run_task("TRANSFER", args, ctx)
    [(request, parent)] = creator.calls
    assert request == {
        "rule": "outbox",
        "partner": "bank",
        "isSend": True,
        "file": ctx.transfer.local_filepath,
        "transferInfo": {"origin": "alice", "n": 1},
        "account": "acme-ACME",
    }
    assert parent is ctx.transfer
    assert any("created transfer 101" in message for message in ctx.log.messages)


async def test_fetch_from_a_partner(tmp_path: Path) -> None:
    creator = Creator()
    ctx = ctx_with(tmp_path, creator)
    await run_task("TRANSFER", {"file": "/remote/#DATE#.csv", "from": "bank", "rule": "in"}, ctx)
    [(request, _)] = creator.calls
    assert request == {
        "rule": "in",
        "partner": "bank",
        "isSend": False,
        "file": "/remote/20240305.csv",
        "transferInfo": {},
    }


async def test_sync_is_accepted_but_warns(tmp_path: Path) -> None:
    creator = Creator()
    ctx = ctx_with(tmp_path, creator)
    with pytest.raises(TaskWarning, match="not implemented"):
        await run_task("TRANSFER", {"file": "f", "to": "bank", "rule": "r", "sync": True}, ctx)
    assert len(creator.calls) == 1


async def test_without_a_transfer_service(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, None)
    with pytest.raises(TaskError, match="cannot create transfers"):
        await run_task("TRANSFER", {"file": "f", "to": "bank", "rule": "r"}, ctx)


async def test_service_refusal_fails_the_task(tmp_path: Path) -> None:
    creator = Creator(TransferError(ErrorCode.TeUnknownRemote, "unknown partner 'bnak'"))
    ctx = ctx_with(tmp_path, creator)
    with pytest.raises(TaskError, match="unknown partner 'bnak'") as caught:
        await run_task("TRANSFER", {"file": "f", "to": "bnak", "rule": "r"}, ctx)
    assert caught.value.code == ErrorCode.TeExternalOperation


async def test_both_or_neither_direction_is_refused(tmp_path: Path) -> None:
    creator = Creator()
    ctx = ctx_with(tmp_path, creator)
    for args in (
        {"file": "f", "to": "a", "from": "b", "rule": "r"},
        {"file": "f", "rule": "r"},
    ):
        with pytest.raises(TaskError, match="exactly one of"):
            await run_task("TRANSFER", args, ctx)
    assert creator.calls == []


@pytest.mark.parametrize(
    ("args", "problems"),
    [
        ({"file": "f", "to": "p", "rule": "r"}, []),
        ({"file": "f", "from": "p", "rule": "r", "as": "me", "info": {}, "sync": "false"}, []),
        (
            {"file": "f", "to": "p", "rule": "r", "info": "x=1"},
            ["argument 'info' must be a mapping"],
        ),
        ({"to": "p"}, ["missing argument 'file'", "missing argument 'rule'"]),
        (
            {"file": "f", "rule": "r"},
            ["exactly one of the arguments 'to' and 'from' is needed"],
        ),
    ],
)
def test_check_args(args: dict[str, object], problems: list[str]) -> None:
    cls = task_class("TRANSFER")
    assert cls is not None
    assert cls.check_args(args) == problems
