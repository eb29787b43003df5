"""TRANSCODE and CHNEWLINE, streamed, with chunk boundaries where they hurt."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gatewayd.errors import TaskError
from gatewayd.tasks import task_class
from gatewayd.tasks.text import ChNewline, StreamReplacer, Transcode
from tests.tasks_support import file_ctx, leftovers, run_task

LATIN1_TEXT = "Café, crème brûlée, Ærøskøbing, ½ €uro? no: 100 francs\n"


async def test_transcode_latin1_to_utf8_in_place(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=LATIN1_TEXT.replace("€", "E").encode("latin-1"))
    path = Path(ctx.transfer.local_filepath)
    path.chmod(0o604)
    await run_task("TRANSCODE", {"fromCharset": "latin-1", "toCharset": "utf-8"}, ctx)
    expected = LATIN1_TEXT.replace("€", "E").encode("utf-8")
    assert path.read_bytes() == expected
    assert ctx.transfer.filesize == len(expected)
    assert path.stat().st_mode & 0o777 == 0o604
    assert leftovers(path.parent) == []


async def test_transcode_to_an_output_path(tmp_path: Path) -> None:
    original = "naïve".encode()
    ctx = file_ctx(tmp_path, content=original)
    args = {"fromCharset": "UTF-8", "toCharset": "UTF-16", "outputPath": "#OUTPATH#/x.txt"}
    await run_task("TRANSCODE", args, ctx)
    assert (tmp_path / "out" / "x.txt").read_bytes() == "naïve".encode("utf-16")
    assert Path(ctx.transfer.local_filepath).read_bytes() == original
    with pytest.raises(TaskError, match="already exists"):
        await run_task("TRANSCODE", args, ctx)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5])
async def test_transcode_multibyte_characters_across_chunks(
    tmp_path: Path, chunk_size: int
) -> None:
    text = "ÀéîõüÇ" * 20 + "€"
    ctx = file_ctx(tmp_path, content=text.encode("utf-8"))
    task = Transcode({"fromCharset": "utf-8", "toCharset": "cp1252"})
    task.chunk_size = chunk_size
    await task.run(ctx)
    assert Path(ctx.transfer.local_filepath).read_bytes() == text.encode("cp1252")


async def test_transcode_invalid_input_leaves_the_file_untouched(tmp_path: Path) -> None:
    content = b"good start \xff\xfe bad"
    ctx = file_ctx(tmp_path, content=content)
    with pytest.raises(TaskError, match="not valid utf-8 near byte 11"):
        await run_task("TRANSCODE", {"fromCharset": "utf-8", "toCharset": "latin-1"}, ctx)
    path = Path(ctx.transfer.local_filepath)
    assert path.read_bytes() == content
    assert leftovers(path.parent) == []


async def test_transcode_unrepresentable_character(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content="price: 5 €".encode())
    with pytest.raises(TaskError, match="'€' cannot be written in latin-1"):
        await run_task("TRANSCODE", {"fromCharset": "utf-8", "toCharset": "latin-1"}, ctx)


async def test_chnewline_crlf_to_lf(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=b"a\r\nb\r\n\r\nlast")
    await run_task("CHNEWLINE", {"from": "CRLF", "to": "LF"}, ctx)
    assert Path(ctx.transfer.local_filepath).read_bytes() == b"a\nb\n\nlast"
    assert ctx.transfer.filesize == len(b"a\nb\n\nlast")


async def test_chnewline_lf_to_crlf_with_literal_strings(tmp_path: Path) -> None:
    ctx = file_ctx(tmp_path, content=b"a\nb\n")
    await run_task("CHNEWLINE", {"from": "\n", "to": "\r\n"}, ctx)
    assert Path(ctx.transfer.local_filepath).read_bytes() == b"a\r\nb\r\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize(("old", "new"), [("CRLF", "LF"), ("LF", "CRLF"), ("CR", "LF")])
async def test_chnewline_across_chunk_boundaries(
    tmp_path: Path, chunk_size: int, old: str, new: str
) -> None:
    content = b"x\r\ny\r\n\r\nzz\rq\n" * 9 + b"\r"
    ctx = file_ctx(tmp_path, content=content)
    task = ChNewline({"from": old, "to": new})
    task.chunk_size = chunk_size
    await task.run(ctx)
    names = {"LF": b"\n", "CRLF": b"\r\n", "CR": b"\r"}
    expected = content.replace(names[old], names[new])
    assert Path(ctx.transfer.local_filepath).read_bytes() == expected


def test_stream_replacer_matches_bytes_replace_on_random_splits() -> None:
    rng = random.Random(20240305)
    for _ in range(300):
        data = bytes(rng.choice(b"ab\r\n") for _ in range(rng.randrange(0, 60)))
        old = rng.choice([b"\r\n", b"\n", b"\r", b"aba", b"\r\n\r\n"])
        new = rng.choice([b"", b"\n", b"\r\n", b"XYZ"])
        replacer = StreamReplacer(old, new)
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randrange(0, 8))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        output = b"".join(replacer.feed(piece) for piece in pieces) + replacer.feed(b"", final=True)
        assert output == data.replace(old, new), (data, old, new, cuts)


@pytest.mark.parametrize(
    ("task", "args", "problems"),
    [
        ("TRANSCODE", {"fromCharset": "latin-1", "toCharset": "utf-8"}, []),
        ("TRANSCODE", {"fromCharset": "#TI_charset#", "toCharset": "cp1252"}, []),
        (
            "TRANSCODE",
            {"fromCharset": "klingon", "toCharset": "utf-8"},
            ["argument 'fromCharset': unknown encoding: klingon"],
        ),
        ("TRANSCODE", {"fromCharset": "utf-8"}, ["missing argument 'toCharset'"]),
        ("CHNEWLINE", {"from": "crlf", "to": "LF"}, []),
        ("CHNEWLINE", {"from": "\r\n", "to": "LF"}, []),
        ("CHNEWLINE", {"from": "LF", "to": "\n"}, ["arguments 'from' and 'to' are the same"]),
        ("CHNEWLINE", {"from": "", "to": "LF"}, ["argument 'from' must be a non-empty string"]),
        ("CHNEWLINE", {"to": "LF"}, ["missing argument 'from'"]),
    ],
)
def test_check_args(task: str, args: dict[str, object], problems: list[str]) -> None:
    cls = task_class(task)
    assert cls is not None
    assert cls.check_args(args) == problems


def test_check_args_refuses_codecs_that_are_not_text_encodings() -> None:
    problems = Transcode.check_args({"fromCharset": "utf-8", "toCharset": "base64"})
    assert len(problems) == 1
    assert problems[0].startswith("argument 'toCharset': 'base64' is not a text encoding")
