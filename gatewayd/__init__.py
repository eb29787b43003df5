"""gatewayd: a managed file-transfer gateway."""

__version__ = "0.1.0"
