"""Configuration: `gatewayd.yaml` and the rules folder, loaded into typed objects.

`load_config(path)` returns a `LoadedConfig` or raises `ConfigError`, whose `problems`
each print as `file:line: message`.

The names below are imported on first use: a protocol that imports the option-schema
base (`gatewayd.config.schema`) runs this file too, and must not load the loader with
it (and through the loader the task types and the protocol registry).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gatewayd.config.loader import (
        LoadedConfig,
        demo_secrets_in_use,
        ensure_folders,
        load_config,
        load_rule_text,
    )
    from gatewayd.config.paths import Paths
    from gatewayd.config.problems import ConfigError, Problem

__all__ = [
    "ConfigError",
    "LoadedConfig",
    "Paths",
    "Problem",
    "demo_secrets_in_use",
    "ensure_folders",
    "load_config",
    "load_rule_text",
]

# Public name -> the module of this package that defines it.
_HOMES = {
    "ConfigError": "problems",
    "LoadedConfig": "loader",
    "Paths": "paths",
    "Problem": "problems",
    "demo_secrets_in_use": "loader",
    "ensure_folders": "loader",
    "load_config": "loader",
    "load_rule_text": "loader",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value
