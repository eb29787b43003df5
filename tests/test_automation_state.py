"""The automation's state kept in the database (migration 0010), on both backends: a
pause of a watcher, poller or schedule holds across restarts (and, being in the shared
database, on every node); a poller's first look survives a restart (one more look
takes the file); the retention purges only the records that guard nothing any more."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gatewayd.automation.retention import AutomationRetention
from gatewayd.clock import ManualClock
from gatewayd.model import Status, Transfer
from gatewayd.store.base import WatchedFile
from tests.gateway_env import GatewayEnv, make_file
from tests.store_backends import Backend
from tests.test_pollers import first_looks, polled, step, write_poller
from tests.test_schedules import planned
from tests.test_watchers import write_watcher

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GatewayEnv]:
    env = GatewayEnv(tmp_path)
    env.clock = ManualClock(T0)
    yield env
    await env.stop()


# ---------------------------------------------------------------------- the store


async def test_pause_states_first_looks_and_purge_rules(backend: Backend) -> None:
    store = backend.make("node-a")
    await store.open()
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        old, recent, cutoff = now - timedelta(days=30), now - timedelta(days=1), now - timedelta(7)

        # Pause: who and when, kept through a resume; schedules read the same table.
        await store.set_paused("poller", "p", True, "alice", old)
        await store.set_paused("poller", "p", False, "bob", recent)
        [state] = (await store.pause_states("poller")).values()
        assert (state.paused, state.paused_by, state.paused_at) == (False, "alice", old)
        assert await store.pause_states("watcher") == {}
        await store.ensure_schedules(["daily"], old)
        assert await store.set_schedule_paused("daily", True, recent)
        assert (await store.schedule_state("daily")).paused  # type: ignore[union-attr]
        assert (await store.pause_states("schedule"))["daily"].paused

        # A poller's first looks: new and changed names upserted, dropped ones gone.
        await store.set_poller_seen("p", {"a": (1, "t1"), "b": (2, "t2")}, [], old)
        await store.set_poller_seen("p", {"b": (3, "t3")}, ["a"], recent)
        assert await store.poller_seen("p") == {"b": (3, "t3")}

        async def take(key: tuple[str, int, str], status: Status) -> Transfer:
            t = planned()
            assert await store.insert_take("p", key, t, "node-a")
            await backend.raw("UPDATE transfers SET status = ? WHERE id = ?", status.value, t.id)
            return t

        # Remote files taken: gone long ago and DONE (purged); still listed (kept even
        # though DONE: purging it would fetch it again); gone but in ERROR (kept: it may
        # be retried); gone lately (kept until the retention passed).
        keys = {k: (k, 1, "t") for k in ("gone", "listed", "error", "lately")}
        for name, status in (
            ("gone", Status.DONE),
            ("listed", Status.DONE),
            ("error", Status.ERROR),
            ("lately", Status.DONE),
        ):
            await take(keys[name], status)
        await store.note_poller_listing("p", {keys["listed"], keys["lately"]}, old)
        await store.note_poller_listing("p", {keys["listed"]}, recent)

        # Watched files: gone and DONE (purged), gone with a transfer still PLANNED,
        # not gone (the file is still there).
        def watched(path: str) -> tuple[WatchedFile, list[Transfer]]:
            record = WatchedFile("w", path, 1, 1, 1, old)
            return record, [planned(), planned()]

        items = [watched("done.bin"), watched("planned.bin"), watched("here.bin")]
        assert await store.insert_watched(items) == [0, 1, 2]
        for t in items[0][1] + items[2][1] + items[1][1][:1]:
            await backend.raw("UPDATE transfers SET status = 'DONE' WHERE id = ?", t.id)
        live = {r.path: r.id for r in await store.live_watched("w")}
        await store.mark_watched_gone([live["done.bin"], live["planned.bin"]], old)

        # Firings: an old DONE one (purged), an old one still PLANNED, the newest.
        fired = []
        for day, status in ((1, Status.DONE), (2, Status.PLANNED), (3, Status.DONE)):
            t = planned()
            assert await store.insert_fire("daily", old + timedelta(days=day), [t], "node-a")
            await backend.raw("UPDATE transfers SET status = ? WHERE id = ?", status.value, t.id)
            fired.append(t)
        await backend.raw("UPDATE schedule_runs SET created = ?", old.strftime("%Y-%m-%d"))

        counts = await store.purge_automation(cutoff)
        assert counts == {
            "watched_files": 1,
            "poller_files": 1,
            "schedule_runs": 1,
            "poller_seen": 0,  # b, seen lately
        }
        assert await store.purge_automation(recent + timedelta(seconds=1)) == {
            "watched_files": 0,
            "poller_files": 1,  # "lately", gone since `recent`
            "schedule_runs": 0,
            "poller_seen": 1,
        }
        assert await store.poller_seen("p") == {}
        await store.set_poller_seen("p", {"b": (3, "t3")}, [], recent)  # as before
        assert await store.poller_taken("p") == {keys["listed"], keys["error"]}
        assert sorted(r.path for r in await store.live_watched("w")) == ["here.bin"]
        assert await store.count_watched("w") == 2
        left = await backend.raw("SELECT fire_time FROM schedule_runs ORDER BY fire_time")
        assert len(left) == 2
        state = await store.schedule_state("daily")
        assert state is not None and state.last_fire == old + timedelta(days=3)
        # Nothing more to purge: the same pass again removes nothing.
        assert set((await store.purge_automation(cutoff)).values()) == {0}
    finally:
        await store.close()


async def test_upgrade_keeps_a_paused_schedule_paused(tmp_path: Path) -> None:
    """Schedules kept their pause in schedule_state before migration 0010 moved it."""
    import aiosqlite

    from gatewayd.store.migrate import apply_migrations, load_migrations
    from gatewayd.store.sqlite import SqliteStore

    path = tmp_path / "g.db"
    migrations = load_migrations()
    before = next(m.version for m in migrations if m.filename.endswith("automation_state.sql"))
    async with aiosqlite.connect(path) as conn:
        await apply_migrations(conn, migrations[: before - 1])
        for name, paused in (("held", 1), ("running", 0)):
            await conn.execute(
                "INSERT INTO schedule_state (name, since, paused, last_error, updated) "
                "VALUES (?, '2024-06-01T00:00:00.000000Z', ?, '', '2024-06-02T00:00:00.000000Z')",
                (name, paused),
            )
        await conn.commit()
    async with SqliteStore(path) as store:
        states = {s.name: s.paused for s in await store.schedule_states()}
        assert states == {"held": True, "running": False}
        [held] = (await store.pause_states("schedule")).values()
        assert held.name == "held" and held.paused_at == datetime(2024, 6, 2, tzinfo=UTC)


# ---------------------------------------------------------------------- pollers


async def test_poller_pause_holds_across_restarts_and_first_looks_are_kept(
    env: GatewayEnv,
) -> None:
    env.rule("inbox", "receive")
    out = env.share / "out"
    out.mkdir()
    body = {"name": "p", "partner": "share", "rule": "inbox", "remote_dir": "out", "interval": 30}
    write_poller(env, body)
    await env.start()
    pollers = env.gw.pollers
    await first_looks(pollers, 1)
    (out / "a.csv").write_text("a\n")
    await step(env, pollers, 1, 30)  # the first look at a.csv
    assert await env.gw.store.poller_seen("p") == {"a.csv": (2, pollers_mtime(out / "a.csv"))}
    assert await polled(env, "p") == []

    # A restart: the next look is the second one, a.csv is taken at once.
    await env.stop()
    await env.start()
    pollers = env.gw.pollers
    await first_looks(pollers, 1)
    [a] = await polled(env, "p")
    assert a.dest_filename == "a.csv" and await env.gw.store.poller_seen("p") == {}

    # Paused through the service (the API's path): no look, also after a restart.
    stats = await pollers.set_paused("p", True, "alice")
    assert stats.paused and stats.paused_by == "alice"
    (out / "b.csv").write_text("b\n")
    await env.stop()
    await env.start()
    pollers = env.gw.pollers
    await first_looks(pollers, 1)
    for _ in range(3):
        await step(env, pollers, 1, 30)
    assert pollers.stats("p").polls == 0 and pollers.stats("p").paused_looks >= 3
    assert len(await polled(env, "p")) == 1
    # `fire` looks even when paused (one look: b.csv seen once).
    pollers.fire("p")
    await step(env, pollers, 1, 0)
    assert pollers.stats("p").polls == 1
    assert "b.csv" in await env.gw.store.poller_seen("p")
    # Resumed: it looks again, and the look after fire's takes b.csv.
    await pollers.set_paused("p", False, "bob")
    await step(env, pollers, 1, 0)
    assert sorted(t.dest_filename for t in await polled(env, "p")) == ["a.csv", "b.csv"]
    assert (await pollers.read_pause("p")).paused_by == "alice"  # who paused it last


async def test_a_changed_poller_looks_twice_again(env: GatewayEnv) -> None:
    env.rule("inbox", "receive")
    out = env.share / "out"
    out.mkdir()
    (out / "a.csv").write_text("a\n")
    body = {"name": "p", "partner": "share", "rule": "inbox", "remote_dir": "out", "interval": 30}
    write_poller(env, body)
    await env.start()
    await first_looks(env.gw.pollers, 1)  # a.csv seen once
    assert "a.csv" in await env.gw.store.poller_seen("p")
    write_poller(env, {**body, "globs": ["*.csv", "*.xml"]})
    passes = env.gw.pollers.passes
    env.gw.apply_config(env.load())
    await first_looks(env.gw.pollers, passes + 1)  # the changed poller's first look
    assert await polled(env, "p") == [], "taken on the first look of the new configuration"
    await step(env, env.gw.pollers, 1, 30)
    assert [t.dest_filename for t in await polled(env, "p")] == ["a.csv"]


def pollers_mtime(path: Path) -> str:
    """The mtime text a `local` partner's listing gives (gatewayd.automation.pollers)."""
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()


# ---------------------------------------------------------------------- watchers


async def test_watcher_pause_holds_across_restarts(env: GatewayEnv) -> None:
    env.rule("out", "send")
    write_watcher(env, "w", settle=0)
    await env.start()
    await env.gw.watchers.set_paused("w", True, "alice")
    make_file(env.folder("out") / "a.bin", 1000, seed=1)
    await env.stop()
    await env.start()
    watch = env.gw.watchers.get("w")
    assert watch is not None
    result = await watch.scan()
    assert result.skipped == "paused" and watch.state.paused_by == "alice"
    assert (await env.gw.store.list_transfers(_all()))[1] == 0
    await env.gw.watchers.set_paused("w", False, "bob")
    taken = await watch.scan()
    assert taken.outcomes["taken"] == 1, taken
    assert watch.state.state == "running" and not watch.state.paused


def _all() -> object:
    from gatewayd.store.base import TransferFilter

    return TransferFilter(limit=100)


# ---------------------------------------------------------------------- retention


async def test_retention_loop_purges_once_the_retention_passed(env: GatewayEnv) -> None:
    await env.start()
    store = env.gw.store
    # The records' times are the clocks' (gone: this one's; created: the real one).
    clock = ManualClock(datetime.now(UTC))
    retention = AutomationRetention(store, clock, retention=3600)
    t = planned()
    t.status = Status.DONE
    assert await store.insert_take("p", ("x", 1, "t"), t, "node")
    await store.note_poller_listing("p", set(), clock.now())  # no longer listed

    async def passes(count: int) -> None:
        async with asyncio.timeout(10):
            while retention.passes < count:
                await asyncio.sleep(0.001)

    retention.start()
    try:
        await passes(1)
        assert retention.last["poller_files"] == 0  # gone just now: kept
        clock.advance(3600 / 4)  # the next pass, the retention not passed yet
        await passes(2)
        assert retention.last["poller_files"] == 0
        clock.advance(3600)
        await passes(3)
        assert retention.last["poller_files"] == 1
        assert await store.poller_taken("p") == set()
    finally:
        await retention.stop()
