"""Paths an attacker controls: symbolic links in rule folders, renames of what is not
the partner's, the rule's temp folder, names with line and bidi controls, deletes.

A real gateway (in this event loop) with its admin API, an SFTP server that OpenSSH's
`sftp` talks to and an HTTP server that curl talks to; real files and real links.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest

from gatewayd import safepath
from gatewayd.model import ErrorCode, Status
from gatewayd.safepath import Beneath, LinkRefused, NotAFile
from gatewayd.store.base import TransferFilter
from tests.api_support import ApiEnv
from tests.api_support import password_hash as cheap_hash
from tests.gateway_env import exec_task, make_file
from tests.http_support import run_curl
from tests.sftp_peers import keygen, need, sftp

PASSWORD = "s3cret-for-tests"  # the password of tests.api_support.password_hash()
SECRET = Path("/etc/passwd")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    need("sftp", "curl")
    environment = ApiEnv(tmp_path)
    key = tmp_path / "keys" / "acme"
    environment.accounts["acme"] = {"password": cheap_hash(), "public_keys": [keygen(key)]}
    environment.accounts["bob"] = {"password": cheap_hash()}
    environment.extra["servers"] = {
        "sftp": {"protocol": "sftp", "port": 0},
        "web": {"protocol": "http", "port": 0},
    }
    environment.rule("outbox", "send", shared_folder=True)
    environment.rule("mine", "send")  # per-account folders
    environment.rule("pickup", "send", shared_folder=True, allow_delete=True)
    environment.rule("inbox", "receive", shared_folder=True)
    environment.rule("drop", "receive", allow_rename=True)
    environment.rule(
        "checked",
        "receive",
        # The file is swapped for a link before the COPY reads it.
        post=[
            exec_task(f'rm "$1" && ln -s {SECRET} "$1"', "#TRUEFULLPATH#"),
            {"type": "COPY", "args": {"path": str(tmp_path / "copies")}},
        ],
    )
    yield environment
    await environment.stop()


def ports(env: ApiEnv) -> tuple[int, str]:
    return env.gw.servers["sftp"].bound_port, f"http://127.0.0.1:{env.gw.servers['web'].bound_port}"


def key_of(env: ApiEnv) -> Path:
    return env.root / "keys" / "acme"


# ------------------------------------------------------------------ links, client side


async def test_client_sends_never_follow_a_link(env: ApiEnv) -> None:
    await env.start()
    outbox = env.folder("outbox")
    os.symlink(SECRET, outbox / "l")
    os.symlink("/etc", outbox / "etc")
    body = {"rule": "outbox", "partner": "share", "file": "l", "nbOfAttempts": 0}

    answer = await env.api.call("POST", "/api/transfers", json_body=body)
    assert answer.status == 400, answer.text
    assert "symbolic link" in answer.errors[0]["message"]
    inside = {**body, "file": "etc/passwd"}
    answer = await env.api.call("POST", "/api/transfers", json_body=inside)
    assert answer.status == 400 and "etc is a symbolic link" in answer.text, answer.text

    r66 = {"ruleName": "outbox", "filename": "l", "requested": "share"}
    answer = await env.api.call("POST", "/v2/transfers", json_body=r66)
    assert answer.status == 400 and "symbolic link" in answer.text, answer.text
    assert [e["errorCode"] for e in answer.errors] == [9]

    # A link swapped in after the request was accepted: refused when the file is opened.
    make_file(outbox / "swapped", 100)
    start = (env.clock.now() + timedelta(hours=1)).isoformat()
    answer = await env.api.call(
        "POST", "/api/transfers", json_body={**body, "file": "swapped", "start": start}
    )
    assert answer.status == 201, answer.text
    (outbox / "swapped").unlink()
    os.symlink(SECRET, outbox / "swapped")
    env.clock.advance(7200)
    env.gw.scheduler.wake()
    row = await env.wait_end(answer.body["id"])
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeForbidden)
    assert "swapped is a symbolic link" in row.error_msg
    assert list(env.share.iterdir()) == [], "the partner received nothing"


async def test_tapis_folders_never_follow_a_link(env: ApiEnv) -> None:
    await env.start()
    outbox = env.folder("outbox")
    make_file(outbox / "batch" / "ok.txt", 10)
    os.symlink("/etc", outbox / "batch" / "etc")
    os.symlink(SECRET, outbox / "batch" / "passwd")
    os.symlink("/etc", outbox / "linked")
    body = {
        "elements": [
            {"sourceURI": "tapis://local/outbox/batch", "destinationURI": "tapis://share/b"},
            {
                "sourceURI": "tapis://local/outbox/linked",
                "destinationURI": "tapis://share/c",
                "optional": True,
            },
        ]
    }
    answer = await env.api.call("POST", "/v3/files/transfers", json_body=body)
    assert answer.status == 200, answer.text
    result = answer.body["result"]
    assert result["totalTransfers"] == 1, "only the regular file of the folder"
    assert "linked is a symbolic link" in result["parentTasks"][1]["errorMessage"]


# ------------------------------------------------------------------ links, server side


async def test_partner_downloads_and_listings_never_follow_a_link(env: ApiEnv) -> None:
    await env.start()
    sftp_port, base = ports(env)
    outbox = env.folder("outbox")
    make_file(outbox / "report.csv", 1000)
    os.symlink(SECRET, outbox / "l")
    os.symlink("/etc", outbox / "sub")
    os.symlink("/etc", env.folder("mine") / "acme")  # the account's own folder is a link
    local = env.root / "got"
    local.mkdir()

    listing = await sftp(
        sftp_port, "acme", ["ls -la outbox", "ls -la mine", f"-get outbox/l {local}/l",
                            f"-get mine/passwd {local}/p"],
        key=key_of(env),
    )  # fmt: skip
    assert "report.csv" in listing.output, listing.output
    for hidden in (" l\n", " sub\n", ".tmp", "passwd\n"):
        assert hidden not in listing.output.replace("\r", ""), (hidden, listing.output)
    assert not (local / "l").exists() and not (local / "p").exists()

    for path in ("outbox/l", "outbox/sub/passwd", "mine/passwd"):
        got = await run_curl("-u", f"acme:{PASSWORD}", f"{base}/{path}")
        assert got.status == 404, (path, got)
        assert b"root:" not in got.body
    shown = await run_curl("-u", f"acme:{PASSWORD}", f"{base}/outbox/")
    assert [e["name"] for e in shown.json()["entries"]] == ["report.csv"]
    checksum = await run_curl("-u", f"acme:{PASSWORD}", f"{base}/outbox/report.csv")
    assert checksum.status == 200 and len(checksum.body) == 1000


async def test_a_task_never_reads_through_a_link(env: ApiEnv, tmp_path: Path) -> None:
    await env.start()
    _, base = ports(env)
    source = tmp_path / "up.txt"
    make_file(source, 100)
    put = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(source), f"{base}/checked/up.txt")
    assert put.status == 403, put
    rows, _ = await env.gw.store.list_transfers(TransferFilter(limit=1000, sort="id"))
    row = rows[-1]
    assert (row.status, row.error_code) == (Status.ERROR, ErrorCode.TeForbidden)
    assert "COPY" in row.error_msg and "symbolic link" in row.error_msg
    assert not (tmp_path / "copies" / "up.txt").exists()


def test_safepath_refuses_links_anywhere_and_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    root = tmp_path / "rule"
    (root / "a").mkdir(parents=True)
    make_file(root / "a" / "f", 10)
    os.symlink(root / "a", root / "inner")  # a link that stays inside is refused too
    os.mkfifo(root / "fifo")
    with pytest.raises(LinkRefused, match="inner is a symbolic link"):
        safepath.open_file(Beneath(root, ("inner", "f")), os.O_RDONLY)
    with pytest.raises(NotAFile):
        safepath.open_file(Beneath(root, ("fifo",)), os.O_RDONLY)
    fd = safepath.open_file(Beneath(root, ("a", "f")), os.O_RDONLY)
    os.close(fd)
    assert safepath.regular_file(Beneath(root, ("inner",))) is None


# ------------------------------------------------------------------ renames and deletes


async def test_renames_only_of_what_is_the_partners(env: ApiEnv, tmp_path: Path) -> None:
    await env.start()
    sftp_port, base = ports(env)
    make_file(env.folder("outbox") / "keep.csv", 10)
    upload = tmp_path / "u.bin"
    make_file(upload, 1000)
    result = await sftp(
        sftp_port, "acme",
        ["-rename outbox/keep.csv outbox/.x", "-rename /outbox/.tmp /outbox/t",
         "-rename /inbox/.tmp /inbox/t", f"put {upload} inbox/mine.bin",
         "-rename inbox/mine.bin inbox/theirs.bin"],
        key=key_of(env),
    )  # fmt: skip
    assert result.returncode == 0, result.output
    assert (env.folder("outbox") / "keep.csv").exists(), "a file we send is not renamed"
    assert (env.folder("inbox") / ".tmp").is_dir(), "the temp folder stays"
    assert result.output.count("Permission denied") == 4, result.output
    listing = await sftp(sftp_port, "acme", ["ls -la inbox", "ls -la outbox"], key=key_of(env))
    assert ".tmp" not in listing.output and "mine.bin" in listing.output, listing.output
    assert (env.folder("inbox") / "mine.bin").exists(), "no allow_rename: not renamed"
    assert not (env.folder("inbox") / "theirs.bin").exists()

    # Another account's upload in the same shared folder still works.
    other = await run_curl("-u", f"bob:{PASSWORD}", "-T", str(upload), f"{base}/inbox/b.bin")
    assert other.status == 201, other

    moved = await run_curl(
        "-u", f"acme:{PASSWORD}", "-X", "MOVE", "-H", f"Destination: {base}/outbox/k2.csv",
        f"{base}/outbox/keep.csv",
    )  # fmt: skip
    assert moved.status == 403 and (env.folder("outbox") / "keep.csv").exists()
    away = await run_curl(
        "-u", f"acme:{PASSWORD}", "-X", "MOVE",
        "-H", "Destination: http://elsewhere.example/outbox/k2.csv", f"{base}/outbox/keep.csv",
    )  # fmt: skip
    assert away.status == 502, away

    # Where the rule allows it, the account renames its own received file (audited).
    await sftp(sftp_port, "acme", [f"put {upload} drop/a.bin"], key=key_of(env))
    renamed = await sftp(sftp_port, "acme", ["rename drop/a.bin drop/b.bin"], key=key_of(env))
    assert renamed.returncode == 0, renamed.output
    assert (env.folder("drop") / "acme" / "b.bin").exists()
    audit = await env.api.get("/api/audit")
    entry = next(e for e in audit["entries"] if e["action"] == "file.rename")
    assert entry["who"] == "account acme" and entry["details"]["to"] == "b.bin"


async def test_delete_only_where_the_rule_allows_it(env: ApiEnv) -> None:
    await env.start()
    sftp_port, base = ports(env)
    make_file(env.folder("pickup") / "done.csv", 10)
    make_file(env.folder("pickup") / "web.csv", 10)
    make_file(env.folder("outbox") / "keep.csv", 10)
    local = env.root / "got"
    local.mkdir()
    result = await sftp(
        sftp_port, "acme",
        [f"get pickup/done.csv {local}/done.csv", "rm pickup/done.csv", "-rm outbox/keep.csv"],
        key=key_of(env),
    )  # fmt: skip
    assert result.returncode == 0, result.output
    assert (local / "done.csv").exists() and not (env.folder("pickup") / "done.csv").exists()
    assert (env.folder("outbox") / "keep.csv").exists()
    gone = await run_curl("-u", f"acme:{PASSWORD}", "-X", "DELETE", f"{base}/pickup/web.csv")
    assert gone.status == 204 and not (env.folder("pickup") / "web.csv").exists()
    again = await run_curl("-u", f"acme:{PASSWORD}", "-X", "DELETE", f"{base}/pickup/web.csv")
    assert again.status == 404
    audit = await env.api.get("/api/audit")
    deleted = [e["details"]["file"] for e in audit["entries"] if e["action"] == "file.delete"]
    assert sorted(deleted) == ["done.csv", "web.csv"]


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    "name",
    ["a\u2028b.txt", "a\u2029b.txt", "a\u0085b.txt", "a\u009bb.txt", "invoice\u202efdp.exe"],
)
async def test_names_with_line_or_bidi_controls_are_refused(
    env: ApiEnv, tmp_path: Path, name: str
) -> None:
    await env.start()
    _, base = ports(env)
    source = tmp_path / "x.txt"
    make_file(source, 10)
    put = await run_curl("-u", f"acme:{PASSWORD}", "-T", str(source), f"{base}/inbox/{quote(name)}")
    assert put.status == 403, put
    message = put.json()["errors"][0]["message"]
    bad = next(c for c in name if not c.isalnum() and c != ".")
    escaped = f"\\u{ord(bad):04x}" if ord(bad) > 0xFF else f"\\x{ord(bad):02x}"
    assert escaped in message and name not in message, message
    assert list((env.folder("inbox")).iterdir()) == [env.folder("inbox") / ".tmp"]


async def test_names_with_joiners_are_accepted(env: ApiEnv, tmp_path: Path) -> None:
    await env.start()
    sftp_port, _ = ports(env)
    source = tmp_path / "x.txt"
    make_file(source, 10)
    name = "\u0646\u0627\u0645\u0647\u200c\u0647\u0627.txt"  # Persian, with a ZWNJ
    result = await sftp(sftp_port, "acme", [f"put {source} inbox/{name}"], key=key_of(env))
    assert result.returncode == 0, result.output
    assert (env.folder("inbox") / name).exists()
