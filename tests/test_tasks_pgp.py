"""OpenPGP tasks with `gpg` itself as the peer, in rule chains of real HTTP transfers to a
real `gatewayd serve`: what the partner's gpg encrypts and signs is decrypted and
verified by the gateway (received into the rule's staging folder, MOVEd out last);
what the gateway encrypts and signs decrypts and verifies with gpg. A tampered file, an
unknown signer, a file for another key, a file not signed each fail with their own
message and leave the received file as it came. The daemon's memory stays bounded."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gatewayd import crashpoints
from gatewayd.clock import ManualClock
from tests.api_support import ApiEnv
from tests.crash_support import died_by_itself, hidden_files, start_daemon
from tests.daemon_proc import DaemonProcess, read_row, wait_row
from tests.gateway_env import make_file
from tests.http_support import PASSWORD, http_gateway, run_curl
from tests.http_support import password_hash as http_password_hash
from tests.pgp_support import Generated, GpgPeer, status_lines

MiB = 1 << 20
ALICE = f"alice:{PASSWORD}"


@dataclass
class Keys:
    root: Path
    partner_home: GpgPeer  # the partner's machine: its own key, and ours (public)
    gateway: Generated  # our private key (passphrase "gw-pass")
    partner: Generated  # the partner's key (its secret stays in its home)
    stranger: Generated  # a key the gateway does not know (secret in the partner's home)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    root = tmp_path_factory.mktemp("pgp-keys")
    maker = GpgPeer(root / "maker")
    partner = GpgPeer(root / "partner")
    try:
        gateway = maker.generate("gateway", root / "files", passphrase="gw-pass")
        partner_key = partner.generate("partner", root / "files")
        stranger = partner.generate("stranger", root / "files")
        partner.import_key(gateway.public)
        yield Keys(root, partner, gateway, partner_key, stranger)
    finally:
        maker.close()
        partner.close()


def pgp_gateway(root: Path, keys: Keys) -> Any:
    env = http_gateway(root)
    env.extra["logging"] = {"format": "json"}
    key_dir = root / "keys"
    key_dir.mkdir(parents=True)
    assert keys.gateway.secret is not None
    shutil.copy(keys.gateway.secret, key_dir / "gateway.asc")
    shutil.copy(keys.partner.public, key_dir / "partner.asc")
    (key_dir / "gateway.pass").write_text("gw-pass\n")
    env.extra["keys"] = {
        "gw": {
            "file": "keys/gateway.asc", "kind": "private", "passphrase_file": "keys/gateway.pass",
        },
        "partner": {"file": "keys/partner.asc", "kind": "public"},
    }  # fmt: skip
    released = root / "released"
    # Received into the rule's folder (the staging folder), released by the last task.
    env.rule(
        "inbox", "receive", allow={"accounts": ["alice"]},
        post=[
            {"type": "DECRYPT&VERIFY", "args": {"signers": ["partner"]}},
            {"type": "MOVE", "args": {"path": str(released)}},
        ],
    )  # fmt: skip
    env.rule(
        "signed", "receive", allow={"accounts": ["alice"]},
        post=[
            {"type": "VERIFY", "args": {"signers": "partner", "output": "#TRUEFULLPATH#.txt"}},
            {"type": "MOVE", "args": {"path": str(released)}},
        ],
    )  # fmt: skip
    env.rule(
        "outbox", "send", allow={"accounts": ["alice"]}, shared_folder=True,
        pre=[{"type": "ENCRYPT&SIGN", "args": {
            "recipients": ["partner"], "signer": "gw", "armor": True,
            "output": "#TRUEFULLPATH#.asc", "overwrite": True,
        }}],
    )  # fmt: skip
    return env


@dataclass
class Running:
    daemon: DaemonProcess
    base: str
    db: Path
    staging: Path
    released: Path


async def upload(run: Running, rule: str, path: Path) -> dict[str, Any]:
    """PUT the file, then the transfer's row once it ended."""
    answer = await run_curl("-u", ALICE, "-T", str(path), f"{run.base}/{rule}/")
    transfer_id = answer.headers.get("waarp-transfer-id")
    assert transfer_id, f"no transfer id: {answer}\n{run.daemon.output}"
    return read_row(run.db, int(transfer_id)) | {"http": answer.status}


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def both_ways(daemon: DaemonProcess, loaded: Any, keys: Keys, tmp_path: Path) -> None:
    """What the partner's gpg makes, received; what the gateway makes, opened by gpg;
    each failure with its own message."""
    peer = keys.partner_home
    listening = [json.loads(x) for x in daemon.lines if '"server listening"' in x]
    port = next(x["port"] for x in listening if x["server"] == "web")
    staging = loaded.paths.rule_folder(loaded.config.rules["inbox"]) / "alice"
    run = Running(
        daemon, f"http://127.0.0.1:{port}", loaded.paths.database, staging,
        tmp_path / "gw" / "released",
    )  # fmt: skip
    work = tmp_path / "both"
    work.mkdir()
    gw, partner = keys.gateway.fingerprint, keys.partner.fingerprint

    # 1. Made by gpg: encrypted for us and signed by the partner, 20 MiB. Decrypted,
    # verified, released; the daemon's memory does not follow the file's size.
    plain = make_file(work / "big.bin", 20 * MiB + 5)
    peer.gpg("-r", gw, "-u", partner, "--sign", "--encrypt", "-o", str(work / "big.pgp"),
             str(work / "big.bin"))  # fmt: skip
    before = rss_kib(daemon.proc.pid)
    row = await upload(run, "inbox", work / "big.pgp")
    assert row["status"] == "DONE", row
    assert (run.released / "big.pgp").read_bytes() == plain
    assert not (staging / "big.pgp").exists(), "moved out of the staging folder last"
    grown = rss_kib(daemon.proc.pid) - before
    assert grown < 8 * 1024, f"the daemon's peak RSS grew by {grown} KiB for 20 MiB"
    assert f"good signature by 'partner' ({partner})" in daemon.output

    # 2. Each failure with its own message; the received file stays as it came.
    cases: list[tuple[str, list[str], str]] = [
        ("unknown-signer", ["-r", gw, "-u", keys.stranger.fingerprint, "--sign", "--encrypt"],
         f"signed by an unknown key {keys.stranger.fingerprint}"),
        ("not-for-us", ["-r", keys.stranger.fingerprint, "-u", partner, "--sign", "--encrypt"],
         "none is a private key of the gateway"),
        ("unsigned", ["-r", gw, "--encrypt"], "the file is not signed"),
    ]  # fmt: skip
    for name, options, message in cases:
        (work / f"{name}.txt").write_bytes(b"payload of " + name.encode() * 100)
        sent = work / f"{name}.pgp"
        peer.gpg(*options, "-o", str(sent), str(work / f"{name}.txt"))
        row = await upload(run, "inbox", sent)
        assert row["status"] == "ERROR" and row["error_code"] == "TeExternalOperation", row
        assert message in row["error_msg"], (name, row["error_msg"])
        said = row["error_msg"]
        assert said.startswith("task #0 (DECRYPT&VERIFY) failed: DECRYPT&VERIFY: "), said
        assert "DECRYPT&VERIFY: DECRYPT&VERIFY" not in said, said
        assert (staging / sent.name).read_bytes() == sent.read_bytes(), "input untouched"
        assert not (run.released / sent.name).exists()
        assert [p.name for p in staging.iterdir() if p.name.startswith(".")] == []

    # A byte changed in the encrypted data: the integrity check fails.
    make_file(work / "tampered.bin", 64 * 1024, seed=9)
    peer.gpg("-r", gw, "-u", partner, "--sign", "--encrypt", "-o", str(work / "t.pgp"),
             str(work / "tampered.bin"))  # fmt: skip
    tampered = bytearray((work / "t.pgp").read_bytes())
    tampered[len(tampered) * 3 // 4] ^= 0x01
    (work / "tampered.pgp").write_bytes(tampered)
    row = await upload(run, "inbox", work / "tampered.pgp")
    assert row["status"] == "ERROR" and row["error_code"] == "TeExternalOperation", row
    assert "integrity check failed: the file was changed or damaged" in row["error_msg"], row
    assert (staging / "tampered.pgp").read_bytes() == bytes(tampered)

    # A signed (not encrypted) file: verified into a new name, which the MOVE takes.
    (work / "note.txt").write_bytes(b"signed, not secret\n" * 50)
    peer.gpg("-u", partner, "--compress-algo", "none", "--sign", "-o",
             str(work / "note.gpg"), str(work / "note.txt"))  # fmt: skip
    row = await upload(run, "signed", work / "note.gpg")
    assert row["status"] == "DONE", row
    assert (run.released / "note.gpg.txt").read_bytes() == (work / "note.txt").read_bytes()
    # ...and one byte of its text changed: a BAD signature, named.
    bad = (work / "note.gpg").read_bytes().replace(b"signed, not", b"signed, NOT", 1)
    (work / "note-bad.gpg").write_bytes(bad)
    row = await upload(run, "signed", work / "note-bad.gpg")
    assert row["status"] == "ERROR", row
    assert f"BAD signature by key 'partner' ({partner})" in row["error_msg"], row

    # 3. Made by the gateway: a download encrypted and signed on the way out, which the
    # partner's gpg decrypts and verifies.
    shared = loaded.paths.rule_folder(loaded.config.rules["outbox"])
    offered = make_file(shared / "report.csv", 300_000, seed=3)
    got = work / "report.asc"
    answer = await run_curl("-u", ALICE, f"{run.base}/outbox/report.csv", output=got)
    assert answer.status == 200, answer.headers.get("waarp-error-message")
    assert got.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----")
    opened = peer.gpg("--decrypt", "-o", str(work / "report.out"), str(got))
    assert (work / "report.out").read_bytes() == offered
    status = status_lines(opened)
    assert any(s.startswith(f"VALIDSIG {gw}") for s in status), status
    assert "DECRYPTION_OKAY" in status and "GOODMDC" in status, status
    assert "gw-pass" not in daemon.output, "a passphrase is never logged"


# ------------------------------------------------------------------ in-process gateway


async def test_keys_listed_expiring_key_fails_and_reload_reimports(
    tmp_path: Path, keys: Keys
) -> None:
    """An in-process gateway (its clock moved by the test) over HTTP: `/api/keys` lists
    the keys without a secret, the expiry metric, a key that expires makes ENCRYPT fail
    with its own message, and a reload rebuilds the keyring from the configuration."""
    maker = GpgPeer(tmp_path / "maker")
    try:
        soon = maker.generate("soon", tmp_path / "files", expire="10d")
        later = maker.generate("later", tmp_path / "files")
    finally:
        maker.close()
    env = ApiEnv(tmp_path / "gw")
    env.users["watcher"] = {"transfers": "r"}
    env.clock = ManualClock(datetime.now(UTC))
    env.accounts["alice"] = {"password": http_password_hash()}
    env.extra["servers"] = {"web": {"protocol": "http", "address": "127.0.0.1", "port": 0}}
    key_dir = env.root / "keys"
    key_dir.mkdir()
    assert keys.gateway.secret is not None
    shutil.copy(keys.gateway.secret, key_dir / "gateway.asc")
    shutil.copy(keys.partner.public, key_dir / "partner.asc")
    (key_dir / "gateway.pass").write_text("gw-pass\n")
    env.extra["keys"] = {
        "gw": {
            "file": "keys/gateway.asc", "kind": "private", "passphrase_file": "keys/gateway.pass",
        },
        "partner": {"file": "keys/partner.asc", "kind": "public"},
        "soon": {"file": str(soon.public), "kind": "public"},
    }  # fmt: skip
    env.rule(
        "push", "receive", allow={"accounts": ["alice"]},
        post=[{"type": "ENCRYPT", "args": {"recipients": "soon, partner",
                                           "output": "#TRUEFULLPATH#.pgp"}}],
    )  # fmt: skip
    await env.start()
    try:
        listed = await env.api.get("/api/keys")
        assert [k["name"] for k in listed["keys"]] == ["gw", "partner", "soon"]
        gw = await env.api.get("/api/keys/gw")
        assert gw["fingerprint"] == keys.gateway.fingerprint and gw["kind"] == "private"
        assert gw["passphraseFrom"] == "file" and gw["canSign"] and gw["canEncrypt"]
        assert listed["keys"][2]["expiresSoon"] and not listed["keys"][1]["expiresSoon"]
        text = json.dumps(listed)
        assert "gw-pass" not in text and "PRIVATE KEY" not in text
        refused = await env.api.call("GET", "/api/keys", user="watcher")
        assert refused.status == 403 and refused.codes() == ["forbidden"], refused.text
        missing = await env.api.call("GET", "/api/keys/nope")
        assert missing.status == 404 and missing.errors[0]["message"] == "no key 'nope'"
        metrics = (await env.api.call("GET", "/metrics")).text
        expiry = next(
            x
            for x in metrics.splitlines()
            if x.startswith('gatewayd_key_expiry_seconds{key="soon"')
        )
        assert 9 * 86400 < float(expiry.split()[-1]) <= 10 * 86400, expiry
        assert any(x.startswith("gatewayd_keys_expiring_soon{") and x.endswith(" 1.0")
                   for x in metrics.splitlines()), metrics  # fmt: skip

        base = f"http://127.0.0.1:{env.gw.servers['web'].bound_port}"
        folder = env.folder("push") / "alice"
        data = make_file(tmp_path / "a.bin", 100_000)
        up = await run_curl("-u", ALICE, "-T", str(tmp_path / "a.bin"), f"{base}/push/")
        assert up.status == 201, up
        row = await env.wait_end(int(up.headers["waarp-transfer-id"]))
        assert row.status.name == "DONE" and row.local_filepath == str(folder / "a.bin.pgp")
        assert (folder / "a.bin").read_bytes() == data, "a new name: the input stays"
        opened = keys.partner_home.gpg("--decrypt", str(folder / "a.bin.pgp"))
        assert opened.stdout == data, "the partner decrypts what the gateway encrypted"

        env.clock.advance(11 * 86400)
        make_file(tmp_path / "b.bin", 1000)
        up = await run_curl("-u", ALICE, "-T", str(tmp_path / "b.bin"), f"{base}/push/")
        row = await env.wait_end(int(up.headers["waarp-transfer-id"]))
        assert row.status.name == "ERROR" and str(row.error_code) == "TeExternalOperation"
        said = f"task #0 (ENCRYPT) failed: ENCRYPT: key 'soon' ({soon.fingerprint}) expired on "
        assert row.error_msg.startswith(said), row.error_msg
        assert not (folder / "b.bin.pgp").exists() and (folder / "b.bin").exists()

        # A reload: a key added, one removed; the keyring follows the configuration.
        first_home = env.gw.keyring.current.home if env.gw.keyring.current else None
        env.extra["keys"]["later"] = {"file": str(later.public), "kind": "public"}
        del env.extra["keys"]["soon"]
        env.rules["push"]["post"][0]["args"]["recipients"] = "later"
        loaded = env.load()
        await env.gw.load_keys(loaded)
        env.gw.apply_config(loaded)
        ring = env.gw.keyring.current
        assert ring is not None and ring.home != first_home and first_home is not None
        assert not first_home.exists(), "the replaced keyring is removed"
        assert sorted(ring.keys) == ["gw", "later", "partner"]
        listing = subprocess.run(
            ["gpg", "--homedir", str(ring.home), "--with-colons", "--list-keys"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert later.fingerprint in listing and soon.fingerprint not in listing
        up = await run_curl("-u", ALICE, "-T", str(tmp_path / "b.bin"), f"{base}/push/")
        row = await env.wait_end(int(up.headers["waarp-transfer-id"]))
        assert row.status.name == "DONE", row
    finally:
        await env.stop()


# ------------------------------------------------------------------ kill -9 and resume


def port(daemon: DaemonProcess) -> int:
    return int(next(json.loads(x)["port"] for x in daemon.lines if '"server listening"' in x))


def agents_under(folder: Path) -> list[int]:
    """Pids of gpg-agents whose home is below `folder` (what a killed daemon leaves)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"gpg-agent")
            and str(folder).encode() in b" ".join(cmdline)
        ):
            found.append(int(proc.name))
    return found


async def test_gpg_peer_both_ways_each_failure_says_why_and_kill_9_resumes(
    tmp_path: Path, keys: Keys
) -> None:
    """First killed after DECRYPT&VERIFY replaced the file, before the row recorded it:
    the rerun sees the file decrypted already and goes on. Then, on the same restarted
    daemon (one start saved), the exchanges with gpg both ways and every failure. At the
    end nothing is left behind: no temporary file, no keyring, not even the killed
    daemon's gpg-agent."""
    env = pgp_gateway(tmp_path / "gw", keys)
    loaded = env.load()
    staging = loaded.paths.rule_folder(loaded.config.rules["inbox"]) / "alice"
    released = tmp_path / "gw" / "released"
    work = tmp_path / "work"
    plain = make_file(work / "order.bin", 2 * MiB + 3)
    keys.partner_home.gpg("-r", keys.gateway.fingerprint, "-u", keys.partner.fingerprint,
                          "--sign", "--encrypt", "-o", str(work / "order.pgp"),
                          str(work / "order.bin"))  # fmt: skip

    first = await start_daemon(env.config_file, crash_at=crashpoints.TASK_PUBLISHED)
    await first.wait_for("gatewayd ready", timeout=60)
    client = asyncio.ensure_future(
        run_curl(
            "-u", ALICE, "-T", str(work / "order.pgp"), f"http://127.0.0.1:{port(first)}/inbox/"
        )
    )
    await died_by_itself(first)
    await client
    at_crash = read_row(loaded.paths.database, 1)
    assert (at_crash["step"], at_crash["task_number"]) == ("POST TASKS", 0), at_crash
    assert (staging / "order.pgp").read_bytes() == plain, "replaced by its plaintext"

    second = await start_daemon(env.config_file)
    try:
        await second.wait_for("gatewayd ready", timeout=60)
        row = await wait_row(
            loaded.paths.database, 1, lambda t: t["status"] in ("DONE", "ERROR"), "ended", second
        )
        assert row["status"] == "DONE", row["error_msg"]
        assert "done by the interrupted run" in second.output
        assert (released / "order.pgp").read_bytes() == plain
        assert hidden_files(staging) == [] and not (staging / "order.pgp").exists()
        await both_ways(second, loaded, keys, tmp_path)

        # A reload whose key does not unlock is refused; the keyring in use stays.
        (tmp_path / "gw" / "keys" / "gateway.pass").write_text("not-the-passphrase\n")
        since = len(second.lines)
        second.proc.send_signal(signal.SIGHUP)
        refused = await second.wait_for("reload refused", since=since)
        assert "key 'gw': wrong passphrase" in refused, refused
        assert "not-the-passphrase" not in second.output
        again = await run_curl(
            "-u",
            ALICE,
            "-T",
            str(work / "order.pgp"),
            f"http://127.0.0.1:{port(second)}/inbox/again.pgp",
        )
        row = read_row(loaded.paths.database, int(again.headers["waarp-transfer-id"]))
        assert row["status"] == "DONE", row["error_msg"]
        assert (released / "again.pgp").read_bytes() == plain
    finally:
        assert await second.stop() == 0, second.output
    assert agents_under(tmp_path / "gw") == [], "no gpg-agent left running"
    gpg = loaded.paths.state_dir / "gpg"
    left = [p.relative_to(gpg) for p in gpg.rglob("*")]
    assert len(left) == 1 and (gpg / left[0]).is_dir(), f"keyring removed at stop: {left}"
