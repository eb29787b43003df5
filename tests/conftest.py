"""Fixtures shared by the whole suite."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_proc import daemon_env
from tests.pg_support import pg_database, pg_server  # noqa: F401  (fixtures)
from tests.store_backends import backend  # noqa: F401  (a fixture)

CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class DemoConfig:
    """A copy of the shipped `etc/` and `rules/` in a temporary folder.

    The demo's `home: ..` makes `root` the home, so everything it writes lands in
    `root/var`, never in the checkout.
    """

    root: Path

    @property
    def path(self) -> Path:
        """The copied `etc/gatewayd.yaml`."""
        return self.root / "etc" / "gatewayd.yaml"

    @property
    def rules_dir(self) -> Path:
        return self.root / "rules"

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the parsed configuration and write it back.

        The comments of the file are lost, and with them its line numbers: tests about
        lines should write the file themselves.
        """
        data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        change(data)
        self.path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@pytest.fixture
def demo_config(tmp_path: Path) -> DemoConfig:
    """The shipped demo configuration, copied into `tmp_path` unchanged."""
    root = tmp_path / "gatewayd"
    shutil.copytree(CHECKOUT / "etc", root / "etc")
    shutil.copytree(CHECKOUT / "rules", root / "rules")
    return DemoConfig(root)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """The environment for `python -m gatewayd` subprocesses: the checkout importable,
    no configuration inherited from the developer's shell."""
    return daemon_env()
