"""A task run again after a crash (the driver resumes a chain at the task that was
running): the temporary files it writes are named after its place in the transfer, so
the rerun removes what the killed run left, and never touches another file doing so.
The crash itself, with a real daemon, is in test_crash_outside_data."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from gatewayd.errors import TaskError, TransferError
from gatewayd.model import Direction, ErrorCode, Status, Step
from gatewayd.tasks import _fsops
from gatewayd.tasks.base import TaskContext
from tests.gateway_env import GatewayEnv
from tests.tasks_support import file_ctx, leftovers, make_transfer, run_task


def at_task(ctx: TaskContext, step: str = "POST TASKS", number: int = 0) -> TaskContext:
    ctx.step, ctx.task_number = step, number
    return ctx


def test_the_tag_names_one_task_of_one_transfer(tmp_path: Path) -> None:
    ctx = at_task(file_ctx(tmp_path))
    tag = ctx.temp_tag
    assert tag is not None and len(tag) == 12
    assert at_task(file_ctx(tmp_path)).temp_tag == tag, "the same on a rerun"
    assert at_task(file_ctx(tmp_path), number=1).temp_tag != tag
    assert at_task(file_ctx(tmp_path), step="ERROR TASKS").temp_tag != tag
    other = file_ctx(tmp_path)
    other.transfer = make_transfer(id=43, local_filepath=ctx.transfer.local_filepath)
    assert at_task(other).temp_tag != tag, "another transfer"
    assert file_ctx(tmp_path).temp_tag is None, "outside a chain: random names"
    dest = str(tmp_path / "x")
    assert _fsops.temp_name(dest) != _fsops.temp_name(dest)
    assert _fsops.temp_name(dest, tag) == _fsops.temp_name(dest, tag)


async def test_a_rerun_copy_removes_the_leftover_of_the_killed_run(tmp_path: Path) -> None:
    ctx = at_task(file_ctx(tmp_path, content=b"the file"))
    archive = tmp_path / "archive"
    archive.mkdir()
    # What a kill -9 in the middle of the first run left: half a copy, hidden.
    leftover = Path(_fsops.temp_name(str(archive / "report.csv"), ctx.temp_tag))
    leftover.write_bytes(b"the f")
    await run_task("COPY", {"path": str(archive)}, ctx)
    assert os.listdir(archive) == ["report.csv"]
    assert (archive / "report.csv").read_bytes() == b"the file"


async def test_a_rerun_that_fails_still_removes_the_leftover(tmp_path: Path) -> None:
    ctx = at_task(file_ctx(tmp_path, content=b"new"))
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "report.csv").write_bytes(b"someone else's")
    Path(_fsops.temp_name(str(archive / "report.csv"), ctx.temp_tag)).write_bytes(b"ne")
    with pytest.raises(TaskError, match="already exists"):
        await run_task("COPY", {"path": str(archive)}, ctx)
    assert leftovers(archive) == []
    assert (archive / "report.csv").read_bytes() == b"someone else's"


async def test_what_the_leftover_name_points_at_is_never_changed(tmp_path: Path) -> None:
    """Removed, not reused: a link at the temporary name (a symbolic one, or a second
    name of another file) is unlinked, and the file it named keeps its content."""
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    for kind in ("symlink", "hardlink"):
        ctx = at_task(file_ctx(tmp_path, content=b"the file"))
        out = tmp_path / f"out-{kind}"
        out.mkdir()
        name = Path(_fsops.temp_name(str(out / "report.csv"), ctx.temp_tag))
        if kind == "symlink":
            name.symlink_to(precious)
        else:
            os.link(precious, name)
        await run_task("COPY", {"path": str(out)}, ctx)
        assert os.listdir(out) == ["report.csv"], kind
        assert (out / "report.csv").read_bytes() == b"the file"
        assert precious.read_bytes() == b"keep me", kind


async def test_a_rerun_archive_does_not_pack_the_leftover(tmp_path: Path) -> None:
    ctx = at_task(file_ctx(tmp_path, content=b"a,b\n"))
    folder = Path(ctx.transfer.local_filepath).parent
    output = folder / "all.zip"
    Path(_fsops.temp_name(str(output), ctx.temp_tag)).write_bytes(b"PK half an archive")
    await run_task("ARCHIVE", {"files": [str(folder)], "outputPath": str(output)}, ctx)
    assert leftovers(folder) == []
    with zipfile.ZipFile(output) as made:
        assert sorted(made.namelist()) == ["in/", "in/report.csv"]


async def test_a_rerun_extract_removes_the_leftover_staging_folder(tmp_path: Path) -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("a.txt", "alpha")
        archive.writestr("sub/b.txt", "beta")
    ctx = at_task(file_ctx(tmp_path, "bundle.zip", packed.getvalue()))
    output = tmp_path / "unpacked"
    staging = output / f".extract-{ctx.temp_tag}"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "b.txt").write_text("be")
    await run_task("EXTRACT", {"outputDir": str(output)}, ctx)
    assert leftovers(output) == []
    assert (output / "a.txt").read_text() == "alpha"
    assert (output / "sub" / "b.txt").read_text() == "beta"


# ------------------------------------------------------------ output there already


async def test_a_rerun_copy_takes_its_own_published_copy_for_done(tmp_path: Path) -> None:
    """Killed after publishing, before the row recorded the task done: the rerun finds
    the same bytes there and goes on; other bytes there are still a conflict, and a first
    run never takes an existing file for its own."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "report.csv").write_bytes(b"the file")
    first_run = at_task(file_ctx(tmp_path, content=b"the file"))
    with pytest.raises(TaskError, match="already exists"):
        await run_task("COPY", {"path": str(archive)}, first_run)

    rerun = at_task(file_ctx(tmp_path, content=b"the file"))
    rerun.rerun = True
    await run_task("COPY", {"path": str(archive)}, rerun)
    assert os.listdir(archive) == ["report.csv"]

    (archive / "report.csv").write_bytes(b"the filE")
    with pytest.raises(TaskError, match="already exists"):
        await run_task("COPY", {"path": str(archive)}, rerun)
    assert (archive / "report.csv").read_bytes() == b"the filE"
    assert leftovers(archive) == []


async def test_a_move_cut_between_its_link_and_its_unlink_is_finished(tmp_path: Path) -> None:
    ctx = at_task(file_ctx(tmp_path, content=b"the file"))
    source = Path(ctx.transfer.local_filepath)
    archive = tmp_path / "archive"
    archive.mkdir()
    os.link(source, archive / "report.csv")  # what the killed run had done
    await run_task("MOVE", {"path": str(archive)}, ctx)
    assert not source.exists()
    assert (archive / "report.csv").read_bytes() == b"the file"
    assert ctx.transfer.local_filepath == str(archive / "report.csv")


async def test_a_rerun_move_follows_the_file_it_had_moved(tmp_path: Path) -> None:
    """Killed after the file moved, before the row followed it: the row's size and
    SHA-256 recognise the file at the destination."""
    content = b"the file"
    archive = tmp_path / "archive"
    archive.mkdir()

    def moved_ctx(rerun: bool, there: bytes) -> TaskContext:
        ctx = at_task(file_ctx(tmp_path, content=content))
        ctx.rerun = rerun
        ctx.transfer.sha256 = hashlib.sha256(content).hexdigest()
        Path(ctx.transfer.local_filepath).unlink()
        (archive / "report.csv").write_bytes(there)
        return ctx

    ctx = moved_ctx(rerun=True, there=content)
    await run_task("MOVE", {"path": str(archive)}, ctx)
    assert ctx.transfer.local_filepath == str(archive / "report.csv")
    assert (archive / "report.csv").read_bytes() == content

    for rerun, there in ((True, b"another!"), (False, content)):
        ctx = moved_ctx(rerun, there)
        with pytest.raises(TaskError, match="file not found") as failed:
            await run_task("MOVE", {"path": str(archive)}, ctx)
        assert failed.value.code == ErrorCode.TeFileNotFound
        assert ctx.transfer.local_filepath != str(archive / "report.csv")


async def test_only_the_task_a_run_resumes_at_is_a_rerun(tmp_path: Path) -> None:
    """The driver marks as a rerun the task the row says is next when a run starts: a
    new transfer's COPY onto an identical file is a conflict; resumed at that COPY, the
    transfer takes the identical file for the COPY's own output."""
    env = GatewayEnv(tmp_path)
    archive = tmp_path / "archive"
    env.rule("inbox", "receive", post=[{"type": "COPY", "args": {"path": str(archive)}}])
    archive.mkdir()
    (archive / "f.bin").write_bytes(b"hello")
    await env.start()
    try:
        handle = await env.server().open_transfer("a", "/inbox/f.bin", Direction.RECEIVE)
        await handle.write(0, b"hello")
        with pytest.raises(TransferError, match="already exists"):
            await handle.close()
        failed = await env.row(handle.transfer_id)
        assert (failed.status, failed.step, failed.task_number) == (
            Status.ERROR, Step.POST_TASKS, 0,
        )  # fmt: skip
        await env.gw.service.resume(handle.transfer_id)
        done = await env.wait_end(handle.transfer_id)
    finally:
        await env.stop()
    assert done.status == Status.DONE, done.error_msg
    assert os.listdir(archive) == ["f.bin"]


async def test_a_rerun_transcoding_in_place_knows_its_own_output(tmp_path: Path) -> None:
    """The file a TRANSCODE in place wrote is marked with the task's tag: its rerun
    leaves that file alone, while the same task of another place transcodes it."""
    latin = "déjà vu\n".encode("latin-1")
    ctx = at_task(file_ctx(tmp_path, "t.txt", latin))
    args = {"fromCharset": "latin-1", "toCharset": "utf-8"}
    await run_task("TRANSCODE", args, ctx)
    path = Path(ctx.transfer.local_filepath)
    assert path.read_bytes() == "déjà vu\n".encode()
    ctx.rerun = True  # a crash came before the row recorded the task done
    await run_task("TRANSCODE", args, ctx)
    assert path.read_bytes() == "déjà vu\n".encode(), "not transcoded twice"
    assert ctx.transfer.filesize == len("déjà vu\n".encode())
    # Another task of the chain (another tag), or a run that is no rerun: it transcodes.
    other = at_task(ctx, number=1)
    other.rerun = True
    await run_task("TRANSCODE", args, other)
    assert path.read_bytes() == "déjà vu\n".encode().decode("latin-1").encode()
