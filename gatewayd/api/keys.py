"""`/api/keys`: the OpenPGP keys of the configuration (`keys:`), as their files hold
them: fingerprints, user ids, creation, expiry and what each can do. Never a secret: a
private key is shown by its public parts, its passphrase only by where it comes from
(`file` or `env`). The `partners` permission, read.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gatewayd.api.automation import ERRORS, TIME
from gatewayd.api.errors import not_found
from gatewayd.api.routes import SCHEMAS, Call, route
from gatewayd.api.shapes import rfc3339
from gatewayd.crypto.keys import EXPIRY_WARNING_DAYS

SCHEMAS["Key"] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["public", "private"]},
        "file": {"type": "string"},
        "fingerprint": {"type": "string", "description": "of the primary key (40 hex)"},
        "keyId": {"type": "string"},
        "userIds": {"type": "array", "items": {"type": "string"}},
        "created": TIME,
        "expires": {**TIME, "description": "null: never expires"},
        "expired": {"type": "boolean"},
        "expiresSoon": {
            "type": "boolean",
            "description": f"expires within {EXPIRY_WARNING_DAYS} days",
        },
        "canEncrypt": {"type": "boolean"},
        "canSign": {"type": "boolean"},
        "subkeys": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "fingerprint": {"type": "string"},
                    "capabilities": {"type": "string", "description": "e: encrypt, s: sign"},
                    "expires": TIME,
                },
            },
        },
        "passphraseFrom": {"enum": ["file", "env", None]},
    },
}
SCHEMAS["KeyList"] = {
    "type": "object",
    "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}},
}


def _key_json(call: Call, name: str) -> dict[str, Any]:
    loaded, tz = call.ctx.loaded, call.ctx.tz
    config, info = loaded.config.keys[name], loaded.key_infos[name]
    now = call.ctx.clock.now()
    soon = info.expires is not None and (info.expires - now).days < EXPIRY_WARNING_DAYS
    passphrase = "file" if config.passphrase_file else "env" if config.passphrase_env else None
    return {
        "name": name,
        "kind": config.kind,
        "file": str(config.file),
        "fingerprint": info.fingerprint,
        "keyId": info.key_id,
        "userIds": list(info.user_ids),
        "created": rfc3339(info.created, tz),
        "expires": rfc3339(info.expires, tz),
        "expired": info.expired(now),
        "expiresSoon": soon,
        "canEncrypt": info.can("e", now),
        "canSign": info.can("s", now),
        "subkeys": [
            {
                "fingerprint": k.fingerprint,
                "capabilities": k.capabilities,
                "expires": rfc3339(k.expires, tz),
            }
            for k in info.subkeys
        ],
        "passphraseFrom": passphrase,
    }


@route(
    "GET",
    "/api/keys",
    summary="List the OpenPGP keys of the configuration (never a secret)",
    area="partners",
    letter="r",
    tag="keys",
    responses={200: ("Every key", "KeyList"), **ERRORS},
)
async def list_keys(call: Call) -> web.StreamResponse:
    names = sorted(call.ctx.loaded.key_infos)
    return web.json_response({"keys": [_key_json(call, name) for name in names]})


@route(
    "GET",
    "/api/keys/{name}",
    summary="One OpenPGP key of the configuration",
    area="partners",
    letter="r",
    tag="keys",
    responses={200: ("The key", "Key"), 404: ("No such key", "Errors"), **ERRORS},
)
async def get_key(call: Call) -> web.StreamResponse:
    name = call.request.match_info["name"]
    if name not in call.ctx.loaded.key_infos:
        raise not_found(f"no key '{name}'")
    return web.json_response(_key_json(call, name))
