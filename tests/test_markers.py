"""Substitution markers: every marker, TIMESTAMP formats, env variables, unknown markers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.tasks.base import TaskContext
from gatewayd.tasks.markers import (
    format_timestamp,
    marker_env,
    marker_names,
    substitute,
    substitute_args,
    unknown_markers,
)
from tests.tasks_support import FIXED_NOW, PARIS, make_ctx, make_transfer


@pytest.fixture
def ctx(tmp_path: Path) -> TaskContext:
    transfer = make_transfer(
        id=42,
        rule="inbox",
        requester="alice",
        requested="gw-sftp",
        local_filepath="/data/in/alice/report.2024.csv",
        remote_filepath="/upload/report.2024.csv",
        src_filename="report.2024.csv",
        filesize=1234,
        transfer_info={"client": "ACME", "count": 3, "tags": ["a", "é"], "none": None},
    )
    return make_ctx(
        tmp_path,
        transfer,
        in_path="/data/in",
        out_path="/data/out",
        work_path="/data/tmp",
        home_path="/srv/gw",
        local_host="gw-sftp",
        remote_host="alice@10.0.0.5",
    )


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("#TRUEFULLPATH#", "/data/in/alice/report.2024.csv"),
        ("#TRUEFILENAME#", "report.2024.csv"),
        ("#BASEFILENAME#", "report.2024"),
        ("#FILEEXTENSION#", ".csv"),
        ("#ORIGINALFULLPATH#", "/upload/report.2024.csv"),
        ("#ORIGINALFILENAME#", "report.2024.csv"),
        ("#FILESIZE#", "1234"),
        ("#INPATH#", "/data/in"),
        ("#OUTPATH#", "/data/out"),
        ("#WORKPATH#", "/data/tmp"),
        ("#HOMEPATH#", "/srv/gw"),
        ("#RULE#", "inbox"),
        ("#DATE#", "20240305"),
        ("#HOUR#", "150709"),
        ("#TIMESTAMP#", "2024-03-05_150709"),
        ("#TIMESTAMP(YYYY)#", "2024"),
        ("#REMOTEHOST#", "alice@10.0.0.5"),
        ("#LOCALHOST#", "gw-sftp"),
        ("#TRANSFERID#", "42"),
        ("#REQUESTERHOST#", "alice"),
        ("#REQUESTEDHOST#", "gw-sftp"),
        ("#ERRORMSG#", ""),
        ("#ERRORCODE#", "O"),
        ("#ERRORSTRCODE#", "TeOk"),
        ("#TI_client#", "ACME"),
        ("#TI_count#", "3"),
        ("#TI_tags#", '["a", "é"]'),
        ("#TI_none#", "null"),
        ("#TI_missing#", ""),
    ],
)
def test_each_marker(ctx: TaskContext, marker: str, expected: str) -> None:
    assert substitute(marker, ctx) == expected
    assert substitute(f"x{marker}y", ctx) == f"x{expected}y"


def test_every_marker_is_tested() -> None:
    tested = {
        "#TRUEFULLPATH#",
        "#TRUEFILENAME#",
        "#BASEFILENAME#",
        "#FILEEXTENSION#",
        "#ORIGINALFULLPATH#",
        "#ORIGINALFILENAME#",
        "#FILESIZE#",
        "#INPATH#",
        "#OUTPATH#",
        "#WORKPATH#",
        "#HOMEPATH#",
        "#RULE#",
        "#DATE#",
        "#HOUR#",
        "#TIMESTAMP#",
        "#TIMESTAMP(format)#",
        "#REMOTEHOST#",
        "#LOCALHOST#",
        "#TRANSFERID#",
        "#REQUESTERHOST#",
        "#REQUESTEDHOST#",
        "#ERRORMSG#",
        "#ERRORCODE#",
        "#ERRORSTRCODE#",
        "#TI_<key>#",
    }
    assert set(marker_names()) == tested


def test_original_names_of_a_send_are_the_local_file(tmp_path: Path) -> None:
    transfer = make_transfer(
        is_send=True,
        local_filepath="/data/out/invoice.pdf",
        remote_filepath="/remote/inbox/invoice.pdf",
    )
    ctx = make_ctx(tmp_path, transfer)
    assert substitute("#ORIGINALFULLPATH#|#ORIGINALFILENAME#", ctx) == (
        "/data/out/invoice.pdf|invoice.pdf"
    )


def test_original_name_of_a_receive_falls_back_to_the_source_name(tmp_path: Path) -> None:
    transfer = make_transfer(local_filepath="/data/in/x.1", src_filename="dir/original.txt")
    ctx = make_ctx(tmp_path, transfer)
    assert substitute("#ORIGINALFULLPATH#|#ORIGINALFILENAME#", ctx) == (
        "dir/original.txt|original.txt"
    )


def test_file_without_extension_and_unknown_id(tmp_path: Path) -> None:
    transfer = make_transfer(id=None, local_filepath="/data/in/README", filesize=-1)
    ctx = make_ctx(tmp_path, transfer)
    assert substitute("#BASEFILENAME#|#FILEEXTENSION#|#TRANSFERID#|#FILESIZE#", ctx) == (
        "README|||-1"
    )


def test_remote_host_defaults_to_the_account_or_partner(tmp_path: Path) -> None:
    server = make_ctx(tmp_path, make_transfer(is_server=True, account="bob"), remote_host="")
    client = make_ctx(
        tmp_path, make_transfer(is_server=False, account=None, partner="acme"), remote_host=""
    )
    assert substitute("#REMOTEHOST#", server) == "bob"
    assert substitute("#REMOTEHOST#", client) == "acme"


def test_error_markers_prefer_the_error_being_handled(tmp_path: Path) -> None:
    transfer = make_transfer(error_code=ErrorCode.TeIntegrity, error_msg="size mismatch")
    ctx = make_ctx(tmp_path, transfer)
    assert substitute("#ERRORCODE#/#ERRORSTRCODE#/#ERRORMSG#", ctx) == (
        "M/TeIntegrity/size mismatch"
    )
    ctx.error = TransferError(ErrorCode.TeDataTransfer, "connection lost")
    assert substitute("#ERRORCODE#/#ERRORSTRCODE#/#ERRORMSG#", ctx) == (
        "T/TeDataTransfer/connection lost"
    )


def test_dates_are_in_the_gateway_time_zone(tmp_path: Path) -> None:
    # 23:30 UTC is already the next day in Paris.
    ctx = make_ctx(tmp_path, now=lambda: datetime(2024, 3, 5, 23, 30, 0, tzinfo=UTC))
    assert substitute("#DATE#-#HOUR#", ctx) == "20240306-003000"
    utc_ctx = make_ctx(
        tmp_path, timezone=UTC, now=lambda: datetime(2024, 3, 5, 23, 30, 0, tzinfo=UTC)
    )
    assert substitute("#DATE#-#HOUR#", utc_ctx) == "20240305-233000"


def test_a_naive_now_is_taken_in_the_gateway_time_zone(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path, now=lambda: datetime(2024, 7, 1, 8, 0, 0))
    assert substitute("#HOUR# #TIMESTAMP(zz)#", ctx) == "080000 +02:00"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("", "2024-03-05_150709"),
        ("YYYY-MM-DD_HHmmss", "2024-03-05_150709"),
        ("YYYYMMDD", "20240305"),
        ("YY", "24"),
        ("MMMM", "March"),
        ("MMM", "Mar"),
        ("MM/M", "03/3"),
        ("DD/D", "05/5"),
        ("dddd ddd", "Tuesday Tue"),
        ("HH hh h", "15 03 3"),
        ("PM pm", "PM pm"),
        ("mm:m", "07:7"),
        ("ss:s", "09:9"),
        ("tz zz z", "CET +01:00 +0100"),
        # Longest token first: MMMM is a month name, not MM twice.
        ("MMMMYYYY", "March2024"),
        # Characters that are no token stay as they are.
        ("[YYYY] at HH.mm!", "[2024] at 15.07!"),
        ("xy_#", "xy_#"),
    ],
)
def test_timestamp_tokens(fmt: str, expected: str) -> None:
    moment = FIXED_NOW.astimezone(PARIS)
    assert format_timestamp(fmt, moment) == expected


def test_timestamp_morning_summer_time_and_midnight() -> None:
    summer = datetime(2024, 7, 14, 6, 5, 4, tzinfo=UTC).astimezone(PARIS)
    assert format_timestamp("h:mm pm tz zz z", summer) == "8:05 am CEST +02:00 +0200"
    midnight = datetime(2024, 1, 1, 0, 0, 0, tzinfo=PARIS)
    assert format_timestamp("hh h PM", midnight) == "12 12 AM"
    west = datetime(2024, 1, 1, 12, 0, tzinfo=UTC).astimezone(ZoneInfo("America/St_Johns"))
    assert format_timestamp("zz z", west) == "-03:30 -0330"


def test_timestamp_marker_with_formats(ctx: TaskContext) -> None:
    assert substitute("#TIMESTAMP()#", ctx) == "2024-03-05_150709"
    assert substitute("f_#TIMESTAMP(YYYYMMDD-HHmm)#.csv", ctx) == "f_20240305-1507.csv"
    assert substitute("#TIMESTAMP(dddd D MMMM)#", ctx) == "Tuesday 5 March"


def test_adjacent_markers_and_stray_hashes(ctx: TaskContext) -> None:
    assert substitute("#BASEFILENAME##FILEEXTENSION#", ctx) == "report.2024.csv"
    # A non-marker `#...#` must not swallow the hash that opens a real marker.
    assert substitute("a#b#TRUEFILENAME#", ctx) == "a#breport.2024.csv"
    assert substitute("A#B#RULE#", ctx) == "A#Binbox"
    assert substitute("#FOO#RULE#", ctx) == "#FOOinbox"
    assert substitute("issue #12 #", ctx) == "issue #12 #"
    assert substitute("#", ctx) == "#"
    assert substitute("#rule#", ctx) == "#rule#"
    assert substitute("no markers", ctx) == "no markers"


def test_substitute_args_is_recursive(ctx: TaskContext) -> None:
    args = {
        "path": "#OUTPATH#/#TRUEFILENAME#",
        "list": ["#RULE#", 3, {"deep": "#TI_client#"}],
        "tuple": ("#TRANSFERID#",),
        "number": 5,
        "flag": True,
        "none": None,
        "#RULE#": "keys stay",
    }
    assert substitute_args(args, ctx) == {
        "path": "/data/out/report.2024.csv",
        "list": ["inbox", 3, {"deep": "ACME"}],
        "tuple": ("42",),
        "number": 5,
        "flag": True,
        "none": None,
        "#RULE#": "keys stay",
    }
    # The original is not changed.
    assert args["path"] == "#OUTPATH#/#TRUEFILENAME#"


def test_marker_env(ctx: TaskContext) -> None:
    ctx.transfer.transfer_info["weird key-é"] = "v"
    env = marker_env(ctx)
    assert env["GATEWAYD_TRUEFULLPATH"] == "/data/in/alice/report.2024.csv"
    assert env["GATEWAYD_TRUEFILENAME"] == "report.2024.csv"
    assert env["GATEWAYD_DATE"] == "20240305"
    assert env["GATEWAYD_TIMESTAMP"] == "2024-03-05_150709"
    assert env["GATEWAYD_ERRORCODE"] == "O"
    assert env["GATEWAYD_RULE"] == "inbox"
    assert env["GATEWAYD_TI_CLIENT"] == "ACME"
    assert env["GATEWAYD_TI_COUNT"] == "3"
    assert env["GATEWAYD_TI_WEIRD_KEY__"] == "v"
    assert json.loads(env["GATEWAYD_TRANSFERINFO"])["tags"] == ["a", "é"]
    simple = {name.strip("#") for name in marker_names() if "(" not in name and "<" not in name}
    assert {f"GATEWAYD_{name}" for name in simple} <= set(env)
    assert all(isinstance(value, str) for value in env.values())


@pytest.mark.parametrize(
    ("text", "unknown"),
    [
        ("#TRUEFULLPATH#", []),
        ("#TI_anything.at-all#", []),
        ("#TIMESTAMP#", []),
        ("#TIMESTAMP(YYYY)#", []),
        ("#TIMESTAMP(YYYY-MM (x))#", []),
        ("a#b", []),
        ("#", []),
        ("##", []),
        ("issue #12 and #13", []),
        ("echo $x # comment # here", []),
        ("#1#", []),
        ("#FOO#", ["#FOO#"]),
        ("#DAET#/#DATE#", ["#DAET#"]),
        ("#date#", ["#date#"]),
        ("#TI_#", ["#TI_#"]),
        ("#TRUEFULLPATH", []),
        ("#NOPE(x)#", ["#NOPE(x)#"]),
        ("#FOO#DATE#", ["#FOO#"]),
        ("#DATE#FOO#", []),
        ("#X# and #X#", ["#X#"]),
    ],
)
def test_unknown_markers(text: str, unknown: list[str]) -> None:
    assert unknown_markers(text) == unknown
