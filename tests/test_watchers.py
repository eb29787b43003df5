"""Local folder watchers in a real gateway (in process, manual clock): settle, exactly
once, renames, changed files, and the configuration's checks with file:line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.config import ConfigError, load_config
from gatewayd.model import Status
from tests.gateway_env import GatewayEnv, make_file, sha256_of


def write_watcher(env: GatewayEnv, name: str, **fields: Any) -> Path:
    folder = env.root / "watchers"
    folder.mkdir(exist_ok=True)
    data = {"name": name, "rule": "out", "partner": "share", "settle": 2, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def done_files(env: GatewayEnv, count: int) -> list[Any]:
    """Wait until `count` transfers exist and all are final; return them."""
    import asyncio

    async with asyncio.timeout(20):
        while True:
            rows, total = await env.gw.store.list_transfers(_all())
            if total >= count and all(r.status == Status.DONE for r in rows):
                return rows
            bad = [r for r in rows if r.status in (Status.ERROR, Status.CANCELLED)]
            assert not bad, f"transfers failed: {[(r.id, r.error_msg) for r in bad]}"
            await asyncio.sleep(0.01)


def _all() -> Any:
    from gatewayd.store.base import TransferFilter

    return TransferFilter(limit=10_000)


@pytest.fixture
def env(tmp_path: Path) -> GatewayEnv:
    env = GatewayEnv(tmp_path)
    env.rule("out", "send")
    return env


async def test_settle_then_taken_once_renamed_not_again(env: GatewayEnv) -> None:
    write_watcher(env, "w1", recursive=True)
    await env.start()
    try:
        watchers = env.gw.watchers
        folder = env.folder("out")
        make_file(folder / "a.bin", 70_000, seed=1)
        make_file(folder / "sub" / "b.bin", 5_000, seed=2)
        (folder / "c.part").write_bytes(b"partial")  # excluded by default
        first = await watchers.fire("w1")
        assert first.outcomes["too_young"] == 2, first
        assert first.outcomes["excluded"] == 1, first
        assert first.outcomes["taken"] == 0
        env.clock.advance(1)
        assert (await watchers.fire("w1")).outcomes["too_young"] == 2
        env.clock.advance(1.5)
        taken = await watchers.fire("w1")
        assert taken.outcomes["taken"] == 2, taken
        rows = await done_files(env, 2)
        assert sorted(r.remote_filepath for r in rows) == ["a.bin", "sub/b.bin"]
        assert sha256_of(env.share / "a.bin") == sha256_of(folder / "a.bin")
        assert sha256_of(env.share / "sub" / "b.bin") == sha256_of(folder / "sub" / "b.bin")
        assert {r.transfer_info["watcher"] for r in rows} == {"w1"}
        # Scanned again, renamed: never sent twice.
        env.clock.advance(5)
        again = await watchers.fire("w1")
        assert again.outcomes["already_sent"] == 2 and again.outcomes["taken"] == 0, again
        os.rename(folder / "a.bin", folder / "renamed.bin")
        env.clock.advance(5)
        moved = await watchers.fire("w1")
        assert moved.outcomes["taken"] == 0 and moved.outcomes["already_sent"] == 2, moved
        assert await env.gw.store.count_watched("w1") == 2
        state = watchers.get("w1")
        assert state is not None and state.state.last_error == ""
    finally:
        await env.stop()


async def test_changed_file_resent_only_when_asked_and_new_file_at_same_path(
    env: GatewayEnv,
) -> None:
    write_watcher(env, "keep", settle=0)
    await env.start()
    try:
        folder = env.folder("out")
        make_file(folder / "r.csv", 1000, seed=1)
        assert (await env.gw.watchers.fire("keep")).outcomes["taken"] == 1
        await done_files(env, 1)
        # Rewritten in place (same inode): not sent again by default.
        with open(folder / "r.csv", "ab") as f:
            f.write(b"more")
        assert (await env.gw.watchers.fire("keep")).outcomes["already_sent"] == 1
        # Deleted (seen gone), then a new file of that name: a new file, sent.
        (folder / "r.csv").unlink()
        assert (await env.gw.watchers.fire("keep")).seen == 0
        make_file(folder / "r.csv", 3000, seed=3)
        assert (await env.gw.watchers.fire("keep")).outcomes["taken"] == 1
        await done_files(env, 2)
        assert (env.share / "r.csv").read_bytes() == (folder / "r.csv").read_bytes()
    finally:
        await env.stop()


async def test_resend_changed_and_min_size_and_output_markers(env: GatewayEnv) -> None:
    write_watcher(
        env,
        "again",
        settle=0,
        resend_changed=True,
        min_size=10,
        output="in/#RULE#-#TRUEFILENAME#",
        transfer_info={"origin": "#TRUEFILENAME#"},
    )
    await env.start()
    try:
        folder = env.folder("out")
        (folder / "tiny").write_bytes(b"x")
        make_file(folder / "f.bin", 100, seed=1)
        first = await env.gw.watchers.fire("again")
        assert first.outcomes["taken"] == 1 and first.outcomes["too_small"] == 1, first
        rows = await done_files(env, 1)
        assert rows[0].remote_filepath == "in/out-f.bin"
        assert rows[0].transfer_info["origin"] == "f.bin"
        with open(folder / "f.bin", "ab") as f:
            f.write(b"changed")
        assert (await env.gw.watchers.fire("again")).outcomes["taken"] == 1
        await done_files(env, 2)
        assert (env.share / "in" / "out-f.bin").read_bytes() == (folder / "f.bin").read_bytes()
    finally:
        await env.stop()


async def test_a_name_that_cannot_be_sent_is_refused_and_the_others_go_on(
    env: GatewayEnv,
) -> None:
    write_watcher(env, "names", settle=0)
    await env.start()
    try:
        folder = env.folder("out")
        (folder / "bad\nname").write_bytes(b"x")
        make_file(folder / "good.bin", 100)
        result = await env.gw.watchers.fire("names")
        assert result.outcomes["refused"] == 1 and result.outcomes["taken"] == 1, result
        assert "bad" in result.error, result.error
        await done_files(env, 1)
        state = env.gw.watchers.get("names")
        assert state is not None and state.state.state == "error"
    finally:
        await env.stop()


async def test_links_are_never_followed(env: GatewayEnv, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_file(outside / "secret.bin", 10)
    write_watcher(env, "deep", settle=0, recursive=True)
    await env.start()
    try:
        folder = env.folder("out")
        (folder / "sub").symlink_to(outside)
        (folder / "file-link").symlink_to(outside / "secret.bin")
        make_file(folder / "real" / "ok.bin", 10)
        result = await env.gw.watchers.fire("deep")
        assert result.seen == 1 and result.outcomes["taken"] == 1, result
        rows = await done_files(env, 1)
        assert [r.remote_filepath for r in rows] == ["real/ok.bin"]
        # The watched folder itself swapped for a link: refused, named.
        (folder / "real" / "ok.bin").unlink()
        (folder / "real").rmdir()
        (folder / "real").symlink_to(outside)
        write_watcher(env, "linked", settle=0, folder="real")
        env.gw.apply_config(env.load())
        linked = await env.gw.watchers.fire("linked")
        assert linked.seen == 0 and "real" in linked.error, linked
    finally:
        await env.stop()


def test_check_config_reports_each_mistake_with_its_line(env: GatewayEnv) -> None:
    env.rule("inbox", "receive")
    env.write()
    (env.root / "watchers").mkdir()
    (env.root / "watchers" / "bad.yaml").write_text(
        "name: bad\nrule: inbox\npartner: nobody\nfolder: missing\ninclude: ['[abc']\n"
    )
    (env.root / "watchers" / "worse.yaml").write_text(
        "name: worse\nrule: nope\npartners: [share]\nsettle: -1\n"
    )
    (env.root / "watchers" / "outside.yaml").write_text(
        "name: outside\nrule: out\npartner: share\nfolder: /etc\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(env.config_file)
    text = "\n".join(str(p) for p in raised.value.problems)
    assert "bad.yaml:2: rule 'inbox' is a receive rule" in text, text
    assert "bad.yaml:3: unknown partner 'nobody'" in text, text
    assert "bad.yaml:5:" in text and "never closed" in text, text
    assert "worse.yaml:2: unknown rule 'nope'" in text, text
    assert "worse.yaml:4:" in text, text
    assert "outside.yaml:4: /etc is not inside the folder of rule 'out'" in text, text


def test_missing_folder_inside_rule_folder_reported(env: GatewayEnv) -> None:
    env.write()
    write_watcher(env, "sub", folder="later")
    with pytest.raises(ConfigError) as raised:
        load_config(env.config_file)
    text = "\n".join(str(p) for p in raised.value.problems)
    assert "sub.yaml:" in text and "does not exist" in text, text
