"""Configuration: `gatewayd.yaml` and the rules folder, loaded into typed objects.

`load_config(path)` returns a `LoadedConfig` or raises `ConfigError`, whose `problems`
each print as `file:line: message`.
"""

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
