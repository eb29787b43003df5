"""`/v2/transfers` (Waarp R66 REST v2): seed 004's request and answer, R66's error codes
for each kind of bad body (several at once), the list with its filters, and restart,
stop and cancel, against a real gateway over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.model import Status
from tests.api_support import ApiEnv
from tests.gateway_env import make_file

SEED_BODY = {
    "ruleName": "default",
    "filename": "example_file.txt",
    "requested": "server2",
    "blockSize": 65536,
    "fileInfo": "This is comment example.",
    "start": "1970-01-01T01:00:00+00:00",
}
R66_FIELDS = {
    "id", "globalStep", "globalLastStep", "step", "rank", "status", "stepStatus",
    "originalFilename", "filename", "ruleName", "blockSize", "fileInfo", "transferInfo",
    "start", "stop", "requester", "requested",
}  # fmt: skip


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    (tmp_path / "server2").mkdir()
    environment.partners["server2"] = {"protocol": "local", "root": str(tmp_path / "server2")}
    environment.rule("default", "send")
    environment.rule("restricted", "send", allow={"partners": ["share"]})
    await environment.start()
    yield environment
    await environment.stop()


async def post(env: ApiEnv, body: Any = None, **kw: Any) -> Any:
    if body is not None:
        kw["json_body"] = body
    kw.setdefault("content_type", "application/json")
    return await env.api.call("POST", "/v2/transfers", **kw)


def codes(answer: Any) -> list[int]:
    assert answer.status == 400, answer.text
    found = [e["errorCode"] for e in answer.body["errors"]]
    assert all(isinstance(c, int) for c in found)
    return sorted(found)


async def test_seed_request_creates_and_runs_a_transfer(env: ApiEnv) -> None:
    data = make_file(env.folder("default") / "example_file.txt", 200_000)
    answer = await post(env, SEED_BODY)
    assert answer.status == 201, answer.text
    created = answer.body
    assert set(created) == R66_FIELDS
    assert answer.headers["transferURI"] == f"/v2/transfers/{created['id']}"
    assert created["status"] == "TOSUBMIT"
    assert created["globalStep"] == created["globalLastStep"] == "NOTASK"
    assert (created["step"], created["rank"], created["blockSize"]) == (0, 0, 65536)
    assert created["ruleName"] == "default" and created["requested"] == "server2"
    assert created["fileInfo"] == "This is comment example."
    assert created["originalFilename"] == "example_file.txt"
    assert created["filename"].endswith("/default/example_file.txt")

    row = await env.wait_end(created["id"])
    assert row.status == Status.DONE, row
    assert (env.root / "server2" / "example_file.txt").read_bytes() == data
    done = await env.api.get(answer.headers["transferURI"])
    assert done["status"] == "DONE"
    assert done["globalStep"] == done["globalLastStep"] == "ALLDONETASK"
    assert done["rank"] == 200_000 // 65536 and done["stepStatus"] == "TeOk"
    assert done["stop"] is not None
    # The same transfer in Waarp Gateway's shape (seed 003).
    gateway_shape = await env.api.get(f"/api/transfers/{created['id']}")
    for name in ("id", "isServer", "rule", "requester", "requested", "protocol",
                 "localFilepath", "remoteFilepath", "start", "status", "step", "progress",
                 "transferInfo"):  # fmt: skip
        assert name in gateway_shape, name
    assert gateway_shape["progress"] == 200_000 and gateway_shape["status"] == "DONE"
    assert gateway_shape["transferInfo"]["fileInfo"] == "This is comment example."


async def test_each_kind_of_bad_body_has_its_code(env: ApiEnv) -> None:
    make_file(env.folder("restricted") / "r.txt", 10)
    assert codes(await post(env, data="")) == [1]
    assert codes(await post(env, data="{bad")) == [2]
    assert codes(await post(env, data='{"ruleName": "a", "ruleName": "b"}')) == [3]
    missing = await post(env, {})
    assert codes(missing) == [6, 6, 6]
    messages = " ".join(e["message"] for e in missing.body["errors"])
    for name in ("ruleName", "filename", "requested"):
        assert f"'{name}'" in messages
    several = await post(
        env,
        {"ruleName": "nope", "filename": "x", "requested": "ghost", "colour": 1, "blockSize": 0},
    )
    assert codes(several) == [5, 7, 10, 11]
    assert codes(await post(env, {**SEED_BODY, "filename": "not-there.txt"})) == [9]
    assert codes(await post(env, {**SEED_BODY, "ruleName": "restricted", "filename": "r.txt"})) == [
        12
    ]
    assert codes(await post(env, {**SEED_BODY, "filename": "../escape", "fileInfo": 3})) == [7, 7]
    assert codes(await post(env, {**SEED_BODY, "start": "not a date"})) == [7]
    # Nothing was created by any of them.
    assert (await env.api.get("/v2/transfers"))["totalResults"] == 0
    wrong_type = await post(env, SEED_BODY, content_type="text/plain")
    assert wrong_type.status == 415


async def test_list_filters_and_query_errors(env: ApiEnv) -> None:
    make_file(env.folder("default") / "example_file.txt", 1000)
    make_file(env.folder("default") / "other.txt", 1000)
    first = (await post(env, SEED_BODY)).body
    await env.wait_end(first["id"])
    later = {**SEED_BODY, "filename": "other.txt", "start": "2100-01-01T00:00:00+00:00"}
    second = (await post(env, later)).body

    everything = await env.api.get("/v2/transfers")
    assert everything["totalResults"] == 2
    assert [t["id"] for t in everything["results"]] == [first["id"], second["id"]]
    assert set(everything["results"][0]) == R66_FIELDS
    newest = await env.api.get("/v2/transfers?order=descId&limit=1")
    assert newest["totalResults"] == 2 and [t["id"] for t in newest["results"]] == [second["id"]]
    done = await env.api.get("/v2/transfers?status=DONE&ruleName=default&partner=server2")
    assert [t["id"] for t in done["results"]] == [first["id"]]
    waiting = await env.api.get("/v2/transfers?status=TOSUBMIT")
    assert [t["id"] for t in waiting["results"]] == [second["id"]]
    by_name = await env.api.get("/v2/transfers?filename=other.txt")
    assert [t["id"] for t in by_name["results"]] == [second["id"]]
    late = await env.api.get("/v2/transfers?startTrans=2099-01-01T00:00:00Z")
    assert [t["id"] for t in late["results"]] == [second["id"]]
    ended = await env.api.get("/v2/transfers?stopTrans=2099-01-01T00:00:00Z")
    assert [t["id"] for t in ended["results"]] == [first["id"]]
    assert (await env.api.get("/v2/transfers?status=UNKNOWN"))["totalResults"] == 0

    bad = await env.api.call("GET", "/v2/transfers?startTrans=not_a_date&status=not_a_status")
    assert bad.status == 400
    assert bad.body == {
        "errors": [
            {
                "message": "Query parameter 'startTrans' : illegal value 'not_a_date'.",
                "errorCode": 4,
            },
            {"message": "Query parameter 'status' : illegal value 'not_a_status'.", "errorCode": 4},
        ]
    }
    assert codes(await env.api.call("GET", "/v2/transfers?limit=0&colour=red")) == [4, 4]


async def test_stop_restart_and_cancel(env: ApiEnv) -> None:
    make_file(env.folder("default") / "example_file.txt", 1000)
    body = {**SEED_BODY, "start": "2100-01-01T00:00:00+00:00"}  # stays planned
    t = (await post(env, body)).body
    uri = f"/v2/transfers/{t['id']}"

    stopped = await env.api.call("PUT", f"{uri}/stop")
    assert stopped.status == 202, stopped.text
    assert stopped.body["status"] == "INTERRUPTED"
    assert (await env.row(t["id"])).status == Status.PAUSED

    restarted = await env.api.call("PUT", f"{uri}/restart")
    assert restarted.status == 202 and restarted.body["status"] == "TOSUBMIT"
    assert (await env.row(t["id"])).status in (Status.PLANNED, Status.RUNNING, Status.DONE)
    await env.wait_end(t["id"])

    other = (await post(env, body)).body
    cancelled = await env.api.call("PUT", f"/v2/transfers/{other['id']}/cancel")
    assert cancelled.status == 202
    assert cancelled.body["status"] == "INERROR" and cancelled.body["globalStep"] == "ERRORTASK"
    assert cancelled.body["stepStatus"] == "TeCanceled"
    again = await env.api.call("PUT", f"/v2/transfers/{other['id']}/cancel")
    assert again.status == 409 and again.body["errors"][0]["errorCode"] == 13
    assert (await env.api.call("PUT", "/v2/transfers/999/stop")).status == 404
    assert (await env.api.call("GET", "/v2/transfers/999")).status == 404
    # R66 routes need the same permissions as /api/transfers.
    env_denied = await env.api.call("GET", "/v2/transfers", auth="")
    assert env_denied.status == 401
