"""ARCHIVE and EXTRACT: formats, globs, no overwrite, and archives that try to escape."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from gatewayd.errors import TaskError
from gatewayd.tasks import task_class
from gatewayd.tasks.base import TaskContext
from tests.tasks_support import file_ctx, leftovers, make_ctx, run_task


def make_tree(root: Path) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_bytes(b"alpha")
    (root / "docs" / "deep" / "b.txt").write_bytes(b"beta" * 1000)
    (root / "one.csv").write_bytes(b"1,2\n")
    (root / "two.csv").write_bytes(b"3,4\n")
    (root / "skip.log").write_bytes(b"log")


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `root`."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("extension", [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"])
async def test_archive_then_extract_round_trip(tmp_path: Path, extension: str) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ctx = make_ctx(tmp_path)
    output = tmp_path / "archives" / f"bundle_#DATE#{extension}"
    await run_task(
        "ARCHIVE",
        {"files": [f"{src}/docs", f"{src}/*.csv"], "outputPath": str(output)},
        ctx,
    )
    archive = tmp_path / "archives" / f"bundle_20240305{extension}"
    assert archive.is_file()
    assert leftovers(archive.parent) == []
    if extension == ".zip":
        assert zipfile.is_zipfile(archive)
    else:
        with tarfile.open(archive) as tar:
            assert "docs/deep/b.txt" in tar.getnames()

    ctx.transfer.local_filepath = str(archive)
    # `archive` defaults to the transfer's file.
    await run_task("EXTRACT", {"outputDir": str(tmp_path / "unpacked")}, ctx)
    assert ctx.transfer.local_filepath == str(archive)
    assert tree(tmp_path / "unpacked") == {
        "docs/a.txt": b"alpha",
        "docs/deep/b.txt": b"beta" * 1000,
        "one.csv": b"1,2\n",
        "two.csv": b"3,4\n",
    }
    assert leftovers(tmp_path / "unpacked") == []


async def test_archive_files_as_comma_separated_string(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ctx = make_ctx(tmp_path)
    out = tmp_path / "b.zip"
    await run_task(
        "ARCHIVE", {"files": f"{src}/one.csv, {src}/skip.log", "outputPath": str(out)}, ctx
    )
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["one.csv", "skip.log"]
        assert archive.read("skip.log") == b"log"


async def test_archive_of_the_folder_holding_the_output(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    ctx = make_ctx(tmp_path)
    out = src / "docs" / "self.tar"
    await run_task("ARCHIVE", {"files": f"{src}/docs", "outputPath": str(out)}, ctx)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "docs/a.txt" in names
    assert not any("self" in name or name.endswith(".tmp") for name in names)


async def test_archive_refuses_to_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    out = tmp_path / "b.zip"
    out.write_bytes(b"previous")
    ctx = make_ctx(tmp_path)
    with pytest.raises(TaskError, match="already exists"):
        await run_task("ARCHIVE", {"files": f"{src}/one.csv", "outputPath": str(out)}, ctx)
    assert out.read_bytes() == b"previous"
    await run_task(
        "ARCHIVE", {"files": f"{src}/one.csv", "outputPath": str(out), "overwrite": True}, ctx
    )
    assert zipfile.is_zipfile(out)


async def test_archive_missing_files(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    with pytest.raises(TaskError, match="file not found"):
        await run_task("ARCHIVE", {"files": ["nope.txt"], "outputPath": "x.zip"}, ctx)
    with pytest.raises(TaskError, match="no file matches"):
        await run_task("ARCHIVE", {"files": ["*.nothing"], "outputPath": "x.zip"}, ctx)
    assert not (tmp_path / "x.zip").exists()


async def test_archive_refuses_duplicate_names(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.txt").write_bytes(folder.encode())
    ctx = make_ctx(tmp_path)
    with pytest.raises(TaskError, match=r"same\.txt"):
        await run_task("ARCHIVE", {"files": "a/same.txt,b/same.txt", "outputPath": "x.tgz"}, ctx)


async def test_extract_refuses_to_overwrite_and_publishes_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", b"new a")
        zf.writestr("z.txt", b"new z")
    out = tmp_path / "out"
    out.mkdir()
    (out / "z.txt").write_bytes(b"old z")
    ctx = make_ctx(tmp_path)
    with pytest.raises(TaskError, match=r"z\.txt already exists"):
        await run_task("EXTRACT", {"archive": str(archive), "outputDir": str(out)}, ctx)
    assert sorted(os.listdir(out)) == ["z.txt"]
    assert (out / "z.txt").read_bytes() == b"old z"
    await run_task(
        "EXTRACT", {"archive": str(archive), "outputDir": str(out), "overwrite": "true"}, ctx
    )
    assert tree(out) == {"a.txt": b"new a", "z.txt": b"new z"}


async def test_extract_detects_the_format_from_the_content(tmp_path: Path) -> None:
    archive = tmp_path / "upload.bin"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add_file(tar, "inside.txt", b"hi")
    archive.write_bytes(buffer.getvalue())
    ctx = make_ctx(tmp_path)
    await run_task("EXTRACT", {"archive": str(archive), "outputDir": "out"}, ctx)
    assert tree(tmp_path / "out") == {"inside.txt": b"hi"}
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(TaskError, match="neither a zip nor a tar"):
        await run_task("EXTRACT", {"archive": str(junk), "outputDir": "out2"}, ctx)


async def test_extract_keeps_a_symlink_that_stays_inside(tmp_path: Path) -> None:
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "data/file.txt", b"content")
        link = tarfile.TarInfo("data/alias.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "file.txt"
        tar.addfile(link)
    ctx = make_ctx(tmp_path)
    await run_task("EXTRACT", {"archive": str(archive), "outputDir": "out"}, ctx)
    alias = tmp_path / "out" / "data" / "alias.txt"
    assert alias.is_symlink()
    assert alias.read_bytes() == b"content"


# ----------------------------------------------------------------- malicious archives


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def tar_with(path: Path, *members: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            if isinstance(member, tuple):
                add_file(tar, *member)
            else:
                tar.addfile(member)
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zip_with(path: Path, *members: tuple[str | zipfile.ZipInfo, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


async def assert_refused(tmp_path: Path, archive: Path, ctx: TaskContext) -> None:
    out = tmp_path / "out"
    with pytest.raises(TaskError, match="EXTRACT") as caught:
        await run_task("EXTRACT", {"archive": str(archive), "outputDir": str(out)}, ctx)
    assert "member" in caught.value.message
    # Refused for the bad member, not for the harmless one before it.
    assert "good.txt" not in caught.value.message
    # Nothing escaped, nothing was published, no staging folder left behind.
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "outside").exists()
    assert os.listdir(out) == []


def outside(tmp_path: Path) -> str:
    return str(tmp_path / "outside" / "evil.txt")


TarMember = tarfile.TarInfo | tuple[str, bytes]
MALICIOUS_TARS: dict[str, Callable[[Path], list[TarMember]]] = {
    "dotdot": lambda t: [("../evil.txt", b"x")],
    "nested dotdot": lambda t: [("a/b/../../../evil.txt", b"x")],
    "absolute": lambda t: [(outside(t), b"x")],
    "absolute symlink": lambda t: [special("link", tarfile.SYMTYPE, str(t))],
    "symlink climbing out": lambda t: [special("link", tarfile.SYMTYPE, "../..")],
    "write through a symlink": lambda t: [
        special("up", tarfile.SYMTYPE, ".."),
        ("up/evil.txt", b"x"),
    ],
    "hard link outside": lambda t: [special("hard", tarfile.LNKTYPE, "../evil.txt")],
    "character device": lambda t: [special("null", tarfile.CHRTYPE)],
    "fifo": lambda t: [special("pipe", tarfile.FIFOTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
async def test_extract_refuses_malicious_tar(tmp_path: Path, case: str) -> None:
    (tmp_path / "evil.txt").unlink(missing_ok=True)
    archive = tar_with(tmp_path / "bad.tar", ("good.txt", b"ok"), *MALICIOUS_TARS[case](tmp_path))
    await assert_refused(tmp_path, archive, make_ctx(tmp_path))


ZipMember = tuple[str | zipfile.ZipInfo, bytes]
MALICIOUS_ZIPS: dict[str, Callable[[Path], list[ZipMember]]] = {
    "dotdot": lambda t: [("../evil.txt", b"x")],
    "nested dotdot": lambda t: [("a/../../evil.txt", b"x")],
    "backslash dotdot": lambda t: [("..\\evil.txt", b"x")],
    "absolute": lambda t: [(outside(t), b"x")],
    "drive letter": lambda t: [("C:/evil.txt", b"x")],
    "symlink": lambda t: [zip_symlink("link", "/etc/passwd")],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_ZIPS))
async def test_extract_refuses_malicious_zip(tmp_path: Path, case: str) -> None:
    archive = zip_with(tmp_path / "bad.zip", ("good.txt", b"ok"), *MALICIOUS_ZIPS[case](tmp_path))
    await assert_refused(tmp_path, archive, make_ctx(tmp_path))


async def test_extract_a_corrupt_archive(tmp_path: Path) -> None:
    archive = tmp_path / "broken.zip"
    good = zip_with(tmp_path / "good.zip", ("a.txt", b"x" * 1000))
    archive.write_bytes(good.read_bytes()[:-30])
    ctx = file_ctx(tmp_path)
    with pytest.raises(TaskError, match="cannot read"):
        await run_task("EXTRACT", {"archive": str(archive), "outputDir": "out"}, ctx)


@pytest.mark.parametrize(
    ("task", "args", "problems"),
    [
        ("ARCHIVE", {"files": ["a", "b*"], "outputPath": "/x/y.tar.xz"}, []),
        ("ARCHIVE", {"files": "a,b", "outputPath": "/x/#TI_name#"}, []),
        (
            "ARCHIVE",
            {"files": "a", "outputPath": "/x/y.rar"},
            [
                "argument 'outputPath' must end with one of .zip, .tar, .tar.gz, .tgz, "
                ".tar.bz2, .tbz2, .tar.xz, .txz"
            ],
        ),
        ("ARCHIVE", {"files": [], "outputPath": "a.zip"}, ["argument 'files' names no file"]),
        (
            "ARCHIVE",
            {"files": {"a": 1}, "outputPath": "a.zip"},
            ["argument 'files' must be a string or a list of strings"],
        ),
        ("ARCHIVE", {"outputPath": "a.zip"}, ["missing argument 'files'"]),
        ("EXTRACT", {"outputDir": "/x"}, []),
        ("EXTRACT", {"archive": "#TRUEFULLPATH#", "outputDir": "/x", "overwrite": False}, []),
        ("EXTRACT", {"archive": "a.zip"}, ["missing argument 'outputDir'"]),
    ],
)
def test_check_args(task: str, args: dict[str, object], problems: list[str]) -> None:
    cls = task_class(task)
    assert cls is not None
    assert cls.check_args(args) == problems
