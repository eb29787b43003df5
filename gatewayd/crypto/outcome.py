"""What a run of gpg means: success, or a message saying precisely what failed.

Judged from the status lines (gatewayd.crypto.gpg), not from gpg's exit status alone:
the status says which key is missing, expired or wrong, and tells a bad signature from
an unknown signer, a missing one and a damaged file.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gatewayd.crypto.gpg import GpgResult
from gatewayd.crypto.keyring import Key, Ring

# INV_RECP / INV_SGNR reasons (GnuPG's doc/DETAILS).
_INVALID_KEY = {
    "1": "is not in the keyring",
    "2": "is ambiguous",
    "3": "cannot be used for this (wrong key usage)",
    "4": "is revoked",
    "5": "has expired",
    "9": "is not a secret key",
    "10": "is not trusted",
    "13": "is disabled",
}


class PgpFailure(Exception):
    """The operation failed; the message says why, naming the key."""


def _who(ring: Ring, key_id: str) -> str:
    key_id = key_id.rstrip("!")
    key = ring.by_id(key_id)
    return f"key '{key.name}' ({key.info.fingerprint})" if key is not None else f"key {key_id}"


def _when(timestamp: str) -> str:
    if timestamp.isdigit():
        return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return timestamp


def _common(result: GpgResult, ring: Ring) -> None:
    """Failures any operation may end with."""
    if result.bad_passphrase():
        ids = [
            s.args[0]
            for s in result.status
            if s.keyword in ("BAD_PASSPHRASE", "NEED_PASSPHRASE", "ENC_TO") and s.args
        ]
        keys = [key for key in map(ring.by_id, ids) if key is not None and key.kind == "private"]
        who = f"key '{keys[0].name}' ({keys[0].info.fingerprint})" if keys else "a private key"
        raise PgpFailure(f"wrong passphrase for {who}")
    for keyword, role in (("INV_RECP", "recipient"), ("INV_SGNR", "signing")):
        invalid = result.first(keyword)
        if invalid is not None and len(invalid.args) >= 2:
            reason = _INVALID_KEY.get(invalid.args[0], f"is unusable (reason {invalid.args[0]})")
            raise PgpFailure(f"{role} {_who(ring, invalid.args[1])} {reason}")
    expired = result.first("KEYEXPIRED")
    if expired is not None and result.returncode != 0:
        raise PgpFailure(f"a key expired on {_when(expired.args[0] if expired.args else '')}")


def check_protect(result: GpgResult, ring: Ring, *, encrypt: bool, sign: bool) -> None:
    """ENCRYPT, SIGN, ENCRYPT&SIGN: PgpFailure unless gpg did all that was asked."""
    _common(result, ring)
    if result.returncode != 0:
        raise PgpFailure(f"gpg failed: {result.message()}")
    if sign and not result.has("SIG_CREATED"):
        raise PgpFailure(f"no signature was made: {result.message()}")
    if encrypt and not result.has("END_ENCRYPTION"):
        raise PgpFailure(f"the file was not encrypted: {result.message()}")


def check_decrypt(result: GpgResult, ring: Ring) -> None:
    """DECRYPT (and the first half of DECRYPT&VERIFY): PgpFailure unless the file was
    encrypted for us and decrypted whole, its integrity checked."""
    recipients = [s.args[0] for s in result.all("ENC_TO") if s.args]
    if result.has("BADSIG"):
        _bad_signature(result, ring)
    if not recipients and not result.has("DECRYPTION_OKAY"):
        if result.has("PLAINTEXT") or result.has("NEWSIG"):
            raise PgpFailure("the file is not encrypted (it is only signed)")
        raise PgpFailure(_not_openpgp(result))
    _common(result, ring)
    if result.has("DECRYPTION_FAILED") or not result.has("DECRYPTION_OKAY"):
        missing = {s.args[0] for s in result.all("NO_SECKEY") if s.args}
        if missing and missing >= set(recipients):
            listed = ", ".join(sorted(missing))
            raise PgpFailure(
                f"the file is encrypted for key(s) {listed}: none is a private key of the gateway"
            )
        detail = _last_words(result)
        if result.has("DECRYPTION_KEY") or result.has("DECRYPTION_INFO") or result.has("BADMDC"):
            # The session key opened: what it protects does not read back as written.
            raise PgpFailure(f"integrity check failed: the file was changed or damaged ({detail})")
        raise PgpFailure(
            f"decryption failed: the session key does not decrypt with our key, "
            f"the file was changed or damaged ({detail})"
        )


def _last_words(result: GpgResult) -> str:
    """gpg's last message, without its lines about which key was used."""
    lines = [
        m.removeprefix("gpg: ").strip()
        for m in result.messages
        if m.strip() and not m.startswith((" ", "\t")) and "encrypted with" not in m
    ]
    return lines[-1][:200] if lines else "no message"


def _not_openpgp(result: GpgResult) -> str:
    return f"not an OpenPGP message ({result.message()})"


def _bad_signature(result: GpgResult, ring: Ring) -> None:
    bad = result.first("BADSIG")
    key_id = bad.args[0] if bad is not None and bad.args else "?"
    raise PgpFailure(
        f"BAD signature by {_who(ring, key_id)}: the file was changed after it was signed"
    )


def check_signature(
    result: GpgResult, ring: Ring, *, accepted: list[str] | None, encrypted: bool
) -> Key:
    """VERIFY, DECRYPT&VERIFY: the configured key that made the file's good signature;
    PgpFailure for a bad, missing or unknown-key signature, or one not accepted."""
    if result.has("BADSIG"):
        _bad_signature(result, ring)
    if not encrypted and result.has("ENC_TO"):
        raise PgpFailure("the file is encrypted: use DECRYPT&VERIFY")
    for errsig in result.all("ERRSIG"):
        key_id = errsig.args[0] if errsig.args else "?"
        if result.has("NO_PUBKEY") or (len(errsig.args) > 5 and errsig.args[5] == "9"):
            fingerprint = errsig.args[6] if len(errsig.args) > 6 and errsig.args[6] != "-" else ""
            shown = fingerprint or key_id
            raise PgpFailure(f"signed by an unknown key {shown}: no configured key has it")
        raise PgpFailure(f"the signature by key {key_id} cannot be checked: {result.message()}")
    for keyword, what in (("EXPKEYSIG", "which has expired"), ("REVKEYSIG", "which is revoked")):
        found = result.first(keyword)
        if found is not None:
            key_id = found.args[0] if found.args else "?"
            raise PgpFailure(f"signed by {_who(ring, key_id)} {what}")
    if result.has("EXPSIG"):
        raise PgpFailure("the signature has expired")
    valid = result.all("VALIDSIG")
    if not valid:
        if not result.has("NEWSIG") and not result.has("GOODSIG"):
            if not result.has("PLAINTEXT"):
                raise PgpFailure(_not_openpgp(result))
            raise PgpFailure("the file is not signed")
        raise PgpFailure(f"no valid signature: {result.message()}")
    signers = [ring.by_id(s.args[-1]) for s in valid if s.args]
    known = [key for key in signers if key is not None]
    if not known:
        raise PgpFailure(f"signed by an unknown key {valid[0].args[-1]}")
    if accepted is not None:
        allowed = [key for key in known if key.name in accepted]
        if not allowed:
            names = ", ".join(f"'{k.name}'" for k in known)
            raise PgpFailure(
                f"signed by {names}, not by one of the accepted signers ({', '.join(accepted)})"
            )
        return allowed[0]
    return known[0]
