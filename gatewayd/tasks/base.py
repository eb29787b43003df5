"""What a task is, what it gets, and the registry of task types by name.

A task is a plain class registered under its type name (`COPY`, `EXEC`, ...). Rules name
tasks in their `pre`, `post` and `error` chains; the pipeline instantiates the class with
the task's `args` and awaits `run(ctx)`. `run` raises `TaskError` to fail the transfer or
`TaskWarning` to record a warning and go on.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gatewayd.errors import TransferError
from gatewayd.model import Transfer
from gatewayd.outbound.context import Outbound
from gatewayd.requests import TransferRequest

if TYPE_CHECKING:
    from gatewayd.crypto.keyring import Keyring


class TransferCreator(Protocol):
    """What the TRANSFER task calls: the core's transfer service."""

    async def __call__(self, request: TransferRequest, *, parent: Transfer) -> Transfer:
        """Create a client transfer (TaskError when the request is refused)."""
        ...


class RemoteFiles(Protocol):
    """What the REMOTE* tasks do to the partner's files (its protocol client)."""

    async def delete(self, remote_path: str) -> None: ...

    async def rename(self, remote_path: str, new_path: str) -> None: ...


@dataclass
class TaskContext:
    """Everything a task may read or change.

    Tasks that re-target the transfer (MOVE, RENAME, EXECMOVE, ...) change
    `transfer.local_filepath` (and file names); the pipeline persists the change.
    """

    transfer: Transfer
    now: Callable[[], datetime]
    timezone: tzinfo
    local_host: str = "gatewayd"
    remote_host: str = ""
    # Folders of the rule as resolved for this transfer (for #INPATH#, #OUTPATH#, ...).
    in_path: str = ""
    out_path: str = ""
    work_path: str = ""
    home_path: str = ""
    # The rule's folder: files below it are reached through no symbolic link.
    rule_folder: str = ""
    error: TransferError | None = None  # set while the error chain runs
    exec_timeout: float = 300.0
    create_transfer: TransferCreator | None = None
    log: Any = field(default_factory=lambda: logging.getLogger("gatewayd.tasks"))
    # Test hook: awaited before each task runs, may raise to inject a failure.
    before_task: Callable[[str, int], Awaitable[None]] | None = None
    # The task's place in the transfer: the step of its chain and its index there (set
    # by the driver before the task runs; -1: not a task of a chain).
    step: str = ""
    task_number: int = -1
    # The run resumed at this task (after a crash, a pause, a shutdown): it may have run
    # before, in part or in full, and its own output may be there already.
    rerun: bool = False
    # The partner of a client transfer, connected (set by the driver; None otherwise).
    remote: Callable[[], AbstractAsyncContextManager[RemoteFiles]] | None = None
    # The gateway's OpenPGP keys (the ENCRYPT/DECRYPT/SIGN/VERIFY tasks); None: none.
    keyring: Keyring | None = None
    # The servers that ICAP, EMAIL and NOTIFY reach (set by the driver; None otherwise).
    outbound: Outbound | None = None

    @property
    def temp_tag(self) -> str | None:
        """A short name part that is the same each time this task of this transfer runs,
        for the temporary files it writes: a rerun after a crash finds (and removes) the
        leftover of the interrupted run instead of adding another. None outside a
        transfer's chain (the names are then random)."""
        t = self.transfer
        if self.task_number < 0 or (t.id is None and not t.remote_id):
            return None
        place = f"{t.id}/{t.remote_id}/{self.step}/{self.task_number}"
        return hashlib.sha256(place.encode()).hexdigest()[:12]


class Task(ABC):
    """One task type. Subclasses set `type_name` and implement `run`."""

    type_name: ClassVar[str]
    # Argument names the task accepts, and which of them are required.
    required_args: ClassVar[tuple[str, ...]] = ()
    optional_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        """Problems with `args` found without running anything (for check-config)."""
        problems = [f"missing argument '{name}'" for name in cls.required_args if name not in args]
        known = set(cls.required_args) | set(cls.optional_args)
        problems += [f"unknown argument '{name}'" for name in args if name not in known]
        return problems

    @abstractmethod
    async def run(self, ctx: TaskContext) -> None:
        """Do the task's work; raise TaskError or TaskWarning."""


_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task type available to rules under `cls.type_name`."""
    name = cls.type_name.upper()
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"task type {name} registered twice")
    _REGISTRY[name] = cls
    return cls


def task_class(name: str) -> type[Task] | None:
    """The class registered for a type name (case-insensitive), None when unknown."""
    load_builtin_tasks()
    return _REGISTRY.get(name.upper())


def task_types() -> list[str]:
    load_builtin_tasks()
    return sorted(_REGISTRY)


def load_builtin_tasks() -> None:
    """Import the task modules of this package so that they register themselves."""
    import importlib
    import pkgutil

    import gatewayd.tasks as package

    # Modules named with a leading underscore are helpers shared by the task modules.
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("base", "markers") and not module.name.startswith("_"):
            importlib.import_module(f"gatewayd.tasks.{module.name}")
