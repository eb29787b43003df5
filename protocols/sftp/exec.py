"""SSH exec commands of our SFTP servers: checksums of the files an account can see.

rclone and SFTPGo users verify uploads by running `md5sum FILE` / `sha256sum FILE` over
SSH, and rclone first checks that the command works by hashing an empty input. Those
commands are answered here, in the output format of GNU coreutils, on virtual paths:
no shell runs, nothing else is accepted.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex

from asyncssh import SSHReader, SSHWriter

from gatewayd.errors import TransferError
from gatewayd.model import ErrorCode
from gatewayd.ports import ServerContext

COMMANDS = {"md5sum": "md5", "sha1sum": "sha1", "sha256sum": "sha256", "sha512sum": "sha512"}
CHUNK = 1 << 20


async def _hash_stdin(stdin: SSHReader[bytes], algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    while data := await stdin.read(CHUNK):
        digest.update(data)
    return digest.hexdigest()


async def run_command(
    ctx: ServerContext,
    account: str,
    command: str | None,
    stdin: SSHReader[bytes],
    stdout: SSHWriter[bytes],
    stderr: SSHWriter[bytes],
) -> int:
    """Run the client's command for `account`; returns the exit status."""

    def out(text: str) -> None:
        stdout.write(text.encode())

    def err(text: str) -> None:
        stderr.write(text.encode())

    if command is None:
        err("This service offers SFTP and checksum commands only.\n")
        return 1
    try:
        argv = shlex.split(command)
    except ValueError:
        argv = []
    algorithm = COMMANDS.get(argv[0]) if argv else None
    if algorithm is None or any(a.startswith("-") and a != "-" for a in argv[1:]):
        names = ", ".join(sorted(COMMANDS))
        err(f"unsupported command; supported: {names} [FILE]...\n")
        return 127
    if len(argv) == 1 or argv[1:] == ["-"]:
        out(f"{await _hash_stdin(stdin, algorithm)}  -\n")
        return 0
    status = 0
    for name in argv[1:]:
        vpath = posixpath.join("/", name)
        try:
            entry = await ctx.stat(account, vpath)
            if entry is None or entry.is_dir or entry.unfinished:
                raise TransferError(ErrorCode.TeFileNotFound, "No such file or directory")
            digest = await ctx.digest(account, vpath, algorithm)
        except TransferError as exc:
            # A refused path (`..`, a link) reads as a missing file.
            reason = "No such file or directory"
            if exc.code not in (ErrorCode.TeFileNotFound, ErrorCode.TeForbidden):
                reason = exc.message
            err(f"{argv[0]}: {name}: {reason}\n")
            status = 1
            continue
        out(f"{digest}  {name}\n")
    return status
