"""`/v3/files/transfers`: the transfer tasks of Tapis Files, for clients written for it.

A **task** (a UUID) has **elements** (`sourceURI` -> `destinationURI`, `optional`), and
each element becomes **one child transfer per file**: an ordinary client transfer of
ours (follow_id = the task's uuid, `tapisElement` in its transfer info), run, paused,
listed and audited like any other.

URIs name the gateway's own storage or a partner:

    tapis://local/<rule>/<path>     a file or folder inside rule <rule>'s folder
    tapis://<partner>/<path>        a file on partner <partner> (its own root/remote_dir)

One side of an element must be `local`, the other a partner: local -> partner uses a
`send` rule, partner -> local a `receive` rule, and the rule must allow the partner,
exactly as for `/api/transfers`. A local folder is listed recursively into one child per
file (at most `api.tapis_max_files`, 10,000 by default; beyond, the element FAILS with
a message saying so and nothing of it runs). A partner folder (SFTP, FTP, HTTP, local)
becomes one child per file directly in it, each under its own name in the receive
rule's folder; a partner source that is no folder is one file.

Statuses, computed from the children each time a task is read:
    child: PLANNED -> ACCEPTED, RUNNING -> IN_PROGRESS, PAUSED/INTERRUPTED -> PAUSED,
           ERROR -> FAILED (FAILED_OPT for an optional element), CANCELLED, DONE -> COMPLETED
    element: FAILED[_OPT] when its listing failed or a child failed; COMPLETED when every
           child is; else CANCELLED, PAUSED, IN_PROGRESS or STAGED (all children waiting)
    task: CANCELLED once cancelled; FAILED when a required element failed; COMPLETED when
           every element is COMPLETED or FAILED_OPT; else PAUSED, IN_PROGRESS, STAGED, or
           ACCEPTED while its children are being created.
Answers use Tapis's envelope `{status, message, result, version, metadata}`, errors too
(`status: "error"`). `X-Tapis-Token` may carry one of the API's bearer tokens.
"""

from __future__ import annotations

import posixpath
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from gatewayd import __version__
from gatewayd.api.body import JSON_TYPES, parse_json, unsupported
from gatewayd.api.errors import ApiError
from gatewayd.api.routes import SCHEMAS, Call, Param, int_param, route
from gatewayd.api.shapes import rfc3339
from gatewayd.model import Status, Transfer
from gatewayd.pipeline.service import NotFoundError, StateError
from gatewayd.requests import RequestError, TransferRequest
from gatewayd.store.base import TapisTask, TransferFilter

log = structlog.get_logger("gatewayd.api")

LOCAL = "local"
MAX_CHILDREN_LISTED = 1_000_000  # one task's children read back at most
TENANT = "gatewayd"
_CHILD_STATUS = {
    Status.PLANNED: "ACCEPTED",
    Status.AVAILABLE: "ACCEPTED",
    Status.RUNNING: "IN_PROGRESS",
    Status.PAUSED: "PAUSED",
    Status.INTERRUPTED: "PAUSED",
    Status.ERROR: "FAILED",
    Status.CANCELLED: "CANCELLED",
    Status.DONE: "COMPLETED",
}
STATUSES = (
    "ACCEPTED", "STAGED", "IN_PROGRESS", "COMPLETED", "CANCELLED", "FAILED", "FAILED_OPT",
    "PAUSED",
)  # fmt: skip


# --------------------------------------------------------------------------- envelope


def envelope(result: Any, message: str, status: int = 200) -> web.Response:
    return web.json_response(
        {
            "status": "success" if status < 400 else "error",
            "message": message,
            "result": result,
            "version": __version__,
            "metadata": {},
        },
        status=status,
    )


class TapisError(Exception):
    """A request refused with Tapis's envelope; `problems` are all listed."""

    def __init__(self, status: int, problems: Iterable[str]) -> None:
        self.status = status
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def response(self) -> web.Response:
        return envelope(None, str(self), self.status)


# --------------------------------------------------------------------------- URIs


@dataclass(frozen=True)
class Location:
    """Where a URI points: a partner's path, or a path inside a rule's folder."""

    partner: str | None  # None: the gateway's own storage
    rule: str | None
    path: str  # relative, '/'-separated, may be "" (the rule's folder itself)

    def uri(self, path: str | None = None) -> str:
        rest = self.path if path is None else path
        if self.partner is None:
            return f"tapis://{LOCAL}/{self.rule}/{rest}".rstrip("/")
        return f"tapis://{self.partner}/{rest}".rstrip("/")


def parse_uri(value: Any, where: str) -> tuple[Location | None, str | None]:
    """(location, None) or (None, the problem)."""
    if not isinstance(value, str) or not value:
        return None, f"{where}: a tapis:// URI is required"
    split = urlsplit(value)
    if split.scheme != "tapis" or not split.netloc or split.query or split.fragment:
        return None, (
            f"{where}: {value!r} is not tapis://local/<rule>/<path> or tapis://<partner>/<path>"
        )
    parts = [p for p in split.path.split("/") if p not in ("", ".")]
    if ".." in parts or any("\\" in p or "\0" in p for p in parts):
        return None, f"{where}: {value!r} may not contain '..', '\\' or NUL"
    if split.netloc == LOCAL:
        if not parts:
            return None, f"{where}: {value!r} names no rule (tapis://local/<rule>/<path>)"
        return Location(None, parts[0], "/".join(parts[1:])), None
    if not parts:
        return None, f"{where}: {value!r} names no file on partner {split.netloc!r}"
    return Location(split.netloc, None, "/".join(parts)), None


# --------------------------------------------------------------------------- creation


@dataclass
class _Element:
    source: Location
    destination: Location
    optional: bool
    raw: dict[str, Any]
    transfers: list[Transfer]
    estimated_bytes: int = 0
    error: str | None = None


async def _expand(
    call: Call, task_id: str, index: int, element: dict[str, Any], problems: list[str]
) -> _Element | None:
    """Parse one element and plan its children through the transfer service."""
    where = f"elements[{index}]"
    unknown = sorted(set(element) - {"sourceURI", "destinationURI", "optional"})
    problems += [f"{where}: unknown field {k!r}" for k in unknown]
    source, problem = parse_uri(element.get("sourceURI"), f"{where}.sourceURI")
    if problem:
        problems.append(problem)
    destination, problem = parse_uri(element.get("destinationURI"), f"{where}.destinationURI")
    if problem:
        problems.append(problem)
    optional = element.get("optional", False)
    if not isinstance(optional, bool):
        problems.append(f"{where}.optional: must be true or false")
    if source is None or destination is None:
        return None
    if (source.partner is None) == (destination.partner is None):
        problems.append(
            f"{where}: one side must be tapis://local/<rule>/... and the other a partner"
        )
        return None
    sending = source.partner is None
    local, remote = (source, destination) if sending else (destination, source)
    assert remote.partner is not None
    found = _Element(source, destination, bool(optional), element, [])
    info = {"followID": task_id, "tapisElement": index}
    service = call.ctx.service
    try:
        if sending:
            cap = call.ctx.loaded.config.api.tapis_max_files
            plan = await service.plan_folder(
                local.rule or "", local.path, remote.partner, remote.path, info, cap
            )
            if plan.skipped:
                log.warning(
                    "symbolic links left out of a folder element",
                    element=source.uri(),
                    links=plan.skipped[:20],
                )
            if plan.error is not None:
                found.error = f"{source.uri()}: {plan.error}"
            found.transfers, found.estimated_bytes = plan.transfers, plan.bytes
        else:
            cap = call.ctx.loaded.config.api.tapis_max_files
            listed = await service.plan_remote_folder(
                local.rule or "", remote.partner, remote.path, info, cap
            )
            if listed is not None:
                if listed.error is not None:
                    found.error = f"{source.uri()}: {listed.error}"
                found.transfers, found.estimated_bytes = listed.transfers, listed.bytes
                return found
            request = TransferRequest(
                rule=local.rule or "",
                partner=remote.partner,
                is_send=False,
                file=remote.path,
                output=posixpath.basename(local.path) or posixpath.basename(remote.path),
                transfer_info=info,
            )
            found.transfers = [service.build(request)]
    except RequestError as exc:
        problems += [f"{where}: {e.message}" for e in exc.errors]
    return found


async def _read_request(call: Call) -> dict[str, Any]:
    request = call.request
    media = request.content_type.lower() if request.headers.get("Content-Type") else ""
    if media not in JSON_TYPES:
        raise unsupported(request, JSON_TYPES)
    raw = await request.read()
    if not raw.strip():
        raise TapisError(400, ["the request has no body"])
    try:
        body = parse_json(raw.decode("utf-8", errors="replace"))
    except ApiError as exc:
        raise TapisError(400, [p.message for p in exc.problems]) from None
    if not isinstance(body, dict):
        raise TapisError(400, ["the body must be a JSON object"])
    return body


# --------------------------------------------------------------------------- reading


@dataclass
class _View:
    task: TapisTask
    children: list[Transfer]

    def by_element(self) -> dict[int, list[Transfer]]:
        found: dict[int, list[Transfer]] = {}
        for t in self.children:
            index = t.transfer_info.get("tapisElement")
            if isinstance(index, int):
                found.setdefault(index, []).append(t)
        return found

    def element_status(self, index: int, kids: list[Transfer]) -> str:
        element = self.task.elements[index]
        fail = "FAILED_OPT" if element.get("optional") else "FAILED"
        if element.get("error"):
            return fail
        statuses = {t.status for t in kids}
        if len(kids) < element.get("files", 0):
            return "ACCEPTED"  # its children are still being created
        if Status.ERROR in statuses:
            return fail
        if not kids or statuses == {Status.DONE}:
            return "COMPLETED"
        if Status.CANCELLED in statuses:
            return "CANCELLED"
        if Status.RUNNING in statuses or Status.DONE in statuses:
            return "IN_PROGRESS"
        if statuses & {Status.PAUSED, Status.INTERRUPTED}:
            return "PAUSED"
        return "STAGED"

    def element_statuses(self) -> list[str]:
        kids = self.by_element()
        return [self.element_status(i, kids.get(i, [])) for i in range(len(self.task.elements))]

    def status(self) -> str:
        if self.task.cancelled is not None:
            return "CANCELLED"
        elements = self.element_statuses()
        if "FAILED" in elements:
            return "FAILED"
        if all(s in ("COMPLETED", "FAILED_OPT") for s in elements):
            return "COMPLETED"
        for status in ("ACCEPTED", "CANCELLED", "PAUSED"):
            if status in elements:
                return status
        if "IN_PROGRESS" in elements or "COMPLETED" in elements:
            return "IN_PROGRESS"
        return "STAGED"

    def error_message(self) -> str | None:
        for element in self.task.elements:
            if element.get("error") and not element.get("optional"):
                return str(element["error"])
        for t in self.children:
            if t.status == Status.ERROR and not self.task.elements[
                int(t.transfer_info.get("tapisElement", 0))
            ].get("optional"):
                return f"transfer {t.id}: {t.error_msg}"
        return None


def _child_uri_pair(t: Transfer, call: Call) -> tuple[str, str]:
    loaded = call.ctx.loaded
    rule = loaded.config.rules.get(t.rule)
    local = t.local_filepath
    if rule is not None:
        folder = loaded.paths.rule_folder(rule)
        try:
            local = Path(t.local_filepath).relative_to(folder).as_posix()
        except ValueError:
            local = posixpath.basename(t.local_filepath)
    mine = Location(None, t.rule, local).uri()
    theirs = Location(t.partner or "", None, t.remote_filepath).uri()
    return (mine, theirs) if t.is_send else (theirs, mine)


def _child_json(t: Transfer, optional: bool, call: Call) -> dict[str, Any]:
    tz = call.ctx.tz
    source, destination = _child_uri_pair(t, call)
    status = _CHILD_STATUS[t.status]
    if status == "FAILED" and optional:
        status = "FAILED_OPT"
    return {
        "id": t.id,
        "uuid": t.remote_id,
        "sourceURI": source,
        "destinationURI": destination,
        "status": status,
        "bytesTransferred": t.progress,
        "totalBytes": t.filesize,
        "created": rfc3339(t.created, tz),
        "startTime": rfc3339(t.start, tz) if t.status != Status.PLANNED else None,
        "endTime": rfc3339(t.stop, tz),
        "errorMessage": t.error_msg or None,
    }


def task_json(view: _View, call: Call, *, summary: bool, details: bool) -> dict[str, Any]:
    tz = call.ctx.tz
    task = view.task
    status = view.status()
    started = [t.start for t in view.children if t.start and t.status != Status.PLANNED]
    ended = [t.stop for t in view.children if t.stop]
    final = status in ("COMPLETED", "FAILED", "CANCELLED")
    end = task.cancelled if task.cancelled else (max(ended) if ended and final else None)
    result: dict[str, Any] = {
        "tenantId": TENANT,
        "uuid": task.uuid,
        "username": task.username,
        "tag": task.tag,
        "status": status,
        "created": rfc3339(task.created, tz),
        "startTime": rfc3339(min(started), tz) if started else None,
        "endTime": rfc3339(end, tz) if final else None,
        "errorMessage": view.error_message(),
    }
    if summary or details:
        kids = view.by_element()
        estimated = 0
        for index, element in enumerate(task.elements):
            estimated += int(element.get("bytes", 0))
            # A received file's size is known once it runs, unless a listing said it.
            if not element.get("send", True) and not element.get("bytes"):
                estimated += sum(max(t.filesize, 0) for t in kids.get(index, []))
        result["totalTransfers"] = len(view.children)
        result["completeTransfers"] = sum(t.status == Status.DONE for t in view.children)
        result["estimatedTotalBytes"] = estimated
    if details:
        kids = view.by_element()
        statuses = view.element_statuses()
        result["parentTasks"] = [
            {
                "id": index,
                "sourceURI": element["sourceURI"],
                "destinationURI": element["destinationURI"],
                "optional": bool(element.get("optional")),
                "status": statuses[index],
                "errorMessage": element.get("error"),
                "totalBytes": int(element.get("bytes", 0)),
                "bytesTransferred": sum(t.progress for t in kids.get(index, [])),
                "children": [
                    _child_json(t, bool(element.get("optional")), call) for t in kids.get(index, [])
                ],
            }
            for index, element in enumerate(task.elements)
        ]
    return result


async def _view(call: Call, task: TapisTask) -> _View:
    rows, _ = await call.ctx.store.list_transfers(
        TransferFilter(follow_id=task.uuid, limit=MAX_CHILDREN_LISTED)
    )
    return _View(task, rows)


async def _task(call: Call) -> TapisTask:
    wanted = call.request.match_info["id"]
    task = await call.ctx.store.get_tapis_task(wanted)
    if task is None:
        raise TapisError(404, [f"no transfer task {wanted}"])
    return task


def _flags(call: Call, allowed: tuple[str, ...]) -> dict[str, bool]:
    query = call.request.query
    problems = [f"unknown query parameter {k!r}" for k in sorted(set(query)) if k not in allowed]
    flags: dict[str, bool] = {}
    for name in allowed:
        value = query.get(name)
        if value is None:
            continue
        if value.lower() not in ("true", "false"):
            problems.append(f"{name} must be true or false")
        flags[name] = value.lower() == "true"
    if problems:
        raise TapisError(400, problems)
    return flags


# --------------------------------------------------------------------------- schemas


def _envelope_schema(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["success", "error"]},
            "message": {"type": "string"},
            "result": result,
            "version": {"type": "string"},
            "metadata": {"type": "object"},
        },
        "required": ["status", "message", "result", "version", "metadata"],
    }


SCHEMAS["TapisTransferRequest"] = {
    "type": "object",
    "properties": {
        "tag": {"type": "string"},
        "elements": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "sourceURI": {"type": "string"},
                    "destinationURI": {"type": "string"},
                    "optional": {"type": "boolean", "default": False},
                },
                "required": ["sourceURI", "destinationURI"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["elements"],
    "additionalProperties": False,
}
SCHEMAS["TapisTransferTask"] = {
    "type": "object",
    "description": "tenantId, uuid, username, tag, status, created, startTime, endTime, "
    "errorMessage; with includeSummary: totalTransfers, completeTransfers, "
    "estimatedTotalBytes; with details: parentTasks, each with its children",
    "properties": {"status": {"type": "string", "enum": list(STATUSES)}},
}
SCHEMAS["TapisTaskResponse"] = _envelope_schema({"$ref": "#/components/schemas/TapisTransferTask"})
SCHEMAS["TapisTaskListResponse"] = _envelope_schema(
    {"type": "array", "items": {"$ref": "#/components/schemas/TapisTransferTask"}}
)
SCHEMAS["TapisStringResponse"] = _envelope_schema({"type": ["string", "null"]})

_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("Bad request: every problem in `message`", "TapisStringResponse"),
    401: ("Not authenticated (Basic, bearer, or X-Tapis-Token)", "Errors"),
    403: ("Not allowed", "Errors"),
}
_ONE = {404: ("No such task", "TapisStringResponse"), **_ERRORS}
# Any segment: an id that is not one of ours is a 404 in the Tapis envelope.
_UUID = "{id}"


# --------------------------------------------------------------------------- routes


@route(
    "POST",
    "/v3/files/transfers",
    summary="Create a transfer task (Tapis Files): one child transfer per file",
    area="transfers",
    letter="w",
    tag="tapis",
    body="TapisTransferRequest",
    responses={200: ("The task, with its elements and children", "TapisTaskResponse"), **_ERRORS},
)
async def tapis_create_task(call: Call) -> web.StreamResponse:
    try:
        return await _create(call)
    except TapisError as exc:
        return exc.response()


async def _create(call: Call) -> web.StreamResponse:
    body = await _read_request(call)
    problems = [f"unknown field {k!r}" for k in sorted(set(body) - {"tag", "elements"})]
    tag = body.get("tag", "")
    if not isinstance(tag, str):
        problems.append("tag must be a string")
        tag = ""
    task_id = str(uuidlib.uuid4())
    raw_elements = body.get("elements")
    if not isinstance(raw_elements, list) or not raw_elements:
        problems.append("elements must be a non-empty array")
        raw_elements = []
    elements: list[_Element] = []
    for index, raw in enumerate(raw_elements):
        if not isinstance(raw, dict):
            problems.append(f"elements[{index}]: must be an object")
            continue
        element = await _expand(call, task_id, index, raw, problems)
        if element is not None:
            elements.append(element)
    if problems:
        raise TapisError(400, problems)

    task = TapisTask(
        uuid=task_id,
        username=call.principal.user,
        created=call.ctx.clock.now(),
        tag=tag,
        elements=[
            {
                "sourceURI": e.raw["sourceURI"],
                "destinationURI": e.raw["destinationURI"],
                "optional": e.optional,
                "send": e.source.partner is None,
                "files": len(e.transfers),
                "bytes": e.estimated_bytes,
                "error": e.error,
            }
            for e in elements
        ],
    )
    # The task and all of its children in one commit: all of them, or nothing.
    await call.ctx.service.insert_tapis_task(task, [t for e in elements for t in e.transfers])
    await call.audit("tapis.create", f"tapis/{task_id}", {"tag": tag, "elements": len(elements)})
    view = await _view(call, task)
    return envelope(task_json(view, call, summary=True, details=True), "Transfer task created")


@route(
    "GET",
    "/v3/files/transfers",
    summary="Recent transfer tasks (Tapis Files), most recent first",
    area="transfers",
    letter="r",
    tag="tapis",
    query=(
        Param("limit", "Page size (default 1000)", int_param(1)),
        Param("offset", "Tasks to skip (default 0)", int_param(0)),
    ),
    responses={200: ("The tasks", "TapisTaskListResponse"), **_ERRORS},
)
async def tapis_list_tasks(call: Call) -> web.StreamResponse:
    query = call.request.query
    problems = [
        f"unknown query parameter {k!r}" for k in sorted(set(query)) if k not in ("limit", "offset")
    ]
    numbers = {"limit": 1000, "offset": 0}
    for name in numbers:
        value = query.get(name)
        if value is None:
            continue
        if not value.isdigit() or (name == "limit" and int(value) == 0):
            problems.append(f"{name} must be a {'positive' if name == 'limit' else 'whole'} number")
        else:
            numbers[name] = min(int(value), 2**31 - 1)
    if problems:
        return TapisError(400, problems).response()
    tasks = await call.ctx.store.list_tapis_tasks(numbers["limit"], numbers["offset"])
    results = [
        task_json(await _view(call, task), call, summary=False, details=False) for task in tasks
    ]
    return envelope(results, f"{len(results)} transfer tasks")


@route(
    "GET",
    f"/v3/files/transfers/{_UUID}",
    summary="One transfer task (Tapis Files)",
    area="transfers",
    letter="r",
    tag="tapis",
    query=(Param("includeSummary", "Add totals (true/false)", {"type": "boolean"}),),
    responses={200: ("The task", "TapisTaskResponse"), **_ONE},
)
async def tapis_get_task(call: Call) -> web.StreamResponse:
    try:
        flags = _flags(call, ("includeSummary",))
        task = await _task(call)
    except TapisError as exc:
        return exc.response()
    view = await _view(call, task)
    summary = flags.get("includeSummary", False)
    return envelope(task_json(view, call, summary=summary, details=False), "Transfer task")


@route(
    "GET",
    f"/v3/files/transfers/{_UUID}/details",
    summary="One transfer task with its elements and their child transfers",
    area="transfers",
    letter="r",
    tag="tapis",
    responses={200: ("The task in full", "TapisTaskResponse"), **_ONE},
)
async def tapis_get_task_details(call: Call) -> web.StreamResponse:
    try:
        _flags(call, ())
        task = await _task(call)
    except TapisError as exc:
        return exc.response()
    view = await _view(call, task)
    return envelope(task_json(view, call, summary=True, details=True), "Transfer task details")


@route(
    "DELETE",
    f"/v3/files/transfers/{_UUID}",
    summary="Cancel a transfer task: its unfinished child transfers are cancelled",
    area="transfers",
    letter="d",
    tag="tapis",
    responses={200: ("Cancelled", "TapisStringResponse"), **_ONE},
)
async def tapis_cancel_task(call: Call) -> web.StreamResponse:
    try:
        _flags(call, ())
        task = await _task(call)
    except TapisError as exc:
        return exc.response()
    await call.ctx.store.cancel_tapis_task(task.uuid, call.ctx.clock.now())
    view = await _view(call, task)
    for t in view.children:
        if t.id is not None and not t.status.is_final:
            try:
                await call.ctx.service.cancel(t.id)
            except (StateError, NotFoundError):
                continue  # it ended meanwhile
    await call.audit("tapis.cancel", f"tapis/{task.uuid}")
    return envelope(task.uuid, "Transfer task cancelled")
