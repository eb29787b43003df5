"""Task types for rule chains. See `gatewayd.tasks.base`."""

from gatewayd.tasks.base import Task, TaskContext, register, task_class, task_types

__all__ = ["Task", "TaskContext", "register", "task_class", "task_types"]
