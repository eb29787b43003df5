"""GnuPG on the command line as a real peer: keys generated at test time in temp homes
(never committed), files encrypted, signed, decrypted and verified by `gpg` itself."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Generated:
    fingerprint: str
    public: Path  # the exported public key
    secret: Path | None  # the exported secret key (None: not exported)


class GpgPeer:
    """A GnuPG home of its own, as a partner's machine has."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, mode=0o700, exist_ok=True)
        # The agent's passphrase protection otherwise calibrates (seconds per key).
        (home / "gpg-agent.conf").write_text("s2k-count 65536\n")

    def gpg(
        self, *args: str, data: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--status-fd", "2",
             "--trust-model", "always", *args],
            input=data, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"gpg {' '.join(args)} failed: {result.stderr.decode()}")
        return result

    def generate(
        self,
        name: str,
        out: Path,
        *,
        passphrase: str | None = None,
        expire: str = "1y",
        encrypt: bool = True,
        faked_time: str | None = None,
    ) -> Generated:
        """An ed25519 signing key (with a cv25519 encryption subkey unless told not)."""
        params = [
            "Key-Type: eddsa", "Key-Curve: ed25519", "Key-Usage: sign",
            f"Name-Real: {name}", f"Name-Email: {name}@example.test", f"Expire-Date: {expire}",
        ]  # fmt: skip
        if encrypt:
            params += ["Subkey-Type: ecdh", "Subkey-Curve: cv25519", "Subkey-Usage: encrypt"]
        params += [f"Passphrase: {passphrase}"] if passphrase else ["%no-protection"]
        params.append("%commit")
        extra = ["--faked-system-time", faked_time] if faked_time else []
        self.gpg(
            *extra, "--pinentry-mode", "loopback", "--gen-key", data="\n".join(params).encode()
        )
        listing = self.gpg("--with-colons", "--list-keys", f"{name}@example.test").stdout.decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")
        )
        out.mkdir(parents=True, exist_ok=True)
        public = out / f"{name}.pub.asc"
        public.write_bytes(self.gpg("--armor", "--export", fingerprint).stdout)
        secret = None
        if passphrase is not None:
            secret = out / f"{name}.sec.asc"
            secret.write_bytes(
                self.gpg(
                    "--pinentry-mode", "loopback", "--passphrase", passphrase, "--armor",
                    "--export-secret-keys", fingerprint,
                ).stdout
            )  # fmt: skip
        return Generated(fingerprint, public, secret)

    def import_key(self, path: Path) -> None:
        self.gpg("--import", str(path))

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "all"],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip


def status_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [
        line.removeprefix("[GNUPG:] ")
        for line in result.stderr.decode(errors="replace").splitlines()
        if line.startswith("[GNUPG:] ")
    ]
