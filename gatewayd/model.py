"""The vocabulary every layer shares: statuses, steps, error codes and the transfer row.

Names and values follow Waarp Gateway (see shared/reference.md) so that its users
recognise them in the API, the CLI and the logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PLANNED = "PLANNED"
    AVAILABLE = "AVAILABLE"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    INTERRUPTED = "INTERRUPTED"
    ERROR = "ERROR"
    DONE = "DONE"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (Status.DONE, Status.CANCELLED)


class Step(StrEnum):
    NONE = "NONE"
    SETUP = "SETUP"
    PRE_TASKS = "PRE TASKS"
    DATA = "DATA"
    POST_TASKS = "POST TASKS"
    ERROR_TASKS = "ERROR TASKS"
    FINALIZATION = "FINALIZATION"


class ErrorCode(StrEnum):
    """Transfer error codes; `r66` gives the one-letter code Waarp R66 users know."""

    TeOk = "TeOk"
    TeUnknown = "TeUnknown"
    TeInternal = "TeInternal"
    TeUnimplemented = "TeUnimplemented"
    TeConnection = "TeConnection"
    TeConnectionReset = "TeConnectionReset"
    TeUnknownRemote = "TeUnknownRemote"
    TeExceededLimit = "TeExceededLimit"
    TeBadAuthentication = "TeBadAuthentication"
    TeDataTransfer = "TeDataTransfer"
    TeIntegrity = "TeIntegrity"
    TeFinalization = "TeFinalization"
    TeExternalOperation = "TeExternalOperation"
    TeWarning = "TeWarning"
    TeStopped = "TeStopped"
    TeCanceled = "TeCanceled"
    TeFileNotFound = "TeFileNotFound"
    TeForbidden = "TeForbidden"
    TeBadSize = "TeBadSize"
    TeShuttingDown = "TeShuttingDown"
    TeExpired = "TeExpired"

    @property
    def r66(self) -> str:
        return _R66_CODES[self]


_R66_CODES: dict[ErrorCode, str] = {
    ErrorCode.TeOk: "O",
    ErrorCode.TeUnknown: "-",
    ErrorCode.TeInternal: "I",
    ErrorCode.TeUnimplemented: "U",
    ErrorCode.TeConnection: "C",
    ErrorCode.TeConnectionReset: "D",
    ErrorCode.TeUnknownRemote: "N",
    ErrorCode.TeExceededLimit: "l",
    ErrorCode.TeBadAuthentication: "A",
    ErrorCode.TeDataTransfer: "T",
    ErrorCode.TeIntegrity: "M",
    ErrorCode.TeFinalization: "F",
    ErrorCode.TeExternalOperation: "E",
    ErrorCode.TeWarning: "W",
    ErrorCode.TeStopped: "H",
    ErrorCode.TeCanceled: "K",
    ErrorCode.TeFileNotFound: "f",
    ErrorCode.TeForbidden: "a",
    ErrorCode.TeBadSize: "d",
    ErrorCode.TeShuttingDown: "S",
    ErrorCode.TeExpired: "-",
}


class Direction(StrEnum):
    SEND = "send"
    RECEIVE = "receive"


@dataclass(frozen=True)
class TaskSpec:
    """One step of a task chain as written in a rule (and copied onto a transfer)."""

    type: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "args": self.args}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(type=str(data["type"]), args=dict(data.get("args") or {}))


@dataclass
class Transfer:
    """One transfer row. The pipeline mutates it and hands it to the store to persist.

    `progress` only ever counts bytes that are fsynced; `task_number` is the index of the
    next task to run in the chain of the current `step`.
    """

    rule: str
    is_server: bool
    is_send: bool
    requester: str
    requested: str
    protocol: str
    id: int | None = None
    remote_id: str = ""
    follow_id: str = ""
    parent_id: int | None = None
    account: str | None = None  # local account (server transfers)
    partner: str | None = None  # partner (client transfers)
    src_filename: str = ""
    dest_filename: str = ""
    local_filepath: str = ""
    remote_filepath: str = ""
    tmp_filepath: str = ""
    filesize: int = -1
    start: datetime | None = None
    stop: datetime | None = None
    status: Status = Status.PLANNED
    step: Step = Step.NONE
    progress: int = 0
    task_number: int = 0
    error_code: ErrorCode = ErrorCode.TeOk
    error_msg: str = ""
    error_step: Step = Step.NONE
    transfer_info: dict[str, Any] = field(default_factory=dict)
    remaining_attempts: int = 0
    next_attempt: datetime | None = None
    next_retry_delay: int = 0  # seconds
    retry_increment_factor: float = 1.0
    pre_tasks: list[TaskSpec] = field(default_factory=list)
    post_tasks: list[TaskSpec] = field(default_factory=list)
    error_tasks: list[TaskSpec] = field(default_factory=list)
    sha256: str = ""
    created: datetime | None = None
    updated: datetime | None = None
    # The node that runs (or last ran) it; the store sets it when the row becomes RUNNING.
    owner: str | None = None
    # The node that interrupted it because its owner died (a cluster's takeover), and when.
    taken_over_by: str | None = None
    taken_over_at: datetime | None = None

    def copy(self) -> Transfer:
        """A snapshot that later mutations of this object do not change."""
        return dataclasses.replace(
            self,
            transfer_info=dict(self.transfer_info),
            pre_tasks=list(self.pre_tasks),
            post_tasks=list(self.post_tasks),
            error_tasks=list(self.error_tasks),
        )
