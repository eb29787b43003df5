"""Warnings about the demo passwords shipped with the example configuration.

A demo secret is one of `DEMO_PASSWORDS`, or a password equal to its own login (the
demo's account `relay`, which its partner `loopback` logs in with). Accounts and API
users hold hashes, checked by verifying the candidates; partners hold the password they
send in clear, compared directly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from gatewayd.config.problems import Problem
from gatewayd.config.schema import Config
from gatewayd.config.yamlsource import YamlSource
from gatewayd.passwords import verify_password

DEMO_PASSWORDS = ("demo", "admin")

# Each check costs three slow hashes (half a second here): remember the answers across
# reloads (SIGHUP) and, in the state folder, across restarts, or a gateway with 300
# accounts would take minutes to start (past systemd's start timeout). Keyed by a digest
# of the hash (which carries its own salt) and the login: the file tells nothing of any
# password but whether it is a demo one.
_ANSWERS: dict[bytes, bool] = {}
_ANSWERS_MAX = 10_000
_LOCK = threading.Lock()
_SAVED = "demo-checks.json"
_read_from: set[Path] = set()
_unsaved = False  # answers computed since the last save


def _read_answers(state_dir: Path) -> None:
    """The answers saved in `state_dir` by an earlier start, once per process."""
    with _LOCK:
        if state_dir in _read_from:
            return
        _read_from.add(state_dir)
    try:
        saved = json.loads((state_dir / _SAVED).read_text())
        answers = {bytes.fromhex(k): v for k, v in saved.items() if isinstance(v, bool)}
    except (OSError, ValueError, AttributeError):
        return  # none yet, or unreadable: the checks are made again
    with _LOCK:
        for key, answer in list(answers.items())[:_ANSWERS_MAX]:
            _ANSWERS.setdefault(key, answer)


def save_demo_checks(state_dir: Path) -> None:
    """Keep the answers known so far in `state_dir` for the next start (best effort:
    a folder that is not there yet or not writable costs only the checks again)."""
    global _unsaved
    if not state_dir.is_dir():
        return
    with _LOCK:
        if not _unsaved:
            return
        text = json.dumps({k.hex(): v for k, v in _ANSWERS.items()})
        _unsaved = False
    target = state_dir / _SAVED
    # A name of this process's own: nodes sharing the state folder may save at once.
    temp = state_dir / f".{_SAVED}.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temp, target)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        with _LOCK:
            _unsaved = True


def uses_demo_secret(hashed: str, login: str) -> bool:
    """True when `hashed` verifies a demo password or the login itself."""
    global _unsaved
    key = hashlib.sha256(f"{hashed}\0{login}".encode()).digest()
    with _LOCK:
        known = _ANSWERS.get(key)
    if known is not None:
        return known
    candidates = dict.fromkeys((*DEMO_PASSWORDS, login))
    answer = any(verify_password(hashed, candidate) for candidate in candidates)
    with _LOCK:
        if len(_ANSWERS) >= _ANSWERS_MAX:
            _ANSWERS.clear()
        _ANSWERS[key] = answer
        _unsaved = True
    return answer


def is_demo_password(password: str, login: str) -> bool:
    """True when the clear `password` is a demo password or the login itself."""
    return password in DEMO_PASSWORDS or password == login


def demo_secret_warnings(
    config: Config, source: YamlSource, state_dir: Path | None = None
) -> tuple[list[Problem], list[str]]:
    """Warnings for accounts, API users and partners with a demo password, and who they
    are (`account 'demo'`, `API user 'admin'`, `partner 'loopback'`). With `state_dir`,
    the answers of earlier starts are read from it and the new ones saved there."""
    if state_dir is not None:
        _read_answers(state_dir)
    warnings: list[Problem] = []
    who: list[str] = []
    logins: list[tuple[str, str, tuple[str, ...]]] = [
        (f"account '{name}'", account.password, ("accounts", name, "password"))
        for name, account in config.accounts.items()
        if account.password is not None
    ]
    logins += [
        (f"API user '{name}'", user.password, ("api", "users", name, "password"))
        for name, user in config.api.users.items()
    ]
    found = [(d, path) for d, hashed, path in logins if uses_demo_secret(hashed, path[-2])]
    if state_dir is not None and logins:
        save_demo_checks(state_dir)
    found += [
        (f"partner '{name}'", ("partners", name, "password"))
        for name, partner in config.partners.items()
        if partner.password is not None and is_demo_password(partner.password, partner.login)
    ]
    for description, path in found:
        who.append(description)
        warnings.append(
            source.problem(
                path,
                f"demo secret in use for {description}: change it before exposing the gateway",
            )
        )
    return warnings, who
