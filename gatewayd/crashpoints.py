"""Named points where a test may have the daemon killed, for real, with SIGKILL.

Some crash windows are microseconds wide (between placing a received file and
committing that fact): no outside `kill -9` can hit them reliably. With
`GATEWAYD_CRASH_AT=<name>` in its environment the daemon kills itself the first time
it reaches the point of that name, exactly as `kill -9` would: nothing is flushed, no
handler runs. Without the variable (always, in production) a point costs one
comparison.
"""

from __future__ import annotations

import os
import signal

ENV = "GATEWAYD_CRASH_AT"

# The points, for documentation and for tests to name.
AFTER_PLACE = "after-place"  # a received file has its final name; the row does not say so
AFTER_DONE = "after-done"  # a received file's row says DONE; its temp name is still there
TASK_OUTPUT = "task-output"  # a task's new file is written under its temporary name only
TASK_PUBLISHED = "task-published"  # a task's new file has its name; the row does not say so
MAIL_SENT = "mail-sent"  # EMAIL's server took the message; the row does not say so
NOTICE_SENT = "notice-sent"  # NOTIFY's receiver answered 2xx; the row does not say so

_armed = os.environ.get(ENV, "")


def reached(name: str) -> None:
    """Kill this process now if the environment asked for a crash at `name`."""
    if _armed and _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)
