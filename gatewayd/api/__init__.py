"""The admin REST API (aiohttp): transfers, rules, servers, partners, accounts, users,
tokens, about, audit, and its OpenAPI document. See `app.py` for the entry points."""

from gatewayd.api.app import ApiServer, build_app

__all__ = ["ApiServer", "build_app"]
