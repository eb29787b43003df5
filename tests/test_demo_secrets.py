"""The demo secrets: a partner's password in clear counts as one when it is a demo
password or its own login, like the hashes of accounts and API users."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gatewayd.config import load_config
from gatewayd.config.demo import is_demo_password
from gatewayd.daemon import demo_secrets_refusal
from gatewayd.passwords import hash_password


def test_clear_partner_passwords() -> None:
    assert is_demo_password("demo", "gateway")
    assert is_demo_password("admin", "gateway")
    assert is_demo_password("relay", "relay")
    assert not is_demo_password("relay", "gateway")
    assert not is_demo_password("Relay", "relay")


def test_partners_with_demo_passwords_are_warned_about_and_refused_beyond_loopback(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gatewayd.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            api:
              address: 0.0.0.0
              users:
                ops:
                  password: "{hash_password("a real admin password")}"
            partners:
              loopback:
                protocol: local
                root: {tmp_path}
                login: relay
                password: relay
              acme:
                protocol: local
                root: {tmp_path}
                login: gateway
                password: demo
              real:
                protocol: local
                root: {tmp_path}
                login: gateway
                password: a real partner password
              keys-only:
                protocol: local
                root: {tmp_path}
            """
        ),
        encoding="utf-8",
    )
    loaded = load_config(config)
    tail = "change it before exposing the gateway"
    assert [str(w) for w in loaded.warnings] == [
        f"{config}:11: demo secret in use for partner 'loopback': {tail}",
        f"{config}:16: demo secret in use for partner 'acme': {tail}",
    ]
    assert loaded.demo_secrets == ("partner 'loopback'", "partner 'acme'")
    refusal = demo_secrets_refusal(loaded)
    assert refusal is not None and "partner 'loopback', partner 'acme'" in refusal
