"""OpenPGP tasks: ENCRYPT, SIGN, ENCRYPT&SIGN, DECRYPT, VERIFY, DECRYPT&VERIFY.

They name keys of the configuration's `keys:` (gatewayd.crypto): `recipients` (public
keys, or our own) to encrypt for, `signer` (one of our private keys) to sign with,
`signers` (optional) the only keys whose signature VERIFY accepts (by default: any
configured key). GnuPG does the work in the gateway's own keyring, reading the file and
writing the result through file descriptors: files of any size, constant memory.

The result replaces the file, or goes to `output` (markers substituted; an existing file
there is replaced only with `overwrite: true`) and the transfer follows it (as with
RENAME: `#TRUEFULLPATH#` is then the new file). ENCRYPT and SIGN write binary OpenPGP,
or ASCII armor with `armor: true`; they compress (gpg's default) unless `compress:
false`. VERIFY and DECRYPT&VERIFY fail on a bad signature, a missing one, one by a key
that is not configured (or not among `signers`), expired or revoked, and say which;
DECRYPT fails on a file damaged or changed (integrity check).

The result is written to a hidden temporary file next to its destination, fsynced, then
renamed: a failure or a kill leaves the input untouched. A rerun after a crash (the task
may have finished before the row recorded it) recognises its own finished work: the
`output` file in place, or, in place, a file already in the form the task produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from datetime import datetime
from typing import Any, ClassVar

from gatewayd import crashpoints
from gatewayd.crypto.gpg import GpgResult, GpgUnavailable, base_args, run_gpg
from gatewayd.crypto.keyring import Key, KeyringError, Ring
from gatewayd.crypto.outcome import PgpFailure, check_decrypt, check_protect, check_signature
from gatewayd.errors import TaskError
from gatewayd.fsutil import fsync_dir
from gatewayd.tasks import _fsops
from gatewayd.tasks._args import ArgsTask, Kind
from gatewayd.tasks._target import follow
from gatewayd.tasks.base import TaskContext, register
from gatewayd.tasks.markers import has_markers, substitute_args

# What a task needs of a key it names: encrypt for it, sign with it, check its signature.
NEED_ENCRYPT = "encrypt"
NEED_SIGN = "sign"
NEED_VERIFY = "verify"


def _names(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        return []
    return [str(item).strip() for item in items if str(item).strip()]


class PgpTask(ArgsTask):
    encrypt: ClassVar[bool] = False
    sign: ClassVar[bool] = False
    decrypt: ClassVar[bool] = False
    verify: ClassVar[bool] = False

    @classmethod
    def key_references(cls, args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """(argument, key name, need) for each key the arguments name (for check-config)."""
        found: list[tuple[str, str, str]] = []
        if cls.encrypt:
            found += [("recipients", n, NEED_ENCRYPT) for n in _names(args.get("recipients"))]
        if cls.sign and isinstance(args.get("signer"), str):
            found.append(("signer", args["signer"], NEED_SIGN))
        if cls.verify:
            found += [("signers", n, NEED_VERIFY) for n in _names(args.get("signers"))]
        return [ref for ref in found if not has_markers(ref[1])]

    @classmethod
    def check_args(cls, args: dict[str, Any]) -> list[str]:
        problems = super().check_args(args)
        for name in ("recipients", "signers"):
            if name in args and not _names(args[name]):
                problems.append(f"argument '{name}' names no key")
        return problems

    # ------------------------------------------------------------------ run

    async def run(self, ctx: TaskContext) -> None:
        if ctx.keyring is None or ctx.keyring.current is None:
            raise self.fail("no OpenPGP keys are configured ('keys:' in gatewayd.yaml)")
        args = substitute_args(self.args, ctx)
        source = ctx.transfer.local_filepath
        if not source:
            raise self.fail("the transfer has no local file")
        try:
            await asyncio.to_thread(_fsops.require_file, source, ctx.rule_folder)
        except TaskError as error:
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None
        output = args.get("output")
        dest = self.path(ctx, self.text(args, "output")) if output is not None else source
        overwrite = dest == source or self.flag(args, "overwrite")
        try:
            async with ctx.keyring.using() as ring:
                command = self._command(args, ring, _aware(ctx))
                if ctx.rerun and await self._done_before(ctx, ring, command, source, dest):
                    ctx.log.info(f"{self.type_name}: done by the interrupted run: {dest}")
                else:
                    await self._write(ctx, ring, command, args, source, dest, overwrite)
        except KeyringError as error:
            raise self.fail(str(error)) from None
        except PgpFailure as error:
            raise self.fail(str(error)) from None
        except GpgUnavailable as error:
            raise self.fail(f"cannot run gpg: {error}") from None
        except OSError as error:
            raise self.fail(_fsops.os_error_text(error)) from error
        except TaskError as error:
            if error.message.startswith(f"{self.type_name}: "):
                raise  # said by this task already
            raise TaskError(f"{self.type_name}: {error.message}", error.code) from None
        if dest != source:
            follow(ctx, dest)
        ctx.transfer.filesize = (await asyncio.to_thread(os.stat, dest)).st_size

    def _key(self, ring: Ring, name: str, need: str, now: datetime) -> Key:
        key = ring.keys.get(name)
        if key is None:
            known = ", ".join(sorted(ring.keys)) or "none"
            raise self.fail(f"unknown key '{name}' (configured keys: {known})")
        if key.info.expired(now):
            assert key.info.expires is not None
            when = key.info.expires.strftime("%Y-%m-%d %H:%M:%S UTC")
            raise self.fail(f"key '{name}' ({key.info.fingerprint}) expired on {when}")
        if need == NEED_SIGN and key.kind != "private":
            raise self.fail(f"key '{name}' is a public key: signing needs one of our private keys")
        capability = {NEED_ENCRYPT: "e", NEED_SIGN: "s", NEED_VERIFY: "s"}[need]
        if not key.info.can(capability, now):
            raise self.fail(f"key '{name}' ({key.info.fingerprint}) cannot {need}")
        return key

    def _command(self, args: dict[str, Any], ring: Ring, now: datetime) -> _Command:
        command = _Command()
        if self.encrypt:
            recipients = _names(args.get("recipients"))
            if not recipients:
                raise self.fail("argument 'recipients' names no key")
            command.recipients = [self._key(ring, n, NEED_ENCRYPT, now) for n in recipients]
        if self.sign:
            command.signer = self._key(ring, self.text(args, "signer"), NEED_SIGN, now)
        if self.verify and "signers" in args:
            command.accepted = _names(args.get("signers"))
            for name in command.accepted:
                self._key(ring, name, NEED_VERIFY, now)
        command.armor = self.flag(args, "armor")
        command.compress = self.flag(args, "compress", default=True)
        return command

    def _gpg_args(self, ring: Ring, command: _Command) -> list[str]:
        args = base_args(ring.home)
        if self.encrypt or self.sign:
            args += ["--armor"] if command.armor else []
            # Compressing costs most of the time of a big file that does not compress.
            args += [] if command.compress else ["--compress-algo", "none"]
            for key in command.recipients:
                # The primary key's fingerprint (no `!`): gpg picks its encryption subkey.
                args += ["--recipient", key.info.fingerprint]
            if command.signer is not None:
                args += ["--local-user", f"{command.signer.info.fingerprint}!"]
            args += ["--encrypt"] if self.encrypt else []
            args += ["--sign"] if self.sign else []
        else:
            args += ["--decrypt"]
        return args

    async def _run_gpg(
        self, ring: Ring, command: _Command, stdin: int, stdout: int, ctx: TaskContext
    ) -> GpgResult:
        if command.signer is not None:
            passphrase = command.signer.passphrase
        elif self.decrypt:
            passphrase = await self._decryption_passphrase(ring, stdin, ctx)
        else:
            passphrase = None
        return await run_gpg(
            ring_program(ctx),
            self._gpg_args(ring, command),
            stdin=stdin,
            stdout=stdout,
            passphrase=passphrase,
        )

    async def _decryption_passphrase(self, ring: Ring, stdin: int, ctx: TaskContext) -> str | None:
        """The passphrase of the private key the file is encrypted for (its header read
        first; gpg is given one passphrase only)."""
        listing = await run_gpg(
            ring_program(ctx),
            [*base_args(ring.home), "--list-only", "--list-packets"],
            stdin=stdin,
            capture=True,
        )
        await asyncio.to_thread(os.lseek, stdin, 0, os.SEEK_SET)
        for status in listing.all("ENC_TO"):
            key = ring.by_id(status.args[0]) if status.args else None
            if key is not None and key.kind == "private":
                return key.passphrase
        return None

    async def _write(
        self,
        ctx: TaskContext,
        ring: Ring,
        command: _Command,
        args: dict[str, Any],
        source: str,
        dest: str,
        overwrite: bool,
    ) -> None:
        temp = await asyncio.to_thread(_open_temp, dest, ctx.temp_tag, overwrite)
        published = False
        try:
            with _fsops.open_input(source, ctx.rule_folder) as data:
                out = await asyncio.to_thread(os.open, temp, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    result = await self._run_gpg(ring, command, data.fileno(), out, ctx)
                    self._judge(result, ring, command)
                    await asyncio.to_thread(os.fsync, out)
                finally:
                    os.close(out)
            await asyncio.to_thread(_publish, source, temp, dest, overwrite)
            published = True
        finally:
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(os.unlink, temp)
        crashpoints.reached(crashpoints.TASK_PUBLISHED)
        if command.verified is not None:
            key = command.verified
            signer = f"'{key.name}' ({key.info.fingerprint})"
            ctx.log.info(f"{self.type_name}: good signature by {signer}")
        ctx.log.info(f"{self.type_name}: {source} -> {dest}")

    def _judge(self, result: GpgResult, ring: Ring, command: _Command) -> None:
        if self.encrypt or self.sign:
            check_protect(result, ring, encrypt=self.encrypt, sign=self.sign)
            return
        if self.decrypt:
            check_decrypt(result, ring)
        if self.verify:
            command.verified = check_signature(
                result, ring, accepted=command.accepted, encrypted=self.decrypt
            )
        elif result.returncode != 0 and not result.has("DECRYPTION_OKAY"):
            raise PgpFailure(f"gpg failed: {result.message()}")

    async def _done_before(
        self, ctx: TaskContext, ring: Ring, command: _Command, source: str, dest: str
    ) -> bool:
        """Whether the interrupted run of this task finished its work (it may have)."""
        if dest != source:
            # Published whole by a rename: an existing output is the finished work.
            return await asyncio.to_thread(os.path.isfile, dest)
        with _fsops.open_input(source, ctx.rule_folder) as data:
            listing = await run_gpg(
                ring_program(ctx),
                [*base_args(ring.home), "--list-only", "--list-packets"],
                stdin=data.fileno(),
                capture=True,
            )
        to = {s.args[0] for s in listing.all("ENC_TO") if s.args}
        signed_by = set(_SIGNED_BY.findall(listing.output))
        if self.encrypt:
            return bool(to) and all(to & key.info.ids() for key in command.recipients)
        if self.sign:
            return command.signer is not None and bool(signed_by & command.signer.info.ids())
        ours = set().union(*(k.info.ids() for k in ring.keys.values()))
        if self.decrypt:
            return not (to & ours)  # no longer encrypted for us: decrypted already
        return not (signed_by & ours)  # VERIFY: no longer signed: unwrapped already


_SIGNED_BY = re.compile(r":(?:onepass_sig|signature) packet:.*keyid ([0-9A-F]{16})")


class _Command:
    """The keys and options of one run, resolved from the arguments."""

    def __init__(self) -> None:
        self.recipients: list[Key] = []
        self.signer: Key | None = None
        self.accepted: list[str] | None = None
        self.armor = False
        self.compress = True
        self.verified: Key | None = None


def _aware(ctx: TaskContext) -> datetime:
    """The task's time, with a zone (a naive clock is taken as in the gateway's zone)."""
    now = ctx.now()
    return now if now.tzinfo is not None else now.replace(tzinfo=ctx.timezone)


def ring_program(ctx: TaskContext) -> str:
    return ctx.keyring.program if ctx.keyring is not None else "gpg"


def _open_temp(dest: str, tag: str | None, overwrite: bool) -> str:
    """Create the hidden temporary file the result is written to, next to `dest`."""
    _fsops.make_dirs(os.path.dirname(dest) or ".")
    if not overwrite and os.path.lexists(dest):
        raise _fsops.ExistsError(dest)
    temp = _fsops.temp_name(dest, tag)
    if tag is not None:
        _fsops.drop_leftover(temp)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.close(fd)
    return temp


def _publish(source: str, temp: str, dest: str, overwrite: bool) -> None:
    shutil.copymode(source, temp)
    crashpoints.reached(crashpoints.TASK_OUTPUT)
    _fsops.publish(temp, dest, overwrite=overwrite)
    fsync_dir(os.path.dirname(dest) or ".")


_PROTECT_ARGS: dict[str, Kind] = {
    "output": Kind.TEXT,
    "overwrite": Kind.FLAG,
    "armor": Kind.FLAG,
    "compress": Kind.FLAG,
}
_OPEN_ARGS: dict[str, Kind] = {"output": Kind.TEXT, "overwrite": Kind.FLAG}


@register
class Encrypt(PgpTask):
    """Encrypt the file for `recipients` (key names)."""

    type_name = "ENCRYPT"
    encrypt = True
    required_args: ClassVar[tuple[str, ...]] = ("recipients",)
    optional_args: ClassVar[tuple[str, ...]] = tuple(_PROTECT_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = {"recipients": Kind.TEXT_LIST, **_PROTECT_ARGS}


@register
class Sign(PgpTask):
    """Sign the file with our private key `signer` (an OpenPGP signed message)."""

    type_name = "SIGN"
    sign = True
    required_args: ClassVar[tuple[str, ...]] = ("signer",)
    optional_args: ClassVar[tuple[str, ...]] = tuple(_PROTECT_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = {"signer": Kind.TEXT, **_PROTECT_ARGS}


@register
class EncryptSign(PgpTask):
    """Sign with `signer`, then encrypt for `recipients`, in one OpenPGP message."""

    type_name = "ENCRYPT&SIGN"
    encrypt = True
    sign = True
    required_args: ClassVar[tuple[str, ...]] = ("recipients", "signer")
    optional_args: ClassVar[tuple[str, ...]] = tuple(_PROTECT_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = {
        "recipients": Kind.TEXT_LIST,
        "signer": Kind.TEXT,
        **_PROTECT_ARGS,
    }


@register
class Decrypt(PgpTask):
    """Decrypt the file with whichever of our private keys it is encrypted for."""

    type_name = "DECRYPT"
    decrypt = True
    optional_args: ClassVar[tuple[str, ...]] = tuple(_OPEN_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = dict(_OPEN_ARGS)


@register
class Verify(PgpTask):
    """Check the signature of a signed message and keep what was signed."""

    type_name = "VERIFY"
    verify = True
    optional_args: ClassVar[tuple[str, ...]] = ("signers", *_OPEN_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = {"signers": Kind.TEXT_LIST, **_OPEN_ARGS}


@register
class DecryptVerify(PgpTask):
    """Decrypt the file, and check that it was signed by a configured key."""

    type_name = "DECRYPT&VERIFY"
    decrypt = True
    verify = True
    optional_args: ClassVar[tuple[str, ...]] = ("signers", *_OPEN_ARGS)
    arg_kinds: ClassVar[dict[str, Kind]] = {"signers": Kind.TEXT_LIST, **_OPEN_ARGS}


PGP_TASKS: tuple[type[PgpTask], ...] = (Encrypt, Sign, EncryptSign, Decrypt, Verify, DecryptVerify)
