"""Schedules: cron times mapped onto a time zone across its DST changes, firings made by
an in-process gateway driven by a manual clock (no sleeps), catch-up after a stop, the
one record per firing, and configuration mistakes reported with file and line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from gatewayd.automation.cron import Cron
from gatewayd.automation.schedules import ScheduleService
from gatewayd.clock import ManualClock
from gatewayd.config import ConfigError, load_config
from gatewayd.model import Status, Transfer
from gatewayd.store import Store
from tests.gateway_env import GatewayEnv
from tests.store_backends import Backend

pytestmark = pytest.mark.timeout(60)

PARIS = ZoneInfo("Europe/Paris")
WAIT = 10.0


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# ---------------------------------------------------------------------- the arithmetic


def fires(expression: str, start: datetime, end: datetime, tz: Any = PARIS) -> list[datetime]:
    cron, found, at = Cron(expression, tz), [], start
    while (at := cron.next_after(at)) <= end:
        found.append(at)
    return found


def test_skipped_hour_fires_once_at_the_next_valid_minute() -> None:
    # 2024-03-31 in Paris: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
    assert fires("*/20 1-3 * * *", utc(2024, 3, 30, 23, 0), utc(2024, 3, 31, 2, 0)) == [
        utc(2024, 3, 31, 0, 0),  # 01:00 CET
        utc(2024, 3, 31, 0, 20),
        utc(2024, 3, 31, 0, 40),
        utc(2024, 3, 31, 1, 0),  # 02:00, 02:20, 02:40 (skipped) and 03:00: once, at 03:00
        utc(2024, 3, 31, 1, 20),  # 03:20 CEST
        utc(2024, 3, 31, 1, 40),
    ]
    # A daily time inside the gap fires at the end of the gap that day, then as usual.
    assert fires("30 2 * * *", utc(2024, 3, 30, 12), utc(2024, 4, 1, 12)) == [
        utc(2024, 3, 31, 1, 0),
        utc(2024, 4, 1, 0, 30),
    ]


def test_repeated_hour_fires_once() -> None:
    # 2024-10-27 in Paris: 03:00 CEST goes back to 02:00 CET (01:00 UTC).
    assert fires("*/30 2 * * *", utc(2024, 10, 26, 22), utc(2024, 10, 27, 4)) == [
        utc(2024, 10, 27, 0, 0),  # 02:00 CEST
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST; 02:00 and 02:30 CET do not fire again
    ]
    assert fires("0 * * * *", utc(2024, 10, 26, 23, 30), utc(2024, 10, 27, 2, 30)) == [
        utc(2024, 10, 27, 0, 0),  # 02:00 CEST
        utc(2024, 10, 27, 2, 0),  # 03:00 CET; the hour 02:00 CET (01:00 UTC) is a repeat
    ]


def test_seconds_and_latest_firing() -> None:
    cron = Cron("*/15 * * * * *", UTC)
    assert cron.next_after(utc(2024, 1, 1, 0, 0, 7)) == utc(2024, 1, 1, 0, 0, 15)
    daily = Cron("0 2 * * mon-fri", PARIS)
    # Saturday 2024-06-08 noon: the latest weekday 02:00 was Friday's.
    assert daily.latest_until(utc(2024, 6, 8, 12)) == utc(2024, 6, 7, 0, 0)
    assert daily.latest_until(utc(2024, 6, 7, 0, 0)) == utc(2024, 6, 7, 0, 0)
    assert daily.next_after(utc(2024, 6, 7, 0, 0)) == utc(2024, 6, 10, 0, 0)


# ---------------------------------------------------------------------- in a gateway


def schedule_env(tmp_path: Path, start: datetime, **schedule: Any) -> GatewayEnv:
    env = GatewayEnv(tmp_path)
    env.clock = ManualClock(start)
    env.daemon["timezone"] = "Europe/Paris"
    env.rule("reports", "send")
    body = {
        "name": "daily",
        "cron": "0 2 * * *",
        "transfer": {"rule": "reports", "partner": "share", "file": "daily.csv"},
    }
    body.update(schedule)
    write_schedule(env, body)
    return env


def write_schedule(env: GatewayEnv, body: dict[str, Any]) -> Path:
    folder = env.root / "schedules"
    folder.mkdir(exist_ok=True)
    path = folder / f"{body['name']}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture
async def envs() -> AsyncIterator[list[GatewayEnv]]:
    started: list[GatewayEnv] = []
    yield started
    for env in started:
        await env.stop()


async def start(env: GatewayEnv, envs: list[GatewayEnv]) -> ScheduleService:
    envs.append(env)
    await env.start()
    rule = env.gw.loaded.config.rules["reports"]
    folder = env.gw.loaded.paths.rule_folder(rule)
    (folder / "daily.csv").write_text("a,b\n")
    return env.gw.schedules


async def fire_times(store: Store, name: str = "daily") -> list[datetime]:
    transfers, _ = await store_transfers(store)
    return sorted(
        datetime.fromisoformat(t.transfer_info["fireTime"])
        for t in transfers
        if t.transfer_info.get("schedule") == name
    )


async def store_transfers(store: Store) -> tuple[list[Transfer], int]:
    from gatewayd.store.base import TransferFilter

    return await store.list_transfers(TransferFilter(limit=1000))


async def step(env: GatewayEnv, service: ScheduleService, seconds: float) -> None:
    """Move the manual clock and wait (bounded) for the schedule loop's next pass: its
    wait is never longer than a minute of the clock."""
    before = service.passes
    assert isinstance(env.clock, ManualClock)
    env.clock.advance(seconds)
    async with asyncio.timeout(WAIT):
        while service.passes == before:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize(
    ("begin", "minutes", "expected"),
    [
        # Spring forward: 02:00 and 02:30 do not exist; they fire once, at 03:00 CEST.
        (
            utc(2024, 3, 30, 23, 45),
            135,
            [
                *(utc(2024, 3, 31, 0, 0), utc(2024, 3, 31, 0, 30)),
                *(utc(2024, 3, 31, 1, 0), utc(2024, 3, 31, 1, 30)),
            ],
        ),
        # Fall back: 02:00 and 02:30 happen twice; each fires once (the first time).
        (
            utc(2024, 10, 26, 22, 45),
            255,
            [
                *(utc(2024, 10, 26, 23, 0), utc(2024, 10, 26, 23, 30)),
                *(utc(2024, 10, 27, 0, 0), utc(2024, 10, 27, 0, 30)),
                *(utc(2024, 10, 27, 2, 0), utc(2024, 10, 27, 2, 30)),
            ],
        ),
    ],
    ids=["skipped-hour", "repeated-hour"],
)
async def test_gateway_fires_at_the_right_minutes_across_dst(
    tmp_path: Path,
    envs: list[GatewayEnv],
    begin: datetime,
    minutes: int,
    expected: list[datetime],
) -> None:
    env = schedule_env(tmp_path, begin, cron="*/30 1-3 * * *")
    service = await start(env, envs)
    seen: list[datetime] = []
    ended: set[int] = set()
    for _ in range(minutes):
        await step(env, service, 60)
        now = env.clock.now()
        seen = await fire_times(env.gw.store)
        # Never early, never late by more than the minute just moved.
        assert seen == [t for t in expected if t <= now], f"at {now}"
        # The transfers were made and run like any other (the file exists: DONE). Each
        # ends before the clock moves on, as the half hour between two firings would let
        # it: two sends of one file to one partner at once race for its temporary name.
        transfers, _ = await store_transfers(env.gw.store)
        for t in transfers:
            if t.id is not None and t.id not in ended:
                assert (await env.wait_end(t.id)).status == Status.DONE
                ended.add(t.id)
    assert seen == expected
    assert len(ended) == len(expected)
    state = await env.gw.store.schedule_state("daily")
    assert state is not None and state.fires == len(expected)
    assert state.last_fire == expected[-1]


@pytest.mark.parametrize("catch_up", ["once", "skip"])
async def test_catch_up_after_a_stop(tmp_path: Path, envs: list[GatewayEnv], catch_up: str) -> None:
    begin = utc(2024, 6, 3, 9, 59)  # 11:59 in Paris
    env = schedule_env(tmp_path, begin, cron="0 * * * *", catch_up=catch_up)
    service = await start(env, envs)
    await step(env, service, 60)
    assert await fire_times(env.gw.store) == [utc(2024, 6, 3, 10, 0)]
    await env.stop()

    # Down for five hours: the firings of 11:00 to 15:00 UTC are missed.
    again = GatewayEnv(tmp_path)
    again.clock = ManualClock(utc(2024, 6, 3, 15, 20))
    again.daemon, again.rules = env.daemon, env.rules
    service = await start(again, envs)
    missed = [utc(2024, 6, 3, 15, 0)] if catch_up == "once" else []
    assert await fire_times(again.gw.store) == [utc(2024, 6, 3, 10, 0), *missed]
    state = await again.gw.store.schedule_state("daily")
    assert state is not None and state.fires == 1 + len(missed)
    assert service.stats("daily").skipped == (0 if missed else 1)
    # Then on time again.
    for _ in range(40):
        await step(again, service, 60)
    assert await fire_times(again.gw.store) == [
        utc(2024, 6, 3, 10, 0),
        *missed,
        utc(2024, 6, 3, 16),
    ]

    # A restart right after misses nothing: nothing is fired twice.
    await again.stop()
    third = GatewayEnv(tmp_path)
    third.clock = ManualClock(utc(2024, 6, 3, 16, 0, 30))
    third.daemon, third.rules = env.daemon, env.rules
    await start(third, envs)
    assert len(await fire_times(third.gw.store)) == 2 + len(missed)


async def test_fire_now_and_pause(tmp_path: Path, envs: list[GatewayEnv]) -> None:
    env = schedule_env(tmp_path, utc(2024, 6, 3, 23, 59), cron="0 * * * *")
    service = await start(env, envs)
    result = await service.fire_now("daily")
    assert result.transfer is not None and result.transfer.id is not None
    assert result.transfer.rule == "reports" and result.transfer.partner == "share"
    await service.set_paused("daily", True)
    await step(env, service, 60)  # 00:00 UTC: due, but paused
    assert await fire_times(env.gw.store) == [utc(2024, 6, 3, 23, 59)]
    assert service.stats("daily").skipped == 1
    await service.set_paused("daily", False)
    for _ in range(60):
        await step(env, service, 60)
    assert await fire_times(env.gw.store) == [utc(2024, 6, 3, 23, 59), utc(2024, 6, 4, 1)]


async def test_a_refused_request_is_the_schedules_last_error(
    tmp_path: Path, envs: list[GatewayEnv]
) -> None:
    env = schedule_env(tmp_path, utc(2024, 6, 3, 23, 59), cron="0 * * * *")
    service = await start(env, envs)
    result = await service.fire_now("daily")
    assert result.transfer is not None
    # The rule disappears behind the gateway's back (a reload refuses that): the firing
    # fails with the reason recorded, and no transfer (nor record) is made.
    rule = env.gw.rt.loaded.config.rules.pop("reports")
    result = await service.fire_now("daily")
    assert result.transfer is None and "unknown rule 'reports'" in result.error
    state = await env.gw.store.schedule_state("daily")
    assert state is not None and "unknown rule 'reports'" in state.last_error
    assert state.fires == 1
    # The next good firing clears it (a second later: a firing is one per instant).
    env.gw.rt.loaded.config.rules["reports"] = rule
    env.clock.advance(1)
    assert (await service.fire_now("daily")).transfer is not None
    state = await env.gw.store.schedule_state("daily")
    assert state is not None and state.last_error == "" and state.fires == 2


# ---------------------------------------------------------------------- the store


async def test_one_record_per_firing(backend: Backend) -> None:
    """Two nodes (two stores on one PostgreSQL database) firing the same time: one
    transfer. SQLite has one node: one store tries twice at once (a restart racing)."""
    if backend.name == "postgresql":
        stores = [backend.make("node-a"), backend.make("node-b")]
    else:
        one = backend.make("node-a")
        stores = [one, one]
    for store in set(stores):
        await store.open()
    try:
        when = utc(2024, 6, 3, 2)
        await stores[0].ensure_schedules(["daily"], when - timedelta(days=1))
        await stores[1].ensure_schedules(["daily", "other"], when)
        made = [planned() for _ in stores]
        inserted = await asyncio.gather(
            *(
                s.insert_fire("daily", when, [t], s.node or "")
                for s, t in zip(stores, made, strict=True)
            )
        )
        assert sorted(inserted) == [False, True]
        winner, loser = (made[0], made[1]) if inserted[0] else (made[1], made[0])
        assert winner.id is not None and loser.id is None
        _, total = await store_transfers(stores[0])
        assert total == 1
        states = {s.name: s for s in await stores[1].schedule_states()}
        assert states["daily"].since == when - timedelta(days=1)  # the first one kept
        assert states["daily"].last_fire == when and states["daily"].fires == 1
        assert states["daily"].last_transfer_id == winner.id
        assert states["other"].last_fire is None and states["other"].fires == 0
        assert await stores[0].set_schedule_paused("daily", True, when)
        assert not await stores[0].set_schedule_paused("missing", True, when)
        assert (await stores[1].schedule_state("daily")).paused  # type: ignore[union-attr]
    finally:
        for store in set(stores):
            await store.close()


def planned() -> Transfer:
    from gatewayd import lifecycle
    from gatewayd.lifecycle import Event

    t = Transfer(
        rule="reports",
        is_server=False,
        is_send=True,
        requester="gw",
        requested="share",
        protocol="local",
        partner="share",
        local_filepath="/tmp/x",
        remote_filepath="x",
        src_filename="x",
        dest_filename="x",
        start=utc(2024, 6, 3, 2),
    )
    lifecycle.apply(t, Event.CREATE, new=True)
    return t


# ---------------------------------------------------------------------- mistakes


def test_mistakes_are_reported_with_file_and_line(tmp_path: Path) -> None:
    env = GatewayEnv(tmp_path)
    env.rule("reports", "send", allow={"partners": []})
    env.write()
    good = {"rule": "reports", "partner": "share", "file": "a.csv"}
    paths = [
        write_schedule(env, {"name": "bad-cron", "cron": "61 * * * *", "transfer": good}),
        write_schedule(
            env,
            {"name": "bad-zone", "cron": "0 2 * * *", "timezone": "Mars/Olympus", "transfer": good},
        ),
        write_schedule(
            env,
            {
                "name": "bad-refs",
                "cron": "0 2 * * *",
                "transfer": {"rule": "nope", "partner": "ghost", "file": "a"},
            },
        ),
        write_schedule(env, {"name": "not-allowed", "cron": "0 2 * * *", "transfer": good}),
    ]
    (env.root / "schedules" / "misnamed.yaml").write_text(
        yaml.safe_dump({"name": "other", "cron": "0 2 * * *", "transfer": good})
    )
    with pytest.raises(ConfigError) as caught:
        load_config(env.config_file)
    text = [str(p) for p in caught.value.problems]
    line = {p.name: p.read_text().splitlines() for p in paths}

    def at(name: str, key: str) -> str:
        number = next(i for i, s in enumerate(line[name], 1) if s.lstrip().startswith(key))
        return f"{env.root / 'schedules' / name}:{number}: "

    assert any(
        t.startswith(at("bad-cron.yaml", "cron:")) and "invalid cron expression" in t for t in text
    ), text
    assert any(
        t.startswith(at("bad-zone.yaml", "timezone:")) and "unknown time zone" in t for t in text
    ), text
    assert any(
        t.startswith(at("bad-refs.yaml", "rule:")) and "unknown rule 'nope'" in t for t in text
    ), text
    assert any(
        t.startswith(at("bad-refs.yaml", "partner:")) and "unknown partner 'ghost'" in t
        for t in text
    ), text
    assert any("does not allow partner 'share'" in t and "not-allowed.yaml" in t for t in text)
    assert any("misnamed.yaml" in t and "must be in a file named other.yaml" in t for t in text)


# ---------------------------------------------------------------------- the API


async def test_api_lists_fires_pauses_and_resumes(tmp_path: Path) -> None:
    from tests.api_support import ApiEnv

    env = ApiEnv(tmp_path)
    env.clock = ManualClock(utc(2024, 6, 3, 23, 59))
    env.users["viewer"] = {"rules": "r"}
    env.daemon["timezone"] = "Europe/Paris"
    env.rule("reports", "send")
    env.rule("inbox", "receive")
    write_schedule(
        env,
        {
            "name": "daily",
            "cron": "0 2 * * *",
            "transfer": {"rule": "reports", "partner": "share", "file": "daily.csv"},
        },
    )
    (env.share / "out").mkdir()
    folder = env.root / "pollers"
    folder.mkdir()
    (folder / "share-in.yaml").write_text(
        yaml.safe_dump(
            {"name": "share-in", "partner": "share", "rule": "inbox", "remote_dir": "out"}
            | {"interval": 300, "globs": ["*.csv"], "after": "delete"}
        )
    )
    await env.start()
    try:
        listed = await env.api.get("/api/schedules", user="viewer")
        [one] = listed["schedules"]
        assert one["name"] == "daily" and one["state"] == "active"
        assert one["timezone"] == "Europe/Paris" and one["catchUp"] == "once"
        assert one["nextRun"] == "2024-06-04T02:00:00+02:00" and one["lastRun"] is None
        assert (
            await env.api.call("POST", "/api/schedules/daily/fire", user="viewer")
        ).status == 403
        fired = await env.api.call("POST", "/api/schedules/daily/fire")
        assert fired.status == 201, fired.text
        assert fired.body["transfer"]["rule"] == "reports" and not fired.body["duplicate"]
        paused = await env.api.call("POST", "/api/schedules/daily/pause")
        assert paused.status == 200 and paused.body["state"] == "paused"
        got = await env.api.get("/api/schedules/daily")
        assert got["state"] == "paused" and got["fires"] == 1 and got["fired"] == 1
        assert got["lastTransferId"] == fired.body["transfer"]["id"]
        resumed = await env.api.call("POST", "/api/schedules/daily/resume")
        assert resumed.body["state"] == "active"
        assert (await env.api.call("GET", "/api/schedules/nope")).status == 404

        [poller] = (await env.api.get("/api/pollers"))["pollers"]
        assert poller["name"] == "share-in" and poller["after"] == "delete"
        assert poller["globs"] == ["*.csv"] and poller["polls"] >= 1
        assert (await env.api.call("POST", "/api/pollers/share-in/fire")).status == 202
        assert (await env.api.call("GET", "/api/pollers/nope")).status == 404

        # Written through the API: checked first (every problem, with its line)...
        bad = {"cron": "0 25 * * *", "transfer": {"rule": "inbox", "partner": "ghost", "file": "x"}}
        refused = await env.api.call("PUT", "/api/schedules/nightly", json_body=bad)
        assert refused.status == 400, refused.text
        messages = " | ".join(e["message"] for e in refused.errors)
        assert "nightly.yaml:" in messages and "invalid cron expression" in messages
        assert "unknown partner 'ghost'" in messages
        assert not (env.root / "schedules" / "nightly.yaml").exists()
        good = {
            "cron": "30 1 * * *",
            "transfer": {"rule": "reports", "partner": "share", "file": "n.csv"},
        }
        made = await env.api.call("PUT", "/api/schedules/nightly", json_body=good)
        assert made.status == 201, made.text
        assert made.body["nextRun"] == "2024-06-05T01:30:00+02:00"  # 01:59 there now
        names = [s["name"] for s in (await env.api.get("/api/schedules"))["schedules"]]
        assert names == ["daily", "nightly"]
        assert (await env.api.call("DELETE", "/api/schedules/nightly")).status == 204
        assert not (env.root / "schedules" / "nightly.yaml").exists()
        assert (await env.api.call("GET", "/api/schedules/nightly")).status == 404
        wrong = {"partner": "share", "rule": "reports", "interval": 5}
        refused = await env.api.call("PUT", "/api/pollers/p2", json_body=wrong)
        assert refused.status == 400 and "a send rule" in refused.text

        text = (await env.api.call("GET", "/metrics")).text
        fired_line = next(
            x
            for x in text.splitlines()
            if x.startswith("gatewayd_schedule_firings_total{") and 'outcome="fired"' in x
        )
        assert 'schedule="daily"' in fired_line and fired_line.endswith(" 1.0")
        assert any(
            x.startswith("gatewayd_poller_polls_total{") and 'poller="share-in"' in x
            for x in text.splitlines()
        )
    finally:
        await env.stop()
