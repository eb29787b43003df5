"""COPY, COPYRENAME, MOVE, MOVERENAME, DELETE and RENAME on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gatewayd.errors import TaskError
from gatewayd.model import ErrorCode
from gatewayd.tasks import task_class
from tests.tasks_support import file_ctx, leftovers, make_ctx, make_transfer, run_task

CONTENT = b"a,b\n1,2\n"


async def test_copy_into_a_new_folder_keeps_name_content_and_mode(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    source = Path(ctx.transfer.local_filepath)
    source.chmod(0o640)
    await run_task("COPY", {"path": "#OUTPATH#/archive/#DATE#"}, ctx)
    copy = tmp_path / "out" / "archive" / "20240305" / "report.csv"
    assert copy.read_bytes() == CONTENT
    assert copy.stat().st_mode & 0o777 == 0o640
    # The transfer still points at the original, which is untouched.
    assert ctx.transfer.local_filepath == str(source)
    assert source.read_bytes() == CONTENT
    assert leftovers(copy.parent) == []
    assert any("COPY:" in message for message in ctx.log.messages)


async def test_copy_refuses_to_overwrite(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    existing = tmp_path / "out" / "report.csv"
    existing.parent.mkdir()
    existing.write_bytes(b"keep me")
    with pytest.raises(TaskError) as caught:
        await run_task("COPY", {"path": str(tmp_path / "out")}, ctx)
    assert str(existing) in caught.value.message
    assert "already exists" in caught.value.message
    assert existing.read_bytes() == b"keep me"
    assert leftovers(existing.parent) == []


async def test_copy_overwrites_when_told(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    existing = tmp_path / "out" / "report.csv"
    existing.parent.mkdir()
    existing.write_bytes(b"old")
    await run_task("COPY", {"path": str(tmp_path / "out"), "overwrite": "true"}, ctx)
    assert existing.read_bytes() == CONTENT


async def test_copyrename_to_a_file_path(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    await run_task("COPYRENAME", {"path": "out/#BASEFILENAME#_#TRANSFERID##FILEEXTENSION#"}, ctx)
    # Relative paths are taken from the home folder.
    assert (tmp_path / "out" / "report_42.csv").read_bytes() == CONTENT
    assert Path(ctx.transfer.local_filepath).exists()


async def test_copyrename_refuses_a_folder_path_and_an_existing_file(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    with pytest.raises(TaskError, match="names a folder"):
        await run_task("COPYRENAME", {"path": str(tmp_path / "out") + "/"}, ctx)
    target = tmp_path / "taken.csv"
    target.write_bytes(b"x")
    with pytest.raises(TaskError, match="already exists"):
        await run_task("COPYRENAME", {"path": str(target)}, ctx)
    assert target.read_bytes() == b"x"


async def test_move_retargets_the_transfer(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    source = Path(ctx.transfer.local_filepath)
    await run_task("MOVE", {"path": "#OUTPATH#/done"}, ctx)
    moved = tmp_path / "out" / "done" / "report.csv"
    assert moved.read_bytes() == CONTENT
    assert not source.exists()
    assert ctx.transfer.local_filepath == str(moved)
    assert ctx.transfer.filesize == len(CONTENT)


async def test_move_refuses_to_overwrite_and_keeps_the_source(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    source = ctx.transfer.local_filepath
    existing = tmp_path / "out" / "report.csv"
    existing.parent.mkdir()
    existing.write_bytes(b"other")
    with pytest.raises(TaskError, match="already exists"):
        await run_task("MOVE", {"path": str(tmp_path / "out")}, ctx)
    assert existing.read_bytes() == b"other"
    assert Path(source).read_bytes() == CONTENT
    assert ctx.transfer.local_filepath == source


async def test_move_overwrite(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    existing = tmp_path / "out" / "report.csv"
    existing.parent.mkdir()
    existing.write_bytes(b"other")
    await run_task("MOVE", {"path": str(tmp_path / "out"), "overwrite": True}, ctx)
    assert existing.read_bytes() == CONTENT
    assert ctx.transfer.local_filepath == str(existing)


async def test_moverename_of_a_send_renames_the_remote_name_too(tmp_path: Path) -> None:
    source = tmp_path / "out" / "data.txt"
    source.parent.mkdir()
    source.write_bytes(CONTENT)
    transfer = make_transfer(
        is_send=True, local_filepath=str(source), remote_filepath="/inbox/data.txt"
    )
    ctx = make_ctx(tmp_path, transfer)
    await run_task("MOVERENAME", {"path": "#OUTPATH#/data_#DATE#.txt"}, ctx)
    target = tmp_path / "out" / "data_20240305.txt"
    assert target.read_bytes() == CONTENT
    assert not source.exists()
    assert ctx.transfer.local_filepath == str(target)
    assert ctx.transfer.remote_filepath == "/inbox/data_20240305.txt"


async def test_moverename_of_a_receive_keeps_the_remote_name(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    ctx.transfer.remote_filepath = "/upload/report.csv"
    await run_task("MOVERENAME", {"path": str(tmp_path / "renamed.csv")}, ctx)
    assert ctx.transfer.local_filepath == str(tmp_path / "renamed.csv")
    assert ctx.transfer.remote_filepath == "/upload/report.csv"


async def test_move_across_file_systems(tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to move to")
    ctx = file_ctx(tmp_path, content=CONTENT)
    target_dir = other / f"gatewayd-test-{os.getpid()}-{tmp_path.name}"
    try:
        await run_task("MOVE", {"path": str(target_dir)}, ctx)
        assert (target_dir / "report.csv").read_bytes() == CONTENT
        assert not (tmp_path / "in" / "report.csv").exists()
        assert ctx.transfer.local_filepath == str(target_dir / "report.csv")
        assert leftovers(target_dir) == []
    finally:
        for child in target_dir.glob("*"):
            child.unlink()
        if target_dir.exists():
            target_dir.rmdir()


async def test_missing_source_is_file_not_found(tmp_path: Path) -> None:
    transfer = make_transfer(local_filepath=str(tmp_path / "gone.csv"))
    for task in ("COPY", "MOVE", "DELETE"):
        with pytest.raises(TaskError) as caught:
            await run_task(
                task,
                {"path": str(tmp_path / "out")} if task != "DELETE" else {},
                make_ctx(tmp_path, transfer),
            )
        assert caught.value.code == ErrorCode.TeFileNotFound, task
        assert "gone.csv" in caught.value.message
    assert not (tmp_path / "out").exists()


async def test_destination_folder_blocked_by_a_file(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    (tmp_path / "blocker").write_bytes(b"")
    with pytest.raises(TaskError, match=r"(?i)not a (folder|directory)"):
        await run_task("COPY", {"path": str(tmp_path / "blocker" / "sub")}, ctx)


async def test_delete(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    path = Path(ctx.transfer.local_filepath)
    await run_task("DELETE", {}, ctx)
    assert not path.exists()


async def test_rename_points_at_another_existing_file(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    original = Path(ctx.transfer.local_filepath)
    other = tmp_path / "in" / "other.bin"
    other.write_bytes(b"0123456789")
    await run_task("RENAME", {"path": "#INPATH#/other.bin"}, ctx)
    assert ctx.transfer.local_filepath == str(other)
    assert ctx.transfer.filesize == 10
    # No file moves.
    assert original.exists()
    assert other.read_bytes() == b"0123456789"


async def test_rename_to_a_missing_file_fails_and_changes_nothing(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    before = ctx.transfer.local_filepath
    with pytest.raises(TaskError) as caught:
        await run_task("RENAME", {"path": str(tmp_path / "nope")}, ctx)
    assert caught.value.code == ErrorCode.TeFileNotFound
    assert ctx.transfer.local_filepath == before


async def test_relative_path_without_home_is_refused(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path)
    ctx.home_path = ""
    with pytest.raises(TaskError, match="relative path"):
        await run_task("COPY", {"path": "out"}, ctx)


@pytest.mark.parametrize(
    ("task", "args", "problems"),
    [
        ("COPY", {"path": "/x"}, []),
        ("COPY", {"path": "#OUTPATH#", "overwrite": "yes"}, []),
        ("COPY", {}, ["missing argument 'path'"]),
        ("COPY", {"path": "/x", "mode": 1}, ["unknown argument 'mode'"]),
        ("MOVE", {"path": 3}, ["argument 'path' must be a non-empty string"]),
        (
            "MOVERENAME",
            {"path": "/x", "overwrite": "maybe"},
            ["argument 'overwrite' must be true or false"],
        ),
        ("DELETE", {}, []),
        ("DELETE", {"path": "/x"}, ["unknown argument 'path'"]),
        ("RENAME", {}, ["missing argument 'path'"]),
    ],
)
def test_check_args(task: str, args: dict[str, object], problems: list[str]) -> None:
    cls = task_class(task)
    assert cls is not None
    assert cls.check_args(args) == problems
