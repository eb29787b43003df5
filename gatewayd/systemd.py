"""systemd's notification protocol (`sd_notify`), with the standard library only.

Under `Type=notify`, systemd passes `$NOTIFY_SOCKET` (a unix datagram socket; a leading
`@` names one in the abstract namespace) and waits for `READY=1` before it considers the
service started. With `WatchdogSec=`, it also passes `$WATCHDOG_USEC` and kills the
service when no `WATCHDOG=1` arrives in time. Outside systemd the variables are absent
and every call here does nothing.

The watchdog pings come from an asyncio task: a blocked event loop stops them, which is
what the watchdog is there to notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

import structlog

__all__ = ["Notifier"]

log = structlog.get_logger("gatewayd.systemd")


class Notifier:
    """Sends state changes to systemd; a no-op when not started by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._socket: socket.socket | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """Read and remove systemd's variables, so that programs the gateway starts (EXEC
        tasks) never notify systemd in its name."""
        address = os.environ.pop("NOTIFY_SOCKET", None)
        usec_text = os.environ.pop("WATCHDOG_USEC", None)
        pid_text = os.environ.pop("WATCHDOG_PID", None)
        usec: int | None = None
        # WATCHDOG_PID, when set, says which process the watchdog is for.
        if usec_text and usec_text.isdigit() and (not pid_text or pid_text == str(os.getpid())):
            usec = int(usec_text)
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the watchdog timeout, as systemd recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, *states: str) -> bool:
        """Send `states` (e.g. "READY=1") in one datagram; False when not delivered.

        Never raises: a notification that cannot be sent must not stop the gateway.
        """
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # A full receiver must never block the event loop: drop the message instead.
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto("\n".join(states).encode(), target)
        except OSError as exc:
            log.warning("cannot notify systemd", socket=self.address, error=str(exc))
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1", "STATUS=serving")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets `Type=notify-reload` match this message to its signal.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def start_watchdog(self) -> None:
        """Ping the watchdog from a task of the running loop (when systemd asked)."""
        interval = self.watchdog_interval
        if self.address is None or interval is None or self._watchdog is not None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(self._ping(interval))

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop the watchdog task and close the socket."""
        if self._watchdog is not None:
            task, self._watchdog = self._watchdog, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._socket is not None:
            self._socket.close()
            self._socket = None
