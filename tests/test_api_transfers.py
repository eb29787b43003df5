"""`/api/transfers` over HTTP against an in-process gateway: create, list (filters,
pagination, sort), get, pause / resume / cancel / retry (planned and running `local`
transfers), cancel by status, pre-registered server transfers and their expiry."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gatewayd.model import Direction, ErrorCode
from tests.api_support import Api, ApiEnv
from tests.gateway_env import make_file

MiB = 1 << 20
FUTURE = "2030-06-01T12:00:00+02:00"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    yield environment
    await environment.stop()


async def wait_transfer(
    api: Api, transfer_id: int, check: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Poll GET /api/transfers/{id} (bounded) until `check` holds."""
    row: dict[str, Any] = {}
    try:
        async with asyncio.timeout(20):
            while not check(row := await api.get(f"/api/transfers/{transfer_id}")):
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"transfer {transfer_id} never {what}: {row}") from None
    return row


def ended(row: dict[str, Any]) -> bool:
    return row["status"] in ("DONE", "ERROR", "CANCELLED", "PAUSED")


# --------------------------------------------------------------------------- create / get


async def test_create_then_get_until_done(env: ApiEnv) -> None:
    env.daemon["timezone"] = "Europe/Paris"
    env.rule("out", "send")
    await env.start()
    data = make_file(env.folder("out") / "report.csv", 300_000)
    answer = await env.api.call(
        "POST",
        "/api/transfers",
        json_body={
            "rule": "out",
            "partner": "share",
            "file": "report.csv",
            "output": "in/r.csv",
            "transferInfo": {"batch": 7},
            "nbOfAttempts": 0,
        },
    )
    assert answer.status == 201, answer.text
    created = answer.body
    assert answer.headers["Location"] == f"/api/transfers/{created['id']}"
    assert (created["status"], created["isSend"], created["isServer"]) == ("PLANNED", True, False)
    assert created["transferInfo"] == {"batch": 7, "followID": created["followID"]}
    # The manual clock says 2024-01-01T00:00Z: in Paris that is 01:00+01:00.
    assert created["start"] == "2024-01-01T01:00:00+01:00"
    row = await wait_transfer(env.api, created["id"], ended, "ended")
    assert row["status"] == "DONE", row["errorMsg"]
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert (row["filesize"], row["progress"]) == (len(data), len(data))
    assert row["stop"].endswith("+01:00")
    assert (env.share / "in" / "r.csv").read_bytes() == data
    listed = await env.api.get("/api/transfers")
    assert [t["id"] for t in listed["transfers"]] == [created["id"]]
    assert listed["total"] == 1
    audit = await env.gw.store.list_audit()
    assert [(e["who"], e["action"], e["target"]) for e in audit] == [
        ("admin", "transfer.create", f"transfer/{created['id']}")
    ]


async def test_create_names_every_problem_and_changes_nothing(env: ApiEnv) -> None:
    env.rule("out", "send")
    await env.start()
    answer = await env.api.call(
        "POST",
        "/api/transfers",
        json_body={"rule": "nope", "partner": "ghost", "file": 12, "colour": "red"},
    )
    assert answer.status == 400
    assert sorted((e.get("field"), e["errorCode"]) for e in answer.errors) == [
        ("colour", "unknown_field"),
        ("file", "bad_value"),
        ("partner", "unknown_partner"),
        ("rule", "unknown_rule"),
    ]
    answer = await env.api.call(
        "POST",
        "/api/transfers",
        json_body={"rule": "out", "partner": "share", "file": "../etc/passwd", "start": "soon"},
    )
    assert answer.status == 400
    assert {e["field"] for e in answer.errors} == {"file", "start"}
    assert (await env.api.get("/api/transfers"))["total"] == 0
    audited = [e["action"] for e in await env.gw.store.list_audit()]
    assert audited == ["request.refused"] * 2, "only the refusals are audited"


@pytest.mark.parametrize(
    ("content_type", "data", "status", "code"),
    [
        ("text/plain", '{"rule": "out"}', 415, "unsupported_media_type"),
        (None, '{"rule": "out"}', 415, "unsupported_media_type"),
        ("application/json", "", 400, "missing_body"),
        ("application/json", '{"rule": "out",', 400, "malformed_json"),
        ("application/json", '{"rule": "out", "rule": "in"}', 400, "duplicate_key"),
        ("application/json", '{"nbOfAttempts": NaN}', 400, "malformed_json"),
        ("application/json", '["rule", "out"]', 400, "bad_value"),
        ("application/json", b'{"file": "\xff"}', 400, "malformed_body"),
    ],
)
async def test_bodies_that_are_not_json_objects(
    env: ApiEnv, content_type: str | None, data: str | bytes, status: int, code: str
) -> None:
    await env.start()
    answer = await env.api.call("POST", "/api/transfers", data=data, content_type=content_type)
    assert (answer.status, answer.codes()) == (status, [code]), answer.text


# --------------------------------------------------------------------------- listing


async def _planned(env: ApiEnv, count: int) -> list[dict[str, Any]]:
    """`count` transfers planned for later (they do not run), alternating rules."""
    made = []
    for i in range(count):
        rule = "out" if i % 2 == 0 else "out2"
        start = f"2030-06-{1 + (7 * i) % 28:02d}T12:00:00+00:00"
        answer = await env.api.call(
            "POST",
            "/api/transfers",
            json_body={"rule": rule, "partner": "share", "file": f"f{i}.txt", "start": start},
        )
        assert answer.status == 201, answer.text
        made.append(answer.body)
    return made


async def test_pagination_sort_and_filters(env: ApiEnv) -> None:
    env.rule("out", "send")
    env.rule("out2", "send")
    await env.start()
    made = await _planned(env, 25)
    api = env.api

    page = await api.get("/api/transfers")
    assert (len(page["transfers"]), page["total"], page["limit"], page["offset"]) == (20, 25, 20, 0)
    rest = await api.get("/api/transfers?offset=20")
    assert len(rest["transfers"]) == 5 and rest["total"] == 25
    ids = [t["id"] for t in page["transfers"] + rest["transfers"]]
    assert sorted(ids) == sorted(t["id"] for t in made), "pages cover everything once"

    def starts(rows: list[dict[str, Any]]) -> list[datetime]:
        return [datetime.fromisoformat(t["start"]) for t in rows]

    # A literal `+` arrives as a space: both spellings sort ascending.
    for query in ("sort=start+", "sort=start%2B", "sort=start"):
        rows = (await api.get(f"/api/transfers?limit=1000&{query}"))["transfers"]
        assert starts(rows) == sorted(starts(rows)) and len(rows) == 25, query
    rows = (await api.get("/api/transfers?limit=1000&sort=start-"))["transfers"]
    assert starts(rows) == sorted(starts(rows), reverse=True)
    rows = (await api.get("/api/transfers?limit=3&sort=id-"))["transfers"]
    assert [t["id"] for t in rows] == sorted(ids, reverse=True)[:3]

    out2 = await api.get("/api/transfers?rule=out2&limit=100")
    assert out2["total"] == 12 and {t["rule"] for t in out2["transfers"]} == {"out2"}
    after = await api.get("/api/transfers?start=2030-06-15T12:00:00Z&limit=100")
    expected = [t["id"] for t in made if datetime.fromisoformat(t["start"]).day >= 15]
    assert sorted(t["id"] for t in after["transfers"]) == sorted(expected)
    # An offset given with a `+` that the client did not encode.
    after = await api.get("/api/transfers?start=2030-06-15T14:00:00+02:00&limit=100")
    assert sorted(t["id"] for t in after["transfers"]) == sorted(expected)
    await api.call("PUT", f"/api/transfers/{made[0]['id']}/pause")
    paused = await api.get("/api/transfers?status=PAUSED&status=CANCELLED")
    assert [t["id"] for t in paused["transfers"]] == [made[0]["id"]]
    both = await api.get("/api/transfers?status=PAUSED,planned&limit=100")
    assert both["total"] == 25
    follow = await api.get(f"/api/transfers?followID={made[3]['followID']}")
    assert [t["id"] for t in follow["transfers"]] == [made[3]["id"]]
    assert (await api.get("/api/transfers?partner=share"))["total"] == 25
    assert (await api.get("/api/transfers?account=acme"))["total"] == 0
    assert (await api.get("/api/transfers?offset=500"))["transfers"] == []


async def test_bad_queries_name_every_problem(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call(
        "GET",
        "/api/transfers?limit=0&offset=-1&sort=size%2B&status=NOPE&start=yesterday&colour=red"
        "&rule=",
    )
    assert answer.status == 400
    assert sorted(e["field"] for e in answer.errors) == [
        "colour",
        "limit",
        "offset",
        "rule",
        "sort",
        "start",
        "status",
    ]
    assert set(answer.codes()) == {"bad_query"}
    for query in ("limit=abc", "limit=1001", "limit=5&limit=6", "sort=id+-", "offset=1e3"):
        answer = await env.api.call("GET", f"/api/transfers?{query}")
        assert answer.status == 400 and answer.codes() == ["bad_query"], query


# --------------------------------------------------------------------------- operations


async def test_operations_on_a_planned_transfer(env: ApiEnv) -> None:
    env.rule("out", "send")
    env.rule("out2", "send")
    await env.start()
    api = env.api
    made = await _planned(env, 2)
    tid = made[0]["id"]
    answer = await api.call("PUT", f"/api/transfers/{tid}/pause")
    assert (answer.status, answer.body["status"]) == (202, "PAUSED")
    answer = await api.call("PUT", f"/api/transfers/{tid}/pause")
    assert answer.status == 409 and answer.codes() == ["wrong_status"]
    assert "PAUSED" in answer.errors[0]["message"]
    answer = await api.call("PUT", f"/api/transfers/{tid}/cancel")
    assert (answer.status, answer.body["status"]) == (202, "CANCELLED")
    assert answer.body["errorCode"] == "TeOk"
    for action in ("pause", "resume", "cancel"):
        answer = await api.call("PUT", f"/api/transfers/{tid}/{action}")
        assert answer.status == 409, action
    answer = await api.call("PUT", f"/api/transfers/{tid}/retry")
    assert answer.status == 201, answer.text
    new = answer.body
    assert answer.headers["Location"] == f"/api/transfers/{new['id']}" and new["id"] != tid
    assert (new["rule"], new["srcFilename"]) == ("out", "f0.txt")
    other = made[1]["id"]
    await api.call("PUT", f"/api/transfers/{other}/pause")
    answer = await api.call("PUT", f"/api/transfers/{other}/resume")
    assert (answer.status, answer.body["status"]) == (202, "PLANNED")
    for action in ("pause", "resume", "cancel", "retry"):
        answer = await api.call("PUT", f"/api/transfers/999/{action}")
        assert (answer.status, answer.codes()) == (404, ["not_found"]), action
    answer = await api.call("PUT", f"/api/transfers/{tid}/pause?now=1")
    assert answer.status == 400
    actions = [
        (e["action"], e["target"])
        for e in reversed(await env.gw.store.list_audit())
        if e["action"] != "request.refused"
    ]
    assert actions[2:] == [
        ("transfer.pause", f"transfer/{tid}"),
        ("transfer.cancel", f"transfer/{tid}"),
        ("transfer.retry", f"transfer/{tid}"),
        ("transfer.pause", f"transfer/{other}"),
        ("transfer.resume", f"transfer/{other}"),
    ]


async def _running(env: ApiEnv, size: int) -> tuple[int, bytes]:
    env.partners["share"]["max_rate"] = 8 * MiB
    env.rule("in", "receive")
    await env.start()
    data = make_file(env.share / "slow.bin", size)
    answer = await env.api.call(
        "POST",
        "/api/transfers",
        json_body={"rule": "in", "partner": "share", "file": "slow.bin", "nbOfAttempts": 0},
    )
    tid = answer.body["id"]
    await wait_transfer(
        env.api, tid, lambda r: r["status"] == "RUNNING" and r["progress"] > MiB, "under way"
    )
    return tid, data


async def test_pause_and_resume_a_running_transfer(env: ApiEnv) -> None:
    tid, data = await _running(env, 12 * MiB)
    answer = await env.api.call("PUT", f"/api/transfers/{tid}/pause")
    assert answer.status == 202, answer.text
    row = answer.body
    assert (row["status"], row["errorCode"]) == ("PAUSED", "TeStopped")
    assert 0 < row["progress"] < len(data)
    assert tid not in env.gw.engine.active, "the pipeline really stopped"
    held = row["progress"]
    await asyncio.sleep(0.2)
    assert (await env.api.get(f"/api/transfers/{tid}"))["progress"] == held, "nothing moves"
    env.partners["share"]["max_rate"] = 0
    env.gw.apply_config(env.load())
    answer = await env.api.call("PUT", f"/api/transfers/{tid}/resume")
    assert answer.status == 202
    row = await wait_transfer(env.api, tid, lambda r: r["status"] == "DONE", "done")
    assert (env.folder("in") / "slow.bin").read_bytes() == data
    assert row["sha256"] == hashlib.sha256(data).hexdigest()


async def test_cancel_a_running_transfer_then_retry(env: ApiEnv) -> None:
    tid, data = await _running(env, 12 * MiB)
    tmp = Path((await env.api.get(f"/api/transfers/{tid}"))["localFilepath"]).parent / ".tmp"
    answer = await env.api.call("PUT", f"/api/transfers/{tid}/cancel")
    assert answer.status == 202
    assert (answer.body["status"], answer.body["errorCode"]) == ("CANCELLED", "TeCanceled")
    assert tid not in env.gw.engine.active
    assert list(tmp.iterdir()) == [], "the partial file is gone"
    env.partners["share"]["max_rate"] = 0
    env.gw.apply_config(env.load())
    answer = await env.api.call("PUT", f"/api/transfers/{tid}/retry")
    assert answer.status == 201
    row = await wait_transfer(env.api, answer.body["id"], ended, "ended")
    assert row["status"] == "DONE" and row["progress"] == len(data)
    assert (env.folder("in") / "slow.bin").read_bytes() == data


async def test_cancel_every_transfer_of_some_statuses(env: ApiEnv) -> None:
    env.rule("out", "send")
    env.rule("out2", "send")
    await env.start()
    made = await _planned(env, 4)
    await env.api.call("PUT", f"/api/transfers/{made[0]['id']}/pause")
    answer = await env.api.call("DELETE", "/api/transfers?status=PAUSED")
    assert answer.status == 202
    assert answer.body == {"cancelled": [made[0]["id"]], "count": 1}
    answer = await env.api.call("DELETE", "/api/transfers?status=all")
    assert answer.body["cancelled"] == [t["id"] for t in made[1:]]
    rows = (await env.api.get("/api/transfers?status=CANCELLED"))["transfers"]
    assert len(rows) == 4
    for query in ("", "?status=DONE", "?status=FOO", "?status=PLANNED&rule=out"):
        answer = await env.api.call("DELETE", f"/api/transfers{query}")
        assert answer.status == 400, query
    accepted = [e for e in await env.gw.store.list_audit() if e["action"] != "request.refused"]
    assert accepted[0]["details"]["ids"] == [t["id"] for t in made[1:]]


# --------------------------------------------------------------------------- pre-registered


async def _preregister(env: ApiEnv, **body: Any) -> Any:
    return await env.api.call("POST", "/api/transfers/preregister", json_body=body)


async def test_preregistered_upload_is_taken_over_by_the_partner(env: ApiEnv) -> None:
    env.accounts["acme"] = {}
    env.rule("in", "receive", allow={"accounts": ["acme"]})
    await env.start()
    answer = await _preregister(
        env, rule="in", account="acme", file="order.xml", validFor=3600, transferInfo={"po": 9}
    )
    assert answer.status == 201, answer.text
    pre = answer.body
    assert answer.headers["Location"] == f"/api/transfers/{pre['id']}"
    assert (pre["status"], pre["isServer"], pre["isSend"]) == ("AVAILABLE", True, False)
    assert pre["expires"] == "2024-01-01T01:00:00+00:00" and pre["nextAttempt"] is None
    handle = await env.server().open_transfer("acme", "/in/order.xml", Direction.RECEIVE)
    assert handle.transfer_id == pre["id"], "the partner's upload continues the registered row"
    await handle.write(0, b"<order/>")
    await handle.close()
    row = await env.api.get(f"/api/transfers/{pre['id']}")
    assert (row["status"], row["requested"], row["transferInfo"]["po"]) == ("DONE", "test", 9)
    assert (env.folder("in") / "acme" / "order.xml").read_bytes() == b"<order/>"
    assert (await env.api.get("/api/transfers"))["total"] == 1


async def test_preregistered_transfer_expires(env: ApiEnv) -> None:
    env.accounts["acme"] = {}
    env.rule("in", "receive", allow="all")
    await env.start()
    pre = (await _preregister(env, rule="in", account="acme", file="late.bin", validFor=60)).body
    env.clock.advance(59)
    assert await env.gw.expirer.sweep() == []
    assert (await env.api.get(f"/api/transfers/{pre['id']}"))["status"] == "AVAILABLE"
    env.clock.advance(2)
    row = await wait_transfer(env.api, pre["id"], lambda r: r["status"] != "AVAILABLE", "expired")
    assert (row["status"], row["errorCode"]) == ("ERROR", ErrorCode.TeExpired.value)
    # Too late: the upload is a transfer of its own, the expired one stays as it was.
    handle = await env.server().open_transfer("acme", "/in/late.bin", Direction.RECEIVE)
    assert handle.transfer_id != pre["id"]
    await handle.write(0, b"x")
    await handle.close()
    assert (await env.api.get(f"/api/transfers/{pre['id']}"))["status"] == "ERROR"


async def test_preregistered_download(env: ApiEnv) -> None:
    env.accounts["acme"] = {}
    env.rule("out", "send", allow="all", shared_folder=True)
    await env.start()
    (env.folder("out") / "price.csv").write_bytes(b"1,2,3\n")
    pre = (await _preregister(env, rule="out", account="acme", file="price.csv")).body
    assert pre["expires"] == "2024-01-02T00:00:00+00:00", "one day by default"
    handle = await env.server().open_transfer("acme", "/out/price.csv", Direction.SEND)
    assert handle.transfer_id == pre["id"]
    assert await handle.read(0, 100) == b"1,2,3\n"
    await handle.close()
    row = await env.api.get(f"/api/transfers/{pre['id']}")
    assert row["status"] == "DONE" and row["sha256"] == hashlib.sha256(b"1,2,3\n").hexdigest()


async def test_preregister_names_every_problem(env: ApiEnv) -> None:
    env.accounts["acme"] = {}
    env.accounts["other"] = {}
    env.rule("in", "receive", allow={"accounts": ["acme"]})
    await env.start()
    answer = await _preregister(
        env, rule="in", account="other", file="a/b", validFor=10, expires=FUTURE, extra=1
    )
    assert answer.status == 400
    assert sorted((e["field"], e["errorCode"]) for e in answer.errors) == [
        ("account", "not_allowed"),
        ("expires", "bad_value"),
        ("extra", "unknown_field"),
        ("file", "bad_value"),
    ]
    answer = await _preregister(env, rule="nope", account="ghost", file="x", validFor=-1)
    assert sorted(answer.codes()) == ["bad_value", "unknown_account", "unknown_rule"]
    answer = await _preregister(env, rule="in", account="acme", file="x", expires="2020-01-01")
    assert answer.codes() == ["bad_value"] and "past" in answer.errors[0]["message"]
    assert (await env.api.get("/api/transfers"))["total"] == 0


# --------------------------------------------------------------------------- HTTP itself


async def test_unknown_routes_and_methods_answer_json(env: ApiEnv) -> None:
    await env.start()
    answer = await env.api.call("GET", "/api/nothing-here")
    assert (answer.status, answer.codes()) == (404, ["not_found"])
    answer = await env.api.call("DELETE", "/api/transfers/1")
    assert (answer.status, answer.codes()) == (405, ["method_not_allowed"])
    assert "GET" in answer.headers["Allow"]
    for path in (
        "/api/transfers/abc",
        "/api/transfers/99999999999999999999999",
        "/api/transfers/7",
    ):
        answer = await env.api.call("GET", path)
        assert (answer.status, answer.codes()) == (404, ["not_found"]), path
    answer = await env.api.call(
        "POST",
        "/api/transfers",
        data=b"{" + b" " * (2 << 20) + b"}",
        content_type="application/json",
    )
    assert (answer.status, answer.codes()) == (413, ["body_too_large"])
    assert answer.headers["Cache-Control"] == "no-store"
