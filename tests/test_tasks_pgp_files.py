"""The OpenPGP tasks on files, run directly with a real keyring (real gpg): results in
place or to a new name, binary or armored, a failure that leaves the file as it was and
nothing behind, and a rerun that finds its work done (in place) instead of doing it
twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gatewayd.config.schema import KeyConfig
from gatewayd.crypto.keyring import Keyring, KeyringError
from gatewayd.crypto.keys import inspect_key_file
from gatewayd.errors import TaskError
from gatewayd.model import ErrorCode
from tests.pgp_support import GpgPeer
from tests.tasks_support import file_ctx, leftovers, run_task

CONTENT = b"id,amount\n1,10\n2,20\n" * 500


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyConfig]:
    root = tmp_path_factory.mktemp("pgp-files")
    maker = GpgPeer(root / "maker")
    try:
        ours = maker.generate("ours", root / "keys", passphrase="pw")
        partner = maker.generate("partner", root / "keys")
    finally:
        maker.close()
    assert ours.secret is not None
    (root / "pass").write_text("pw\n")
    return {
        "ours": KeyConfig(file=ours.secret, kind="private", passphrase_file=root / "pass"),
        "partner": KeyConfig(file=partner.public, kind="public"),
    }


@pytest.fixture
async def keyring(tmp_path: Path, key_files: dict[str, KeyConfig]) -> AsyncIterator[Keyring]:
    configs = key_files
    infos = {name: inspect_key_file(config.file) for name, config in configs.items()}
    ring = Keyring(tmp_path / "state")
    await ring.load(configs, infos, tmp_path)
    try:
        yield ring
    finally:
        await ring.close()


async def test_in_place_both_ways_binary_and_armored(tmp_path: Path, keyring: Keyring) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    ctx.keyring = keyring
    path = Path(ctx.transfer.local_filepath)
    await run_task("ENCRYPT&SIGN", {"recipients": "ours", "signer": "ours"}, ctx)
    compressed = path.stat().st_size
    await run_task("DECRYPT&VERIFY", {}, ctx)
    await run_task("ENCRYPT&SIGN", {"recipients": "ours", "signer": "ours", "compress": False}, ctx)
    encrypted = path.read_bytes()
    assert compressed < len(CONTENT) < len(encrypted), "compressed by default, not when told"
    assert not encrypted.startswith(b"-----") and CONTENT[:20] not in encrypted
    assert ctx.transfer.filesize == len(encrypted) and ctx.transfer.local_filepath == str(path)
    await run_task("DECRYPT&VERIFY", {"signers": ["ours"]}, ctx)
    assert path.read_bytes() == CONTENT and ctx.transfer.filesize == len(CONTENT)

    await run_task("SIGN", {"signer": "ours", "armor": True}, ctx)
    assert path.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----")
    await run_task("VERIFY", {}, ctx)
    assert path.read_bytes() == CONTENT
    assert leftovers(path.parent) == []


async def test_a_rerun_in_place_finds_its_work_done(tmp_path: Path, keyring: Keyring) -> None:
    """A kill after the rename, before the row said so: the rerun of the same task must
    not encrypt (or decrypt) a second time."""
    ctx = file_ctx(tmp_path, content=CONTENT)
    ctx.keyring = keyring
    ctx.step, ctx.task_number = "POST TASKS", 0
    path = Path(ctx.transfer.local_filepath)
    await run_task("ENCRYPT", {"recipients": ["partner"]}, ctx)
    once = path.read_bytes()
    ctx.rerun = True
    await run_task("ENCRYPT", {"recipients": ["partner"]}, ctx)
    assert path.read_bytes() == once, "not encrypted twice"
    assert any("done by the interrupted run" in m for m in ctx.log.messages), ctx.log.messages
    # Not encrypted for the recipients asked: a rerun does the work.
    await run_task("ENCRYPT", {"recipients": ["ours"]}, ctx)
    assert path.read_bytes() != once

    plain = file_ctx(tmp_path / "plain", content=CONTENT)
    plain.keyring, plain.rerun = keyring, True
    await run_task("DECRYPT", {}, plain)  # already plaintext: done before
    assert Path(plain.transfer.local_filepath).read_bytes() == CONTENT


async def test_failures_leave_the_file_untouched(tmp_path: Path, keyring: Keyring) -> None:
    ctx = file_ctx(tmp_path, content=CONTENT)
    ctx.keyring = keyring
    path = Path(ctx.transfer.local_filepath)
    cases = [
        ("ENCRYPT", {"recipients": "nobody"}, "unknown key 'nobody'"),
        ("SIGN", {"signer": "partner"}, "key 'partner' is a public key"),
        ("VERIFY", {}, "not an OpenPGP message"),
        ("DECRYPT", {}, "not an OpenPGP message"),
    ]
    for type_name, args, message in cases:
        with pytest.raises(TaskError) as caught:
            await run_task(type_name, args, ctx)
        assert caught.value.code == ErrorCode.TeExternalOperation
        said = caught.value.message
        assert said.startswith(f"{type_name}: ") and message in said, said
        assert not said.startswith(f"{type_name}: {type_name}"), said
        assert path.read_bytes() == CONTENT and leftovers(path.parent) == []

    # Signed but not by one of `signers`.
    await run_task("SIGN", {"signer": "ours", "output": "#TRUEFULLPATH#.sig"}, ctx)
    assert ctx.transfer.local_filepath == f"{path}.sig" and path.read_bytes() == CONTENT
    with pytest.raises(TaskError) as caught:
        await run_task("VERIFY", {"signers": "partner"}, ctx)
    assert "signed by 'ours', not by one of the accepted signers (partner)" in str(caught.value)

    # An output that exists is replaced only with `overwrite`.
    ctx.transfer.local_filepath = str(path)
    with pytest.raises(TaskError, match=r"\.sig already exists \(set 'overwrite: true'"):
        await run_task("SIGN", {"signer": "ours", "output": "#TRUEFULLPATH#.sig"}, ctx)
    await run_task("SIGN", {"signer": "ours", "output": f"{path}.sig", "overwrite": True}, ctx)
    assert leftovers(path.parent) == []


async def test_a_wrong_passphrase_is_refused_at_load_and_the_keyring_kept(
    tmp_path: Path, keyring: Keyring, key_files: dict[str, KeyConfig]
) -> None:
    before = keyring.current
    (tmp_path / "wrong").write_text("not-the-passphrase\n")
    configs = dict(key_files)
    configs["ours"] = KeyConfig(
        file=key_files["ours"].file, kind="private", passphrase_file=tmp_path / "wrong"
    )
    infos = {name: inspect_key_file(config.file) for name, config in configs.items()}
    with pytest.raises(KeyringError, match=r"^key 'ours': wrong passphrase$"):
        await keyring.load(configs, infos, tmp_path)
    assert keyring.current is before and before is not None and before.home.is_dir()
    assert [p.name for p in before.home.parent.iterdir()] == [before.home.name]


async def test_a_signature_by_a_key_expired_since_fails_with_its_own_message(
    tmp_path: Path,
) -> None:
    # Made two days ago, valid for one day, and the file signed while it was valid.
    made = datetime.now(UTC) - timedelta(days=2)
    maker = GpgPeer(tmp_path / "maker")
    try:
        brief = maker.generate(
            "brief", tmp_path / "keys", expire="1d", encrypt=False,
            faked_time=made.strftime("%Y%m%dT%H%M%S"),
        )  # fmt: skip
        ctx = file_ctx(tmp_path, content=CONTENT)
        path = Path(ctx.transfer.local_filepath)
        signed_at = (made + timedelta(hours=1)).strftime("%Y%m%dT%H%M%S")
        maker.gpg("--faked-system-time", signed_at, "-u", brief.fingerprint, "--sign",
                  "-o", f"{path}.gpg", str(path))  # fmt: skip
    finally:
        maker.close()
    configs = {"brief": KeyConfig(file=brief.public, kind="public")}
    info = inspect_key_file(brief.public)
    assert info.expired(datetime.now(UTC))
    ring = Keyring(tmp_path / "state")
    await ring.load(configs, {"brief": info}, tmp_path)
    try:
        ctx.keyring = ring
        ctx.transfer.local_filepath = f"{path}.gpg"
        ctx.now = lambda: datetime.now(UTC)
        with pytest.raises(TaskError) as caught:
            await run_task("VERIFY", {}, ctx)
        expected = f"VERIFY: signed by key 'brief' ({brief.fingerprint}) which has expired"
        assert caught.value.message == expected
        assert Path(f"{path}.gpg").exists() and leftovers(path.parent) == []
    finally:
        await ring.close()


async def test_two_private_keys_each_with_its_passphrase(
    tmp_path: Path, key_files: dict[str, KeyConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second private key, its passphrase in the environment: DECRYPT gives gpg the
    passphrase of the key the file is encrypted for."""
    maker = GpgPeer(tmp_path / "maker")
    try:
        second = maker.generate("second", tmp_path / "keys", passphrase="env-pass")
    finally:
        maker.close()
    assert second.secret is not None
    monkeypatch.setenv("GD_TEST_SECOND_PASS", "env-pass")
    configs = dict(key_files)
    configs["second"] = KeyConfig(
        file=second.secret, kind="private", passphrase_env="GD_TEST_SECOND_PASS"
    )
    infos = {name: inspect_key_file(config.file) for name, config in configs.items()}
    ring = Keyring(tmp_path / "state")
    await ring.load(configs, infos, tmp_path)
    try:
        for recipient in ("second", "ours"):
            ctx = file_ctx(tmp_path / recipient, content=CONTENT)
            ctx.keyring = ring
            path = Path(ctx.transfer.local_filepath)
            await run_task("ENCRYPT&SIGN", {"recipients": recipient, "signer": "second"}, ctx)
            assert path.read_bytes() != CONTENT
            await run_task("DECRYPT&VERIFY", {"signers": "second"}, ctx)
            assert path.read_bytes() == CONTENT
    finally:
        await ring.close()
    assert not (tmp_path / "state" / "gpg" / "0" / "1").exists()
