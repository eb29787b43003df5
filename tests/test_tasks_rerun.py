"""A task run again after a crash (the driver resumes a chain at the task that was
running): the temporary files it writes are named after its place in the transfer, so
the rerun removes what the killed run left, and never touches another file doing so.
The crash itself, with a real daemon, is in test_crash_outside_data."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from gatewayd.errors import TaskError
from gatewayd.tasks import _fsops
from gatewayd.tasks.base import TaskContext
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
