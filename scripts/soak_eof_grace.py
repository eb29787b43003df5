#!/usr/bin/env python3
"""How often a killed plain-FTP client would pass for a finished upload, for a few
grace times: the measurement behind the FTP server's `eof_grace_min` (README, "When an
upload is complete").

A child process opens a control connection and a data connection to this process over
loopback, sends on the data connection until SIGKILLed; then, as FtpSession does, the
data connection's end is read, and the control connection is checked (TCP_INFO state)
at once and again a grace time later. A kill "passes" when the control connection is
still open then. `--busy N` runs N CPU-bound processes beside it (a client host with no
CPU to spare). Exits non-zero when a kill passes at `--must-hold` seconds of grace.

    scripts/soak eof_grace [-- --rounds 400 --busy 2]

Last line: JSON, {"busy": N, "kills": {"0.01": 400, ...}, "passed": {"0.01": 0, ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time

_ESTABLISHED = 1


def _open(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == _ESTABLISHED


def _client(port: int) -> None:
    """The killed client: control first, then data, then bytes until killed."""
    control = socket.create_connection(("127.0.0.1", port))
    data = socket.create_connection(("127.0.0.1", port))
    block = b"x" * 65536
    while control.fileno() >= 0:  # the control connection is held open, unused
        data.sendall(block)


def _one_kill(listener: socket.socket, grace: float) -> bool:
    """True when the killed client's control connection is still open `grace` seconds
    after its data connection's end (its upload would pass for complete)."""
    pid = os.fork()
    if pid == 0:
        try:
            _client(listener.getsockname()[1])
        finally:
            os._exit(0)
    control, _ = listener.accept()
    data, _ = listener.accept()
    try:
        received = 0
        while received < 1 << 20:  # mid-upload
            received += len(data.recv(1 << 20))
        os.kill(pid, signal.SIGKILL)
        while data.recv(1 << 20):
            pass
        if not _open(control):
            return False
        time.sleep(grace)
        return _open(control)
    finally:
        os.waitpid(pid, 0)
        control.close()
        data.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400, help="kills per grace time")
    parser.add_argument("--graces", default="0.002,0.005,0.01,0.1", help="seconds, comma-separated")
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside")
    parser.add_argument("--must-hold", type=float, default=0.01, help="no kill may pass at this")
    args, _ = parser.parse_known_args()  # `scripts/soak` gives every script the same options
    graces = [float(g) for g in args.graces.split(",")]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    spinners = []
    for _ in range(args.busy):
        pid = os.fork()
        if pid == 0:
            while True:
                pass
        spinners.append(pid)
    passed = dict.fromkeys(graces, 0)
    try:
        for round_number in range(args.rounds):
            for grace in graces:
                passed[grace] += _one_kill(listener, grace)
            if (round_number + 1) % 100 == 0:
                print(f"{round_number + 1} kills per grace: {passed}", file=sys.stderr)
    finally:
        for pid in spinners:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for grace in graces:
        print(f"grace {grace * 1e3:g} ms: {passed[grace]} of {args.rounds} kills passed")
    print(json.dumps({
        "busy": args.busy,
        "kills": {str(g): args.rounds for g in graces},
        "passed": {str(g): passed[g] for g in graces},
    }))  # fmt: skip
    held = [g for g in graces if g >= args.must_hold]
    return 1 if any(passed[g] for g in held) else 0


if __name__ == "__main__":
    raise SystemExit(main())
