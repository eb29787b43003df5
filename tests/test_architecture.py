"""What the import contracts cannot see: the package `__init__` files that an import runs.

`lint-imports` (pyproject.toml) checks the import statements; importing
`gatewayd.config.schema` also runs `gatewayd/config/__init__.py`, and whatever that
imports is loaded too. Here a fresh interpreter imports every module of the protocols
and looks at what of gatewayd it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import CHECKOUT

# The core's public leaf modules (the design's "Shape of the code"), and the packages
# that hold them.
PROTOCOLS_MAY_LOAD = {
    "gatewayd",
    "gatewayd.config",
    "gatewayd.config.files",
    "gatewayd.config.outbound",  # part of the schema: the servers that tasks reach
    "gatewayd.config.paths",
    "gatewayd.config.schema",
    "gatewayd.errors",
    "gatewayd.fsutil",
    "gatewayd.model",
    "gatewayd.names",
    "gatewayd.ports",
    "gatewayd.safepath",
}

_LOADED = """
import importlib, json, pkgutil, sys
import protocols
names = [m.name for m in pkgutil.walk_packages(protocols.__path__, "protocols.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "gatewayd" or m.startswith("gatewayd."))
print(json.dumps({"protocols": names, "gatewayd": loaded}))
"""


def test_protocols_load_only_the_core_leaf_modules() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert {"protocols.sftp.server", "protocols.http.server", "protocols.local"} <= set(
        found["protocols"]
    ), found["protocols"]
    beyond = sorted(set(found["gatewayd"]) - PROTOCOLS_MAY_LOAD)
    assert not beyond, f"importing the protocols loads {beyond}"


def test_the_option_schemas_load_without_the_loader() -> None:
    code = (
        "import json, sys, gatewayd.config.schema; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gatewayd.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        "gatewayd.config",
        "gatewayd.config.outbound",
        "gatewayd.config.schema",
        "gatewayd.model",
        "gatewayd.names",
    ]


def test_the_config_package_still_offers_its_names() -> None:
    code = (
        "import gatewayd.config as c; "
        "print(c.load_config.__module__, c.LoadedConfig.__module__, c.ConfigError.__module__, "
        "c.Paths.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "gatewayd.config.loader",
        "gatewayd.config.loader",
        "gatewayd.config.problems",
        "gatewayd.config.paths",
    ]
