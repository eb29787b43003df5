"""`/api/transfers`: list, create, get, pause, resume, cancel, retry, cancel by status,
and pre-register a server transfer. Every change goes through the core's transfer
service (or the pre-registration module), so a request from the API is checked exactly
like one from a TRANSFER task.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from gatewayd.api.body import Query, read_object
from gatewayd.api.errors import ApiError, Problem, bad_request, conflict, not_found
from gatewayd.api.routes import TIME_PARAM, Call, Param, int_param, route
from gatewayd.api.shapes import transfer_json
from gatewayd.model import Status, Transfer
from gatewayd.pipeline.service import NotFoundError, OwnerUnavailable, StateError
from gatewayd.requests import RequestError
from gatewayd.store.base import SORT_FIELDS, TransferFilter

# API names of the sortable columns, and the store's names for them.
SORTS = {name: name for name in SORT_FIELDS}
DEFAULT_SORT = "start+"
_SORT = re.compile(r"([A-Za-z_]+)([+ -]?)")
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1
CANCELLABLE = (
    Status.PLANNED,
    Status.AVAILABLE,
    Status.RUNNING,
    Status.PAUSED,
    Status.INTERRUPTED,
    Status.ERROR,
)
# Running transfers stopped at once by a cancel-all.
_CANCEL_CONCURRENCY = 16

_ID = r"{id:\d+}"
_TRANSFER = ("The transfer", "Transfer")
_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad request: every problem is listed", "Errors"),
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
LIST_QUERY = (
    Param(
        "status",
        "Only these statuses (repeatable, or comma-separated)",
        {"type": "string", "enum": [s.value for s in Status]},
        repeated=True,
    ),
    Param("rule", "Only transfers of this rule"),
    Param("partner", "Only client transfers with this partner"),
    Param("account", "Only server transfers of this local account"),
    Param("start", "Only transfers that started at or after this time (RFC 3339)", TIME_PARAM),
    Param("stop", "Only transfers that ended at or before this time (RFC 3339)", TIME_PARAM),
    Param(
        "direction",
        "Only transfers that send or that receive (seen from this gateway)",
        {"type": "string", "enum": ["send", "receive"]},
    ),
    Param("protocol", "Only transfers of this protocol (sftp, http, ftp, local, ...)"),
    Param(
        "file",
        "Only transfers whose file name (either side) matches this pattern: `*` any "
        "characters, `?` one, case-insensitive",
    ),
    Param("followID", "Only transfers of this correlation id"),
    Param("limit", "Page size (default 20, at most 1000)", int_param(1, MAX_LIMIT)),
    Param("offset", "Rows to skip", int_param(0, MAX_ID)),
    Param(
        "sort",
        "Sort key and direction: `start+`, `id-`, ... (`+` ascending, the default; "
        f"`-` descending). Keys: {', '.join(SORTS)}",
        {"type": "string", "enum": [k + d for k in SORTS for d in ("", "+", "-")]},
    ),
)


def _parse_id(call: Call) -> int:
    value = int(call.request.match_info["id"])
    if value > MAX_ID:
        raise not_found(f"no transfer {value}")
    return value


def _statuses(query: Query, name: str, *, allow_all: bool = False) -> list[Status]:
    found: list[Status] = []
    for value in query.texts(name):
        if allow_all and value.lower() == "all":
            found.extend(s for s in CANCELLABLE if s not in found)
            continue
        try:
            status = Status(value.upper())
        except ValueError:
            known = ", ".join(s.value for s in Status)
            query.problems.append(
                Problem(f"'{name}': unknown status {value!r} (known: {known})", "bad_query", name)
            )
            continue
        if status not in found:
            found.append(status)
    return found


def _direction(query: Query) -> bool | None:
    value = query.text("direction")
    if value is None or value in ("send", "receive"):
        return None if value is None else value == "send"
    query.problems.append(
        Problem(f"'direction': {value!r} is not send or receive", "bad_query", "direction")
    )
    return None


def _sort(query: Query) -> tuple[str, bool]:
    value = query.text("sort") or DEFAULT_SORT
    # `start+` arrives as "start " when the client did not encode the `+`.
    match = _SORT.fullmatch(value)
    if match is None or match.group(1) not in SORTS:
        query.problems.append(
            Problem(
                f"'sort': {value!r} is not one of {', '.join(SORTS)} followed by + or -",
                "bad_query",
                "sort",
            )
        )
        return "id", False
    return SORTS[match.group(1)], match.group(2) == "-"


def _request_problems(exc: RequestError) -> list[Problem]:
    return [Problem(e.message, e.code, e.field or None) for e in exc.errors]


def _created(call: Call, t: Transfer) -> web.Response:
    return web.json_response(
        transfer_json(t, call.ctx.tz),
        status=201,
        headers={"Location": f"/api/transfers/{t.id}"},
    )


# --------------------------------------------------------------------------- list


@route(
    "GET",
    "/api/transfers",
    summary="List transfers of every status, filtered, sorted and paginated",
    area="transfers",
    letter="r",
    tag="transfers",
    query=LIST_QUERY,
    responses={200: ("A page of transfers and the total matching", "TransferList"), **_ERRORS},
)
async def list_transfers(call: Call) -> web.StreamResponse:
    query = Query(call.request, [p.name for p in LIST_QUERY])
    statuses = _statuses(query, "status")
    sort, descending = _sort(query)
    filt = TransferFilter(
        statuses=tuple(statuses),
        rule=query.text("rule"),
        partner=query.text("partner"),
        account=query.text("account"),
        start_after=query.time("start", call.ctx.tz),
        stop_before=query.time("stop", call.ctx.tz),
        is_send=_direction(query),
        protocol=query.text("protocol"),
        filename_pattern=query.text("file"),
        follow_id=query.text("followID"),
        limit=query.integer("limit", 20, 1, MAX_LIMIT),
        offset=query.integer("offset", 0, 0, MAX_ID),
        sort=sort,
        descending=descending,
    )
    query.check()
    rows, total = await call.ctx.store.list_transfers(filt)
    return web.json_response(
        {
            "transfers": [transfer_json(t, call.ctx.tz) for t in rows],
            "total": total,
            "limit": filt.limit,
            "offset": filt.offset,
        }
    )


# --------------------------------------------------------------------------- create


@route(
    "POST",
    "/api/transfers",
    summary="Create a client transfer (PLANNED; the scheduler runs it when due)",
    area="transfers",
    letter="w",
    tag="transfers",
    body="TransferRequest",
    responses={201: ("Created; `Location` names it", "Transfer"), **_ERRORS},
)
async def create_transfer(call: Call) -> web.StreamResponse:
    body = await read_object(call.request)
    try:
        t = await call.ctx.service.create(body)
    except RequestError as exc:
        raise bad_request(*_request_problems(exc)) from None
    await call.audit("transfer.create", f"transfer/{t.id}", body)
    return _created(call, t)


@route(
    "POST",
    "/api/transfers/preregister",
    summary="Pre-register a server transfer that a partner will upload or download",
    description="The transfer waits in AVAILABLE until the account opens that file on "
    "one of our servers; if nobody does before it expires, it ends in ERROR with "
    "TeExpired.",
    area="transfers",
    letter="w",
    tag="transfers",
    body="PreregisterRequest",
    responses={201: ("Created; `Location` names it", "Transfer"), **_ERRORS},
)
async def preregister_transfer(call: Call) -> web.StreamResponse:
    body = await read_object(call.request)
    try:
        t = await call.ctx.service.preregister(body)
    except RequestError as exc:
        raise bad_request(*_request_problems(exc)) from None
    await call.audit("transfer.preregister", f"transfer/{t.id}", body)
    return _created(call, t)


# --------------------------------------------------------------------------- one


@route(
    "GET",
    f"/api/transfers/{_ID}",
    summary="One transfer",
    area="transfers",
    letter="r",
    tag="transfers",
    responses={200: _TRANSFER, 404: ("No such transfer", "Errors"), **_ERRORS},
)
async def get_transfer(call: Call) -> web.StreamResponse:
    transfer_id = _parse_id(call)
    t = await call.ctx.store.get_transfer(transfer_id)
    if t is None:
        raise not_found(f"no transfer {transfer_id}")
    return web.json_response(transfer_json(t, call.ctx.tz))


async def _operate(call: Call, name: str) -> Transfer:
    service = call.ctx.service
    operation = {
        "pause": service.pause,
        "resume": service.resume,
        "cancel": service.cancel,
        "retry": service.retry,
    }[name]
    transfer_id = _parse_id(call)
    query = Query(call.request, ())
    query.check()
    try:
        t = await operation(transfer_id)
    except NotFoundError:
        raise not_found(f"no transfer {transfer_id}") from None
    except OwnerUnavailable as exc:
        # Another node runs it and cannot be reached now: nothing changed, try later.
        raise ApiError(
            503,
            [Problem(str(exc), "node_unavailable")],
            {"Retry-After": str(max(1, round(exc.retry_after)))},
        ) from None
    except StateError as exc:
        raise conflict(str(exc), "wrong_status") from None
    details = {"new": t.id} if name == "retry" else {"status": t.status.value}
    await call.audit(f"transfer.{name}", f"transfer/{transfer_id}", details)
    return t


_ACTION_RESPONSES: dict[int, tuple[str, str | None]] = {
    404: ("No such transfer", "Errors"),
    409: ("Not allowed from the transfer's status", "Errors"),
    503: ("Another node runs the transfer and did not answer; nothing changed", "Errors"),
    **_ERRORS,
}


@route(
    "PUT",
    f"/api/transfers/{_ID}/pause",
    summary="Pause a PLANNED or RUNNING transfer (a running one stops at once)",
    area="transfers",
    letter="w",
    tag="transfers",
    responses={202: ("Paused", "Transfer"), **_ACTION_RESPONSES},
)
async def pause_transfer(call: Call) -> web.StreamResponse:
    t = await _operate(call, "pause")
    return web.json_response(transfer_json(t, call.ctx.tz), status=202)


@route(
    "PUT",
    f"/api/transfers/{_ID}/resume",
    summary="Resume a PAUSED, INTERRUPTED or ERROR client transfer where it stopped",
    area="transfers",
    letter="w",
    tag="transfers",
    responses={202: ("Planned again", "Transfer"), **_ACTION_RESPONSES},
)
async def resume_transfer(call: Call) -> web.StreamResponse:
    t = await _operate(call, "resume")
    return web.json_response(transfer_json(t, call.ctx.tz), status=202)


@route(
    "PUT",
    f"/api/transfers/{_ID}/cancel",
    summary="Cancel a transfer that is not DONE or CANCELLED (a running one stops)",
    area="transfers",
    letter="w",
    tag="transfers",
    responses={202: ("Cancelled", "Transfer"), **_ACTION_RESPONSES},
)
async def cancel_transfer(call: Call) -> web.StreamResponse:
    t = await _operate(call, "cancel")
    return web.json_response(transfer_json(t, call.ctx.tz), status=202)


@route(
    "PUT",
    f"/api/transfers/{_ID}/retry",
    summary="Start a new transfer with the same request, from zero",
    area="transfers",
    letter="w",
    tag="transfers",
    responses={201: ("The new transfer; `Location` names it", "Transfer"), **_ACTION_RESPONSES},
)
async def retry_transfer(call: Call) -> web.StreamResponse:
    t = await _operate(call, "retry")
    return _created(call, t)


# --------------------------------------------------------------------------- many


@route(
    "DELETE",
    "/api/transfers",
    summary="Cancel every transfer of the given statuses",
    description="`status` is required (repeatable; `all` means every status that can "
    "be cancelled). Running transfers are stopped.",
    area="transfers",
    letter="d",
    tag="transfers",
    query=(
        Param(
            "status",
            "Statuses to cancel (repeatable, or comma-separated; `all`)",
            {"type": "string", "enum": [*(s.value for s in CANCELLABLE), "all"]},
            repeated=True,
            required=True,
        ),
    ),
    responses={202: ("What was cancelled", "CancelResult"), **_ERRORS},
)
async def cancel_transfers(call: Call) -> web.StreamResponse:
    query = Query(call.request, ("status",))
    statuses = _statuses(query, "status", allow_all=True)
    if not statuses and not query.problems:
        query.problems.append(Problem("'status' is required", "bad_query", "status"))
    final = [s for s in statuses if s.is_final]
    if final:
        query.problems.append(
            Problem(
                f"'status': {', '.join(final)} transfers cannot be cancelled", "bad_query", "status"
            )
        )
    query.check()
    store = call.ctx.store
    ids: list[int] = []
    offset = 0
    # Collect first: cancelled rows leave the filter as they change.
    while True:
        rows, _ = await store.list_transfers(
            TransferFilter(statuses=tuple(statuses), limit=MAX_LIMIT, offset=offset)
        )
        ids.extend(t.id for t in rows if t.id is not None)
        if len(rows) < MAX_LIMIT:
            break
        offset += len(rows)
    done: list[int] = []
    limit = asyncio.Semaphore(_CANCEL_CONCURRENCY)

    async def cancel(transfer_id: int) -> None:
        async with limit:
            try:
                await call.ctx.service.cancel(transfer_id)
            except (StateError, NotFoundError):
                return  # it ended meanwhile
            done.append(transfer_id)

    await asyncio.gather(*(cancel(i) for i in ids))
    done.sort()
    await call.audit(
        "transfers.cancel", "transfers", {"statuses": [s.value for s in statuses], "ids": done}
    )
    return web.json_response({"cancelled": done, "count": len(done)}, status=202)
