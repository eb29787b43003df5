"""The life of a transfer: its steps, and the one table of its statuses.

Every status a transfer takes comes from `TRANSITIONS` (status x event -> status):
the pipeline's driver, the transfer service (pause, resume, cancel, retry), the
scheduler (launches, automatic attempts), pre-registration (expiry) and the store's
bulk queries (a crash's RUNNING rows, expired pre-registrations) all go through
`apply` or `after`. No other code assigns a status. A leaf module (the model only), so
that the store may use it too.

    PLANNED --launch--> RUNNING --finish--> DONE
       ^                 |  |  \\--fail--> ERROR --attempt/resume--> PLANNED
       |                 |  \\--pause--> PAUSED --resume--> PLANNED
       |                 \\--shutdown/crash--> INTERRUPTED --resume--> PLANNED
    AVAILABLE --open--> RUNNING          (pre-registered, taken by its partner)
    AVAILABLE --expire--> ERROR          any unfinished --cancel--> CANCELLED
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from gatewayd.model import Status, Step, Transfer

# The steps of every transfer, in order; a resumed run starts again at its row's step.
STEPS: tuple[Step, ...] = (
    Step.SETUP,
    Step.PRE_TASKS,
    Step.DATA,
    Step.POST_TASKS,
    Step.FINALIZATION,
)
# The steps that have a task chain, and the attribute of the row that holds it.
CHAINS: Mapping[Step, str] = {
    Step.PRE_TASKS: "pre_tasks",
    Step.POST_TASKS: "post_tasks",
    Step.ERROR_TASKS: "error_tasks",
}
# Until its data is complete a server transfer needs its partner (who resumes it by
# reconnecting); from POST TASKS on, the gateway finishes it alone.
PARTNER_STEPS = frozenset({Step.NONE, Step.SETUP, Step.PRE_TASKS, Step.DATA})

FINAL = frozenset({Status.DONE, Status.CANCELLED})
# Statuses in which an upload is unfinished and may be resumed by its partner.
RESUMABLE_UPLOAD = frozenset({Status.RUNNING, Status.INTERRUPTED, Status.ERROR, Status.PAUSED})


class Event(StrEnum):
    CREATE = "create"  # a client transfer is requested
    PREREGISTER = "preregister"  # a server transfer is announced
    LAUNCH = "launch"  # the scheduler starts a due run
    OPEN = "open"  # a partner opens (or resumes) a server transfer
    FINISH = "finish"
    FAIL = "fail"
    PAUSE = "pause"
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"  # our own orderly stop
    CRASH = "crash"  # found RUNNING at start-up: we died
    RESUME = "resume"  # an operator asks to continue
    ATTEMPT = "attempt"  # an automatic attempt after an error
    EXPIRE = "expire"  # a pre-registration nobody came for


NEW = None  # the "status" of a transfer not created yet

TRANSITIONS: Mapping[tuple[Status | None, Event], Status] = {
    (NEW, Event.CREATE): Status.PLANNED,
    (NEW, Event.PREREGISTER): Status.AVAILABLE,
    (NEW, Event.OPEN): Status.RUNNING,
    (Status.PLANNED, Event.LAUNCH): Status.RUNNING,
    (Status.AVAILABLE, Event.OPEN): Status.RUNNING,
    (Status.ERROR, Event.OPEN): Status.RUNNING,
    (Status.INTERRUPTED, Event.OPEN): Status.RUNNING,
    (Status.PAUSED, Event.OPEN): Status.RUNNING,
    (Status.RUNNING, Event.FINISH): Status.DONE,
    (Status.RUNNING, Event.FAIL): Status.ERROR,
    (Status.RUNNING, Event.PAUSE): Status.PAUSED,
    (Status.PLANNED, Event.PAUSE): Status.PAUSED,
    (Status.RUNNING, Event.SHUTDOWN): Status.INTERRUPTED,
    (Status.RUNNING, Event.CRASH): Status.INTERRUPTED,
    (Status.PAUSED, Event.RESUME): Status.PLANNED,
    (Status.INTERRUPTED, Event.RESUME): Status.PLANNED,
    (Status.ERROR, Event.RESUME): Status.PLANNED,
    (Status.ERROR, Event.ATTEMPT): Status.PLANNED,
    (Status.AVAILABLE, Event.EXPIRE): Status.ERROR,
    **{(status, Event.CANCEL): Status.CANCELLED for status in Status if status not in FINAL},
}


class TransitionError(Exception):
    """The event is not allowed from the transfer's status (nothing was changed)."""

    def __init__(self, status: Status | None, event: Event) -> None:
        what = "a new transfer" if status is None else f"a transfer that is {status}"
        super().__init__(f"cannot {event} {what}")
        self.status, self.event = status, event


def after(status: Status | None, event: Event) -> Status:
    """The status that `event` leads to from `status`; TransitionError if none."""
    found = TRANSITIONS.get((status, event))
    if found is None:
        raise TransitionError(status, event)
    return found


def allowed(status: Status | None, event: Event) -> bool:
    return (status, event) in TRANSITIONS


def sources(event: Event) -> frozenset[Status]:
    """Every status from which `event` is allowed (for the store's bulk queries)."""
    return frozenset(s for (s, e) in TRANSITIONS if e is event and s is not None)


def apply(transfer: Transfer, event: Event, *, new: bool = False) -> Status:
    """Move `transfer` (`new`: not created yet) to the status `event` leads to."""
    transfer.status = after(None if new else transfer.status, event)
    return transfer.status


def needs_partner(transfer: Transfer) -> bool:
    """Whether only the partner can take this transfer further: a server transfer
    whose data is not complete."""
    return transfer.is_server and transfer.step in PARTNER_STEPS


def resume_refusal(transfer: Transfer) -> str | None:
    """Why an operator's `resume` cannot continue this transfer (None: it can)."""
    if not allowed(transfer.status, Event.RESUME):
        return f"cannot resume a transfer that is {transfer.status}"
    if needs_partner(transfer):
        return "a server transfer is resumed by its partner reconnecting until its data is complete"
    return None
