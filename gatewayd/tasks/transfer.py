"""TRANSFER: start a new client transfer from a task chain (store and forward).

Arguments: `file`, exactly one of `to` (send to that partner) or `from` (receive from
it), `rule`, optionally `as` (the remote account), `info` (a mapping, the new transfer's
transfer info) and `sync`. Markers are substituted in all of them.

The request is a `TransferRequest` (`rule`, `partner`, `is_send`, `file`,
`transferInfo`, and `account` when `as` is given) and goes to `ctx.create_transfer` with
this transfer as `parent`, so that the new transfer carries its `follow_id`.

`sync: true` (wait for the new transfer to end) is not implemented yet: the transfer is
created, then the task ends with a warning saying it did not wait.
"""

from __future__ import annotations

from typing import Any, ClassVar

from gatewayd.errors import TaskError, TaskWarning, TransferError
from gatewayd.requests import TransferRequest
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args


@register
class TransferTask(ArgsTask):
    """Create a client transfer to (`to`) or from (`from`) a partner."""

    type_name = "TRANSFER"
    required_args: ClassVar[tuple[str, ...]] = ("file", "rule")
    optional_args: ClassVar[tuple[str, ...]] = ("to", "from", "as", "info", "sync")
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "file": Kind.TEXT,
        "rule": Kind.TEXT,
        "to": Kind.TEXT,
        "from": Kind.TEXT,
        "as": Kind.TEXT,
        "info": Kind.MAPPING,
        "sync": Kind.FLAG,
    }

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        if ("to" in args) == ("from" in args):
            problems.append("exactly one of the arguments 'to' and 'from' is needed")
        return problems

    def request(self, ctx: TaskContext) -> TransferRequest:
        """The request for the new transfer, markers substituted."""
        problems = self.check_args(self.args)
        if problems:
            raise self.fail("; ".join(problems))
        args = substitute_args(self.args, ctx)
        is_send = "to" in args
        info = args.get("info") or {}
        if not isinstance(info, dict):
            raise self.fail("the argument 'info' must be a mapping")
        return TransferRequest(
            rule=self.text(args, "rule"),
            partner=self.text(args, "to" if is_send else "from"),
            is_send=is_send,
            file=self.text(args, "file"),
            transfer_info=dict(info),
            account=self.text(args, "as") if "as" in args else None,
        )

    async def run(self, ctx: TaskContext) -> None:
        request = self.request(ctx)
        sync = self.flag(substitute_args(self.args, ctx), "sync")
        if ctx.create_transfer is None:
            raise self.fail("this gateway cannot create transfers from a task")
        try:
            created = await ctx.create_transfer(request, parent=ctx.transfer)
        except TransferError as error:
            raise TaskError(f"TRANSFER: cannot create the transfer: {error.message}") from None
        direction = "to" if request.is_send else "from"
        ctx.log.info(
            f"TRANSFER: created transfer {created.id} of {request.file!r} "
            f"{direction} {request.partner} with rule {request.rule}"
        )
        if sync:
            raise TaskWarning(
                f"TRANSFER: 'sync' is not implemented yet; transfer {created.id} "
                "was started without waiting for it"
            )
