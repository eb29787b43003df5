"""`/v2/transfers`: Waarp R66's REST API v2 for transfers, for clients written for R66.

Requests go through the same transfer service as `/api/transfers`; only the shapes
differ. Errors of a bad request are R66's: HTTP 400 with
`{"errors": [{"message", "errorCode"}]}`, every problem at once, `errorCode` one of

    1 missing body · 2 malformed JSON · 3 duplicate key · 4 bad query parameter ·
    5 unknown field · 6 missing field · 7 bad field value · 8 already exists (unused) ·
    9 file not found (the file to send is not in the rule's folder) · 10 unknown rule ·
    11 unknown host (`requested` is not a partner) · 12 rule not allowed for that host ·
    13 cannot be changed (restart/stop/cancel from a status that does not allow it; 409)

How our transfers read in R66's terms:

    our status   -> R66 status       our step       -> globalStep / globalLastStep
    PLANNED         TOSUBMIT         NONE, SETUP       NOTASK
    AVAILABLE       NOTUPDATED       PRE TASKS         PRETASK
    RUNNING         RUNNING          DATA              TRANSFERTASK
    PAUSED          INTERRUPTED      POST TASKS,       POSTTASK
    INTERRUPTED     INTERRUPTED        FINALIZATION
    ERROR           INERROR          ERROR TASKS       ERRORTASK
    CANCELLED       INERROR
    DONE            DONE

`globalStep` is ALLDONETASK once DONE and ERRORTASK once in ERROR (or CANCELLED); then
`globalLastStep` is the step where it failed (ALLDONETASK when DONE), otherwise the
current step. `step` is the number of the task in the current chain, `rank` the number
of whole blocks of `blockSize` bytes durably moved (progress // blockSize), `stepStatus`
our error code (TeOk, TeDataTransfer, ...). `filename` is the local file's full path,
`originalFilename` the name as requested; `fileInfo` and `blockSize` are kept in the
transfer's info (keys `fileInfo`, `blockSize`), and `transferInfo` is the rest of that
info as a JSON string. `restart` resumes a PAUSED, INTERRUPTED or ERROR transfer where it
stopped; `stop` pauses; `cancel` cancels. The status filter of the list takes R66's
names (INTERRUPTED lists both PAUSED and INTERRUPTED transfers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from gatewayd.api.body import JSON_TYPES, parse_json, unsupported
from gatewayd.api.errors import ApiError, Problem, not_found
from gatewayd.api.routes import SCHEMAS, TIME_PARAM, Call, Param, int_param, route
from gatewayd.api.shapes import rfc3339
from gatewayd.model import ErrorCode, Status, Step, Transfer
from gatewayd.pipeline.service import NotFoundError, StateError
from gatewayd.requests import RequestError
from gatewayd.store.base import TransferFilter

DEFAULT_BLOCK_SIZE = 65536
MAX_BLOCK_SIZE = 1 << 30
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1
FIELDS = ("ruleName", "filename", "requested", "blockSize", "fileInfo", "start")
# Our request's field names -> R66's, for messages of the transfer service.
_OUR_NAMES = {"rule": "ruleName", "partner": "requested", "file": "filename", "start": "start"}
_SERVICE_CODES = {
    "unknown_field": 5,
    "missing": 6,
    "bad_value": 7,
    "unknown_rule": 10,
    "unknown_partner": 11,
    "not_allowed": 12,
    "disabled": 12,
}
_BODY_CODES = {"missing_body": 1, "malformed_body": 2, "malformed_json": 2, "duplicate_key": 3}

STATUS = {
    Status.PLANNED: "TOSUBMIT",
    Status.AVAILABLE: "NOTUPDATED",
    Status.RUNNING: "RUNNING",
    Status.PAUSED: "INTERRUPTED",
    Status.INTERRUPTED: "INTERRUPTED",
    Status.ERROR: "INERROR",
    Status.CANCELLED: "INERROR",
    Status.DONE: "DONE",
}
R66_STATUSES = ("UNKNOWN", "NOTUPDATED", "INTERRUPTED", "TOSUBMIT", "INERROR", "RUNNING", "DONE")
# The R66 parsers refuse blank text (empty or only spaces).
_NOT_BLANK = {"type": "string", "pattern": r"\S"}
GLOBAL_STEP = {
    Step.NONE: "NOTASK",
    Step.SETUP: "NOTASK",
    Step.PRE_TASKS: "PRETASK",
    Step.DATA: "TRANSFERTASK",
    Step.POST_TASKS: "POSTTASK",
    Step.FINALIZATION: "POSTTASK",
    Step.ERROR_TASKS: "ERRORTASK",
}
GLOBAL_STEPS = ("NOTASK", "PRETASK", "TRANSFERTASK", "POSTTASK", "ALLDONETASK", "ERRORTASK")
# `order`: R66's names -> (column, descending).
ORDERS = {
    "ascId": ("id", False),
    "descId": ("id", True),
    "ascStart": ("start", False),
    "descStart": ("start", True),
    "ascStop": ("stop", False),
    "descStop": ("stop", True),
    "ascRule": ("rule", False),
    "descRule": ("rule", True),
}


@dataclass(frozen=True)
class R66Problem(Problem):
    """A problem with R66's numeric code."""

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "errorCode": int(self.code)}


def _problem(code: int, message: str) -> R66Problem:
    return R66Problem(message, str(code))


def _bad(problems: list[R66Problem]) -> ApiError:
    return ApiError(400, problems)


# --------------------------------------------------------------------------- shapes


def _blocks(t: Transfer) -> int:
    size = t.transfer_info.get("blockSize")
    return (
        size
        if isinstance(size, int) and not isinstance(size, bool) and size > 0
        else (DEFAULT_BLOCK_SIZE)
    )


def _step_status(t: Transfer) -> str:
    # A transfer cancelled before it ran keeps TeOk in its row; R66 says why it ended.
    if t.status == Status.CANCELLED and t.error_code == ErrorCode.TeOk:
        return ErrorCode.TeCanceled.value
    return t.error_code.value


def r66_json(t: Transfer, call: Call) -> dict[str, Any]:
    """A transfer as R66's REST v2 shows one (see the module's mapping)."""
    tz = call.ctx.tz
    info = dict(t.transfer_info)
    file_info = info.pop("fileInfo", "")
    info.pop("blockSize", None)
    block = _blocks(t)
    if t.status == Status.DONE:
        global_step = last_step = "ALLDONETASK"
    elif t.status in (Status.ERROR, Status.CANCELLED):
        global_step = "ERRORTASK"
        failed = t.error_step if t.error_step != Step.NONE else t.step
        last_step = GLOBAL_STEP.get(failed, "NOTASK")
    else:
        global_step = last_step = GLOBAL_STEP.get(t.step, "NOTASK")
    return {
        "id": t.id,
        "globalStep": global_step,
        "globalLastStep": last_step,
        "step": t.task_number,
        "rank": t.progress // block,
        "status": STATUS[t.status],
        "stepStatus": _step_status(t),
        "originalFilename": t.src_filename,
        "filename": t.local_filepath,
        "ruleName": t.rule,
        "blockSize": block,
        "fileInfo": file_info if isinstance(file_info, str) else json.dumps(file_info),
        "transferInfo": json.dumps(info, sort_keys=True),
        "start": rfc3339(t.start, tz),
        "stop": rfc3339(t.stop, tz),
        "requester": t.requester,
        "requested": t.requested,
    }


def _uri(t: Transfer) -> str:
    return f"/v2/transfers/{t.id}"


# --------------------------------------------------------------------------- bodies


async def _read_body(request: web.Request) -> dict[str, Any]:
    media = request.content_type.lower() if request.headers.get("Content-Type") else ""
    if media not in JSON_TYPES:
        raise unsupported(request, JSON_TYPES)
    raw = await request.read()
    if not raw.strip():
        raise _bad([_problem(1, "Missing request body.")])
    try:
        body = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad([_problem(2, "Malformed JSON: the body is not UTF-8.")]) from None
    except ApiError as exc:  # parse_json's own problems, with R66's codes
        raise _bad(
            [_problem(_BODY_CODES.get(p.code, 2), p.message) for p in exc.problems]
        ) from None
    if not isinstance(body, dict):
        raise _bad([_problem(2, "Malformed JSON: the body must be an object.")])
    return body


def _service_problem(code: str, message: str) -> R66Problem:
    for ours, theirs in _OUR_NAMES.items():
        message = message.replace(f"'{ours}'", f"'{theirs}'")
    return _problem(_SERVICE_CODES.get(code, 7), message)


async def _check_request(
    call: Call, body: dict[str, Any]
) -> tuple[dict[str, Any], Transfer | None]:
    """Every problem of `body` at once, or our create request and the transfer it makes."""
    problems: list[R66Problem] = [
        _problem(5, f"Unknown field '{key}'.") for key in body if key not in FIELDS
    ]
    block = body.get("blockSize", DEFAULT_BLOCK_SIZE)
    if not isinstance(block, int) or isinstance(block, bool) or not 0 < block <= MAX_BLOCK_SIZE:
        problems.append(
            _problem(7, f"Field 'blockSize': illegal value {block!r} (1 to {MAX_BLOCK_SIZE}).")
        )
        block = DEFAULT_BLOCK_SIZE
    file_info = body.get("fileInfo")
    if file_info is not None and not isinstance(file_info, str):
        problems.append(_problem(7, "Field 'fileInfo': must be a string."))
        file_info = None
    info: dict[str, Any] = {"blockSize": block}
    if file_info:
        info["fileInfo"] = file_info
    request: dict[str, Any] = {
        "rule": body.get("ruleName"),
        "partner": body.get("requested"),
        "file": body.get("filename"),
        "start": body.get("start"),
        "transferInfo": info,
    }
    would_be: Transfer | None = None
    try:
        would_be = call.ctx.service.build(request)
    except RequestError as exc:
        problems += [_service_problem(e.code, e.message) for e in exc.errors]
    if would_be is not None and would_be.is_send:
        problem = await call.ctx.service.source_problem(would_be)
        if problem is not None:
            problems.append(_problem(9, _missing(body.get("filename"), would_be.rule, problem)))
    if problems:
        raise _bad(problems)
    return request, would_be


# --------------------------------------------------------------------------- schemas

_STRING = {"type": "string"}
_INT = {"type": "integer"}
_TIME_OR_NULL = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
SCHEMAS["R66TransferRequest"] = {
    "type": "object",
    "properties": {
        "ruleName": _STRING,
        "filename": _STRING,
        "requested": {"type": "string", "description": "The partner"},
        "blockSize": {"type": "integer", "default": DEFAULT_BLOCK_SIZE},
        "fileInfo": _STRING,
        "start": {"type": "string", "format": "date-time"},
    },
    "required": ["ruleName", "filename", "requested"],
    "additionalProperties": False,
}
SCHEMAS["R66Transfer"] = {
    "type": "object",
    "properties": {
        "id": _INT,
        "globalStep": {"type": "string", "enum": list(GLOBAL_STEPS)},
        "globalLastStep": {"type": "string", "enum": list(GLOBAL_STEPS)},
        "step": _INT,
        "rank": _INT,
        "status": {"type": "string", "enum": list(R66_STATUSES)},
        "stepStatus": _STRING,
        "originalFilename": _STRING,
        "filename": _STRING,
        "ruleName": _STRING,
        "blockSize": _INT,
        "fileInfo": _STRING,
        "transferInfo": {"type": "string", "description": "A JSON object, as a string"},
        "start": _TIME_OR_NULL,
        "stop": _TIME_OR_NULL,
        "requester": _STRING,
        "requested": _STRING,
    },
    "additionalProperties": False,
}
SCHEMAS["R66TransferList"] = {
    "type": "object",
    "properties": {
        "totalResults": _INT,
        "results": {"type": "array", "items": {"$ref": "#/components/schemas/R66Transfer"}},
    },
    "required": ["totalResults", "results"],
    "additionalProperties": False,
}
SCHEMAS["R66Errors"] = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"message": _STRING, "errorCode": {"type": "integer"}},
            },
        }
    },
    "required": ["errors"],
}

_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad request: every problem, with R66's numeric codes", "R66Errors"),
    401: ("Not authenticated", "Errors"),
    403: ("Not allowed", "Errors"),
}
_ONE_ERRORS: dict[int, tuple[str, str | None]] = {
    404: ("No such transfer", "Errors"),
    409: ("Not allowed from the transfer's status (errorCode 13)", "R66Errors"),
    **_ERRORS,
}
_ID = r"{id:\d+}"


# --------------------------------------------------------------------------- create


@route(
    "POST",
    "/v2/transfers",
    summary="Create a client transfer (Waarp R66 REST v2); status TOSUBMIT",
    area="transfers",
    letter="w",
    tag="r66",
    body="R66TransferRequest",
    responses={201: ("Created; the `transferURI` header names it", "R66Transfer"), **_ERRORS},
)
async def r66_create_transfer(call: Call) -> web.StreamResponse:
    body = await _read_body(call.request)
    _, t = await _check_request(call, body)
    assert t is not None
    await call.ctx.service.insert([t])
    await call.audit("transfer.create", f"transfer/{t.id}", {"r66": body})
    return web.json_response(r66_json(t, call), status=201, headers={"transferURI": _uri(t)})


# --------------------------------------------------------------------------- list

LIST_PARAMS = (
    Param("limit", "Page size (default 20, at most 1000)", int_param(1, MAX_LIMIT)),
    Param("offset", "Rows to skip", int_param(0, MAX_ID)),
    Param("order", "Sort order (default ascId)", {"type": "string", "enum": list(ORDERS)}),
    Param("ruleName", "Only this rule", _NOT_BLANK),
    Param("partner", "Only this partner (`requested`)", _NOT_BLANK),
    Param("status", "Only this R66 status", {"type": "string", "enum": list(R66_STATUSES)}),
    Param("filename", "Only this file name (either side)", _NOT_BLANK),
    Param("startTrans", "Started at or after this time (RFC 3339)", TIME_PARAM),
    Param("stopTrans", "Ended at or before this time (RFC 3339)", TIME_PARAM),
)


def _illegal(name: str, value: str) -> R66Problem:
    return _problem(4, f"Query parameter '{name}' : illegal value '{value}'.")


class _R66Query:
    def __init__(self, query: MultiMapping[str], call: Call) -> None:
        self.query = query
        self.call = call
        self.problems: list[R66Problem] = []
        allowed = {p.name for p in LIST_PARAMS}
        for key in sorted(set(query)):
            if key not in allowed:
                self.problems.append(_problem(4, f"Query parameter '{key}' : unknown parameter."))
            elif len(query.getall(key)) > 1:
                self.problems.append(_problem(4, f"Query parameter '{key}' : given twice."))

    def text(self, name: str) -> str | None:
        value = self.query.get(name)
        if value is not None and not value.strip():
            self.problems.append(_illegal(name, value))
            return None
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.query.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            self.problems.append(_illegal(name, value))
            return default
        return number

    def time(self, name: str) -> datetime | None:
        value = self.query.get(name)
        if value is None:
            return None
        text = value.strip().replace(" ", "+").replace("Z", "+00:00")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            self.problems.append(_illegal(name, value))
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.call.ctx.tz)


@route(
    "GET",
    "/v2/transfers",
    summary="List transfers (Waarp R66 REST v2): `{totalResults, results}`",
    area="transfers",
    letter="r",
    tag="r66",
    query=LIST_PARAMS,
    responses={200: ("A page of transfers and the total matching", "R66TransferList"), **_ERRORS},
)
async def r66_list_transfers(call: Call) -> web.StreamResponse:
    q = _R66Query(call.request.query, call)
    limit = q.integer("limit", 20, 1, MAX_LIMIT)
    offset = q.integer("offset", 0, 0, MAX_ID)
    order = q.text("order") or "ascId"
    if order not in ORDERS:
        q.problems.append(_illegal("order", order))
        order = "ascId"
    status = q.text("status")
    statuses: tuple[Status, ...] = ()
    if status is not None:
        if status.upper() not in R66_STATUSES:
            q.problems.append(_illegal("status", status))
        else:
            statuses = tuple(s for s, name in STATUS.items() if name == status.upper())
    filt = TransferFilter(
        statuses=statuses,
        rule=q.text("ruleName"),
        partner=q.text("partner"),
        filename=q.text("filename"),
        start_after=q.time("startTrans"),
        stop_before=q.time("stopTrans"),
        limit=limit,
        offset=offset,
        sort=ORDERS[order][0],
        descending=ORDERS[order][1],
    )
    if q.problems:
        raise _bad(sorted(q.problems, key=lambda p: p.message))  # by parameter name
    if status is not None and not statuses:  # UNKNOWN: none of ours is unknown
        return web.json_response({"totalResults": 0, "results": []})
    rows, total = await call.ctx.store.list_transfers(filt)
    return web.json_response({"totalResults": total, "results": [r66_json(t, call) for t in rows]})


# --------------------------------------------------------------------------- one


def _transfer_id(call: Call) -> int:
    value = int(call.request.match_info["id"])
    if value > MAX_ID:
        raise not_found(f"no transfer {value}")
    return value


@route(
    "GET",
    f"/v2/transfers/{_ID}",
    summary="One transfer (Waarp R66 REST v2)",
    area="transfers",
    letter="r",
    tag="r66",
    responses={
        200: ("The transfer", "R66Transfer"),
        404: ("No such transfer", "Errors"),
        **_ERRORS,
    },
)
async def r66_get_transfer(call: Call) -> web.StreamResponse:
    transfer_id = _transfer_id(call)
    t = await call.ctx.store.get_transfer(transfer_id)
    if t is None:
        raise not_found(f"no transfer {transfer_id}")
    return web.json_response(r66_json(t, call))


async def _act(call: Call, action: str) -> web.StreamResponse:
    service = call.ctx.service
    operation = {"restart": service.resume, "stop": service.pause, "cancel": service.cancel}[action]
    transfer_id = _transfer_id(call)
    if call.request.query:
        raise _bad(
            [_problem(4, f"Query parameter '{k}' : unknown parameter.") for k in call.request.query]
        )
    try:
        t = await operation(transfer_id)
    except NotFoundError:
        raise not_found(f"no transfer {transfer_id}") from None
    except StateError as exc:
        raise ApiError(409, [_problem(13, f"{exc}.")]) from None
    await call.audit(f"transfer.{action}", f"transfer/{transfer_id}", {"status": t.status.value})
    return web.json_response(r66_json(t, call), status=202)


@route(
    "PUT",
    f"/v2/transfers/{_ID}/restart",
    summary="Restart an interrupted, paused or failed transfer where it stopped",
    area="transfers",
    letter="w",
    tag="r66",
    responses={202: ("Planned again (TOSUBMIT)", "R66Transfer"), **_ONE_ERRORS},
)
async def r66_restart_transfer(call: Call) -> web.StreamResponse:
    return await _act(call, "restart")


@route(
    "PUT",
    f"/v2/transfers/{_ID}/stop",
    summary="Stop (pause) a planned or running transfer; `restart` continues it",
    area="transfers",
    letter="w",
    tag="r66",
    responses={202: ("Stopped (INTERRUPTED)", "R66Transfer"), **_ONE_ERRORS},
)
async def r66_stop_transfer(call: Call) -> web.StreamResponse:
    return await _act(call, "stop")


@route(
    "PUT",
    f"/v2/transfers/{_ID}/cancel",
    summary="Cancel a transfer that has not ended",
    area="transfers",
    letter="w",
    tag="r66",
    responses={202: ("Cancelled", "R66Transfer"), **_ONE_ERRORS},
)
async def r66_cancel_transfer(call: Call) -> web.StreamResponse:
    return await _act(call, "cancel")


def _missing(filename: Any, rule: str, problem: str) -> str:
    if problem == "no such file":
        return f"File '{filename}' not found in rule '{rule}'."
    return f"File '{filename}' in rule '{rule}': {problem}."
