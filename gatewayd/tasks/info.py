"""SETINFO: set one entry of the transfer info (read back with `#TI_<key>#`)."""

from __future__ import annotations

from typing import ClassVar

from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import substitute_args


@register
class SetInfo(ArgsTask):
    """`transfer_info[key] = value`, markers substituted in both.

    The value keeps its type: a string (after substitution), a number, a list or a
    mapping (strings inside substituted too).
    """

    type_name = "SETINFO"
    required_args: ClassVar[tuple[str, ...]] = ("key", "value")
    arg_kinds: ClassVar[dict[str, Kind]] = {"key": Kind.TEXT, "value": Kind.ANY}

    async def run(self, ctx: TaskContext) -> None:
        args = substitute_args(self.args, ctx)
        key = self.text(args, "key")
        if "value" not in args:
            raise self.fail("missing argument 'value'")
        ctx.transfer.transfer_info[key] = args["value"]
        ctx.log.info(f"SETINFO: transfer info {key!r} set")
