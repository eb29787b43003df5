"""What the ICAP, EMAIL and NOTIFY tasks get from the running gateway, and the stable
key of a notice.

EMAIL and NOTIFY are at-least-once: a kill -9 just after a message left and before the
end of its task was committed sends it again when the transfer resumes. Each message
carries a key that is the same every time that task of that transfer runs (the
transfer's remote ID, the step and the task's number), so a receiver can drop a repeat.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.config.outbound import IcapServerConfig, NotifyEndpointConfig, SmtpServerConfig
from gatewayd.model import Transfer

__all__ = ["CaFileError", "Outbound", "notice_key", "ssl_context"]


@dataclass(frozen=True)
class Outbound:
    """The configured servers and the API's JSON of a transfer."""

    icap: Mapping[str, IcapServerConfig]
    smtp: Mapping[str, SmtpServerConfig]
    notify: Mapping[str, NotifyEndpointConfig]
    # Relative `ca_file` settings resolve against it.
    home: Path
    transfer_json: Callable[[Transfer], dict[str, Any]]

    def ca_path(self, ca_file: Path | None) -> str | None:
        if ca_file is None:
            return None
        return str(ca_file if ca_file.is_absolute() else self.home / ca_file)


class CaFileError(Exception):
    """The CA file of a setting cannot be read (the message names it)."""


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the server (against `ca_file` when given).

    Reads the CA file: call it off the event loop. Raises CaFileError."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CaFileError(f"cannot read the CA file {ca_file}: {reason}") from None


def notice_key(transfer: Transfer, step: str, task_number: int) -> str:
    """The same text each time this task of this transfer runs, and another for any
    other task or transfer: `<remote ID>.<step>.<task number>`."""
    remote = transfer.remote_id or f"id{transfer.id}"
    remote = re.sub(r"[^A-Za-z0-9_.-]", "_", remote)
    slug = re.sub(r"[^a-z0-9]+", "-", step.lower()).strip("-") or "task"
    return f"{remote}.{slug}.{task_number}"
