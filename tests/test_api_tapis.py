"""`/v3/files/transfers` (Tapis Files): a task with a folder of a few hundred files
that completes with its children, an optional element that fails as FAILED_OPT while
the task completes, the envelope, includeSummary and details, the list, DELETE =
cancel, the 10,000-file cap (a setting), bad requests, and `X-Tapis-Token`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gatewayd.model import Status
from gatewayd.store.base import TransferFilter
from tests.api_support import ApiEnv
from tests.gateway_env import make_file

BASE = "/v3/files/transfers"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    environment.rule("out", "send")
    environment.rule("in", "receive")
    # A few hundred children run side by side, as a real gateway would run them.
    environment.extra["scheduler"] = {"attempts": 0, "max_transfers": 64, "max_per_partner": 64}
    yield environment
    await environment.stop()


async def create(env: ApiEnv, body: dict[str, Any], **kw: Any) -> Any:
    return await env.api.call("POST", BASE, json_body=body, **kw)


async def task_of(env: ApiEnv, uuid: str, suffix: str = "") -> dict[str, Any]:
    answer = await env.api.call("GET", f"{BASE}/{uuid}{suffix}")
    assert answer.status == 200, answer.text
    assert answer.body["status"] == "success" and set(answer.body) == {
        "status", "message", "result", "version", "metadata",
    }  # fmt: skip
    result: dict[str, Any] = answer.body["result"]
    return result


async def wait_task(env: ApiEnv, uuid: str, *statuses: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            task = await task_of(env, uuid, "?includeSummary=true")
            if task["status"] in statuses:
                return task
            await asyncio.sleep(0.1)  # each read lists every child


async def test_a_folder_and_an_optional_failure(env: ApiEnv) -> None:
    await env.start()
    folder = env.folder("out") / "batch"
    sizes = {}
    for i in range(300):
        name = f"sub{i % 3}/f{i:03}.dat"
        sizes[name] = len(make_file(folder / name, 100 + i, seed=i))
    make_file(env.folder("out") / ".tmp" / "not-mine.part", 10)  # the rule's temp folder
    make_file(env.share / "remote.txt", 5000)
    body = {
        "tag": "nightly",
        "elements": [
            {"sourceURI": "tapis://local/out/batch", "destinationURI": "tapis://share/copy"},
            {"sourceURI": "tapis://share/remote.txt", "destinationURI": "tapis://local/in/r.txt"},
            {
                "sourceURI": "tapis://local/out/missing.txt",
                "destinationURI": "tapis://share/m.txt",
                "optional": True,
            },
        ],
    }
    answer = await create(env, body)
    assert answer.status == 200, answer.text
    assert answer.body["status"] == "success"
    created = answer.body["result"]
    uuid = created["uuid"]
    assert len(uuid) == 36 and created["tag"] == "nightly"
    assert created["totalTransfers"] == 301
    assert created["parentTasks"][2]["status"] == "FAILED_OPT"
    assert "no such file" in created["parentTasks"][2]["errorMessage"]

    done = await wait_task(env, uuid, "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED", done
    assert done["completeTransfers"] == done["totalTransfers"] == 301
    assert done["estimatedTotalBytes"] == sum(sizes.values()) + 5000
    assert done["endTime"] is not None and done["errorMessage"] is None
    for name, size in sizes.items():
        assert (env.share / "copy" / name).stat().st_size == size
    assert (env.folder("in") / "r.txt").stat().st_size == 5000
    assert not (env.share / "copy" / ".tmp").exists()

    details = await task_of(env, uuid, "/details")
    parents = details["parentTasks"]
    assert [p["status"] for p in parents] == ["COMPLETED", "COMPLETED", "FAILED_OPT"]
    assert len(parents[0]["children"]) == 300 and parents[2]["children"] == []
    child = next(c for c in parents[0]["children"] if c["sourceURI"].endswith("f007.dat"))
    assert child["sourceURI"] == "tapis://local/out/batch/sub1/f007.dat"
    assert child["destinationURI"] == "tapis://share/copy/sub1/f007.dat"
    assert child["status"] == "COMPLETED" and child["bytesTransferred"] == 107
    assert parents[1]["children"][0]["sourceURI"] == "tapis://share/remote.txt"
    # Without includeSummary only the top-level attributes.
    plain = await task_of(env, uuid)
    assert "totalTransfers" not in plain and plain["status"] == "COMPLETED"


async def test_a_failing_child_of_an_optional_element(env: ApiEnv) -> None:
    await env.start()
    make_file(env.folder("out") / "a.txt", 10)
    body = {
        "elements": [
            {"sourceURI": "tapis://local/out/a.txt", "destinationURI": "tapis://share/a.txt"},
            {
                "sourceURI": "tapis://share/absent.txt",
                "destinationURI": "tapis://local/in/absent.txt",
                "optional": True,
            },
        ]
    }
    uuid = (await create(env, body)).body["result"]["uuid"]
    done = await wait_task(env, uuid, "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    details = await task_of(env, uuid, "/details")
    assert [p["status"] for p in details["parentTasks"]] == ["COMPLETED", "FAILED_OPT"]
    assert details["parentTasks"][1]["children"][0]["status"] == "FAILED_OPT"

    body["elements"][1]["optional"] = False
    required = (await create(env, body)).body["result"]["uuid"]
    failed = await wait_task(env, required, "COMPLETED", "FAILED")
    assert failed["status"] == "FAILED" and "absent.txt" in (failed["errorMessage"] or "")


async def test_cap_cancel_list_and_errors(env: ApiEnv) -> None:
    env.extra["api"] = {"tapis_max_files": 5}
    env.rule("later", "send")
    await env.start()
    for i in range(6):
        make_file(env.folder("out") / "six" / f"{i}.txt", 10)
    capped = await create(
        env,
        {"elements": [{"sourceURI": "tapis://local/out/six", "destinationURI": "tapis://share/s"}]},
    )
    task = capped.body["result"]
    assert task["status"] == "FAILED" and task["totalTransfers"] == 0
    assert "more than 5 files" in task["errorMessage"]

    # A task whose children wait (no free slot in the scheduler), then cancelled.
    env.gw.scheduler.set_limits(max_transfers=0, max_per_partner=0, partner_limits={})
    make_file(env.folder("out") / "w.txt", 10)
    waiting = (
        await create(
            env,
            {
                "tag": "w",
                "elements": [
                    {"sourceURI": "tapis://local/out/w.txt", "destinationURI": "tapis://share/w"}
                ],
            },
        )
    ).body["result"]
    assert waiting["status"] == "STAGED"
    cancelled = await env.api.call("DELETE", f"{BASE}/{waiting['uuid']}")
    assert cancelled.status == 200 and cancelled.body["status"] == "success"
    after = await task_of(env, waiting["uuid"], "/details")
    assert after["status"] == "CANCELLED"
    assert after["parentTasks"][0]["children"][0]["status"] == "CANCELLED"
    rows, _ = await env.gw.store.list_transfers(TransferFilter(follow_id=waiting["uuid"]))
    assert [r.status for r in rows] == [Status.CANCELLED]

    listed = await env.api.call("GET", f"{BASE}?limit=1")
    assert listed.status == 200
    assert [t["uuid"] for t in listed.body["result"]] == [waiting["uuid"]]  # most recent first
    both = await env.api.call("GET", f"{BASE}?offset=0")
    assert [t["uuid"] for t in both.body["result"]] == [waiting["uuid"], task["uuid"]]

    bad = await create(
        env,
        {
            "colour": 1,
            "elements": [
                {"sourceURI": "http://x/y", "destinationURI": "tapis://share/a"},
                {"sourceURI": "tapis://share/a", "destinationURI": "tapis://share/b"},
                {"sourceURI": "tapis://local/nope/a", "destinationURI": "tapis://share/b"},
                {"sourceURI": "tapis://local/in/a", "destinationURI": "tapis://share/b"},
                {"sourceURI": "tapis://local/out/../etc", "destinationURI": "tapis://ghost/b"},
            ],
        },
    )
    assert bad.status == 400 and bad.body["status"] == "error" and bad.body["result"] is None
    message = bad.body["message"]
    for expected in ("colour", "elements[0].sourceURI", "elements[1]: one side",
                     "unknown rule 'nope'", "receive rule", "elements[4].sourceURI"):  # fmt: skip
        assert expected in message, (expected, message)
    assert (await env.api.call("GET", f"{BASE}?limit=x")).status == 400
    missing = await env.api.call("GET", f"{BASE}/00000000-0000-0000-0000-000000000000")
    assert missing.status == 404 and missing.body["status"] == "error"


async def test_x_tapis_token_carries_a_bearer_token(env: ApiEnv) -> None:
    await env.start()
    issued = await env.api.call("POST", "/api/tokens", json_body={"comment": "tapis"})
    assert issued.status == 201, issued.text
    token = issued.body["token"]
    assert (await env.api.call("GET", BASE, auth="")).status == 401
    async with aiohttp.ClientSession() as session:
        url = env.api.base + BASE
        async with session.get(url, headers={"X-Tapis-Token": token}) as r:
            assert r.status == 200, await r.text()
        async with session.get(url, headers={"X-Tapis-Token": "not-a-token"}) as r:
            assert r.status == 401
        # Only the Tapis routes read that header.
        async with session.get(
            env.api.base + "/api/transfers", headers={"X-Tapis-Token": token}
        ) as r:
            assert r.status == 401


async def test_a_partner_folder_is_one_child_per_file(env: ApiEnv) -> None:
    await env.start()
    sizes = {
        f"r{i}.csv": len(make_file(env.share / "feed" / f"r{i}.csv", 50 + i)) for i in range(4)
    }
    make_file(env.share / "feed" / "deeper" / "not-me.csv", 7)  # subfolders are left out
    body = {
        "elements": [{"sourceURI": "tapis://share/feed", "destinationURI": "tapis://local/in/"}]
    }
    answer = await create(env, body)
    assert answer.status == 200, answer.text
    uuid = answer.body["result"]["uuid"]
    assert answer.body["result"]["totalTransfers"] == 4
    done = await wait_task(env, uuid, "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED", done
    assert done["estimatedTotalBytes"] == sum(sizes.values())
    for name, size in sizes.items():
        assert (env.folder("in") / name).stat().st_size == size
    assert not (env.folder("in") / "not-me.csv").exists()
    details = await task_of(env, uuid, "/details")
    sources = sorted(c["sourceURI"] for c in details["parentTasks"][0]["children"])
    assert sources == [f"tapis://share/feed/r{i}.csv" for i in range(4)]
