"""Warnings about the demo passwords shipped with the example configuration.

A demo secret is one of `DEMO_PASSWORDS`, or a password equal to its own login (the
demo's account `relay`, which its partner `loopback` logs in with). Accounts and API
users hold hashes, checked by verifying the candidates; partners hold the password they
send in clear, compared directly."""

from __future__ import annotations

import hashlib
import threading

from gatewayd.config.problems import Problem
from gatewayd.config.schema import Config
from gatewayd.config.yamlsource import YamlSource
from gatewayd.passwords import verify_password

DEMO_PASSWORDS = ("demo", "admin")

# Each check costs a few slow hashes: remember the answers across reloads (SIGHUP), keyed
# by a digest of the hash (which carries its own salt) and the login.
_ANSWERS: dict[bytes, bool] = {}
_ANSWERS_MAX = 10_000
_LOCK = threading.Lock()


def uses_demo_secret(hashed: str, login: str) -> bool:
    """True when `hashed` verifies a demo password or the login itself."""
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
    return answer


def is_demo_password(password: str, login: str) -> bool:
    """True when the clear `password` is a demo password or the login itself."""
    return password in DEMO_PASSWORDS or password == login


def demo_secret_warnings(config: Config, source: YamlSource) -> tuple[list[Problem], list[str]]:
    """Warnings for accounts, API users and partners with a demo password, and who they
    are (`account 'demo'`, `API user 'admin'`, `partner 'loopback'`)."""
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
