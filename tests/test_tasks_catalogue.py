"""The registry of task types as rules and check-config see it."""

from __future__ import annotations

from gatewayd.tasks import task_class, task_types
from gatewayd.tasks.base import Task

EXPECTED = {
    "ARCHIVE",
    "CHNEWLINE",
    "COPY",
    "COPYRENAME",
    "DECRYPT",
    "DECRYPT&VERIFY",
    "DELETE",
    "EMAIL",
    "ENCRYPT",
    "ENCRYPT&SIGN",
    "EXEC",
    "EXECMOVE",
    "EXECOUTPUT",
    "EXTRACT",
    "ICAP",
    "MOVE",
    "MOVERENAME",
    "NOTIFY",
    "RENAME",
    "SETINFO",
    "SIGN",
    "TRANSCODE",
    "TRANSFER",
    "VERIFY",
}


def test_every_task_type_is_registered() -> None:
    assert set(task_types()) >= EXPECTED


def test_lookup_is_case_insensitive() -> None:
    assert task_class("copy") is task_class("COPY")
    assert task_class("NOPE") is None


def test_every_task_declares_its_arguments() -> None:
    for name in EXPECTED:
        cls = task_class(name)
        assert cls is not None and issubclass(cls, Task)
        assert cls.type_name == name
        assert not set(cls.required_args) & set(cls.optional_args), name
        # Asking for nothing reports exactly the required arguments (and, for TRANSFER,
        # the missing direction).
        problems = cls.check_args({})
        missing = [p for p in problems if p.startswith("missing argument")]
        assert missing == [f"missing argument '{arg}'" for arg in cls.required_args], name
