"""The OpenAPI 3.1 document of the admin API, served at `/api/openapi.json`.

Operations come from the route table (`routes.ROUTES`), so a route cannot be added
without its documentation; the schemas of bodies and answers are written here (the rule
schema is the configuration model's own JSON schema).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from gatewayd import __version__
from gatewayd.api.auth import AREAS
from gatewayd.api.routes import ROUTES, SCHEMAS, Call, Route, route
from gatewayd.config.schema import RuleConfig
from gatewayd.model import ErrorCode, Status, Step
from gatewayd.requests import MAX_TOKEN_LIFETIME

JSON = "application/json"
_PATH_PARAM = re.compile(r"\{(\w+)(:[^}]*)?\}")


def openapi_path(path: str) -> str:
    """An aiohttp path (`/api/transfers/{id:\\d+}`) as OpenAPI writes it."""
    return _PATH_PARAM.sub(r"{\1}", path)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(
    properties: dict[str, Any], required: tuple[str, ...] = (), closed: bool = True
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def _request(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A request body parsed by `gatewayd.requests.parse`: a JSON null there means the
    field is not given, so optional fields may be null."""

    def or_null(schema: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in schema.items() if k in ("description", "default")}
        rest = {k: v for k, v in schema.items() if k not in meta}
        return {**_nullable(rest), **meta}

    return _obj({k: v if k in required else or_null(v) for k, v in properties.items()}, required)


def _list(key: str, item: str) -> dict[str, Any]:
    return _obj({key: {"type": "array", "items": _ref(item)}}, (key,))


STRING = {"type": "string"}
INT = {"type": "integer"}
NUMBER = {"type": "number"}
BOOL = {"type": "boolean"}
# Accounts, partners and users of the main file are changed there, not through the API.
IN_MAIN_FILE = {**BOOL, "description": "Defined in the main file: read-only through the API (409)"}
TIME = {"type": "string", "format": "date-time"}
PERMISSIONS = {
    "type": "object",
    "description": "Letters r (read), w (write), d (delete) per area",
    "propertyNames": {"enum": list(AREAS)},
    "additionalProperties": {"type": "string", "pattern": "^[rwd]*$"},
}

TOKEN = {
    "id": STRING,
    "user": STRING,
    "permissions": PERMISSIONS,
    "manageTokens": BOOL,
    "comment": STRING,
    "created": TIME,
    "expires": TIME,
    "revoked": _nullable(TIME),
}


def _transfer() -> dict[str, Any]:
    props = {
        "id": INT,
        "remoteID": STRING,
        "followID": STRING,
        "parentID": _nullable(INT),
        "rule": STRING,
        "isServer": BOOL,
        "isSend": BOOL,
        "requester": STRING,
        "requested": STRING,
        "protocol": STRING,
        "account": _nullable(STRING),
        "partner": _nullable(STRING),
        "srcFilename": STRING,
        "destFilename": STRING,
        "localFilepath": STRING,
        "remoteFilepath": STRING,
        "filesize": {"type": "integer", "description": "-1 while unknown"},
        "start": _nullable(TIME),
        "stop": _nullable(TIME),
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "step": {"type": "string", "enum": [s.value for s in Step]},
        "progress": {"type": "integer", "description": "Bytes safely on disk"},
        "taskNumber": INT,
        "errorCode": {"type": "string", "enum": [c.value for c in ErrorCode]},
        "errorMsg": STRING,
        "transferInfo": {"type": "object"},
        "remainingAttempts": INT,
        "nextAttempt": _nullable(TIME),
        "expires": {**_nullable(TIME), "description": "Expiry of an AVAILABLE transfer"},
        "nextRetryDelay": {"type": "integer", "description": "Seconds"},
        "retryIncrementFactor": NUMBER,
        "sha256": {"type": "string", "description": "SHA-256 of the data, once known"},
        "node": {
            **_nullable(STRING),
            "description": "The node that runs it, or ran it last (RUNNING rows have one)",
        },
        "takenOverBy": {
            **_nullable(STRING),
            "description": "The node that took it over when its node died",
        },
        "takenOverAt": _nullable(TIME),
    }
    return _obj(props, tuple(props))


def _rule_schemas() -> dict[str, Any]:
    schema = RuleConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    schema["properties"].pop("source", None)
    # PUT /api/rules/{name}: the name may be left out (the path gives it).
    replace = {**schema, "required": [f for f in schema.get("required", []) if f != "name"]}
    return {"Rule": schema, "RuleReplace": replace, **defs}


def _schemas() -> dict[str, Any]:
    return {
        "Error": _obj(
            {"message": STRING, "errorCode": STRING, "field": STRING}, ("message", "errorCode")
        ),
        "Errors": _obj({"errors": {"type": "array", "items": _ref("Error")}}, ("errors",)),
        "Transfer": _transfer(),
        "TransferList": _obj(
            {
                "transfers": {"type": "array", "items": _ref("Transfer")},
                "total": INT,
                "limit": INT,
                "offset": INT,
            },
            ("transfers", "total", "limit", "offset"),
        ),
        "TransferRequest": _request(
            {
                "rule": STRING,
                "partner": STRING,
                "account": {**STRING, "description": "Our login at the partner"},
                "isSend": {**BOOL, "description": "Must match the rule's direction"},
                "file": {
                    **STRING,
                    "description": "Relative path: in the rule's folder "
                    "(send) or at the partner (receive)",
                },
                "output": {**STRING, "description": "Name at the destination"},
                "start": {
                    **TIME,
                    "description": "Not before (default: now); without an "
                    "offset, in the gateway's time zone",
                },
                "transferInfo": {"type": "object"},
                "nbOfAttempts": {"type": "integer", "minimum": 0},
                "firstRetryDelay": {"type": "number", "minimum": 0},
                "retryIncrementFactor": {"type": "number", "minimum": 1},
            },
            ("rule", "partner", "file"),
        ),
        "PreregisterRequest": _request(
            {
                "rule": STRING,
                "account": STRING,
                "file": {**STRING, "description": "A file name in the rule's folder"},
                "validFor": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "Seconds (default one day)",
                },
                "expires": TIME,
                "transferInfo": {"type": "object"},
            },
            ("rule", "account", "file"),
        ),
        "CancelResult": _obj(
            {"cancelled": {"type": "array", "items": INT}, "count": INT}, ("cancelled", "count")
        ),
        **_rule_schemas(),
        "RuleList": _list("rules", "Rule"),
        "Server": _obj(
            {
                "name": STRING,
                "protocol": STRING,
                "address": STRING,
                "port": INT,
                "enabled": BOOL,
                "state": {"type": "string", "enum": ["running", "stopped", "disabled"]},
                "boundPort": _nullable(INT),
                "options": {"type": "object"},
            }
        ),
        "ServerList": _list("servers", "Server"),
        "Partner": _obj(
            {
                "name": STRING,
                "protocol": STRING,
                "address": STRING,
                "port": INT,
                "login": STRING,
                "hasPassword": BOOL,
                "maxTransfers": _nullable(INT),
                "enabled": BOOL,
                "options": {"type": "object"},
                "inMainFile": IN_MAIN_FILE,
            }
        ),
        "PartnerList": _list("partners", "Partner"),
        "Account": _obj(
            {
                "name": STRING,
                "enabled": BOOL,
                "hasPassword": BOOL,
                "publicKeys": {"type": "array", "items": STRING},
                "maxUploads": _nullable(INT),
                "maxDownloads": _nullable(INT),
                "rules": {"type": "array", "items": STRING},
                "inMainFile": IN_MAIN_FILE,
            }
        ),
        "AccountList": _list("accounts", "Account"),
        "User": _obj(
            {
                "name": STRING,
                "enabled": BOOL,
                "permissions": PERMISSIONS,
                "inMainFile": IN_MAIN_FILE,
            }
        ),
        "UserList": _list("users", "User"),
        "TokenRequest": _request(
            {
                "expiresIn": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_TOKEN_LIFETIME,
                    "description": "Seconds",
                },
                "permissions": PERMISSIONS,
                "comment": {"type": "string", "maxLength": 200},
                "manageTokens": {
                    **BOOL,
                    "default": False,
                    "description": "Whether the token may list and revoke tokens (its "
                    "user's; others' with the users area). Never issue them.",
                },
            }
        ),
        "Token": _obj(TOKEN),
        # Token's fields and the JWT (an allOf would not do: Token is closed).
        "NewToken": _obj(
            {"token": {"type": "string", "description": "The JWT"}, **TOKEN}, ("token",)
        ),
        "TokenList": _list("tokens", "Token"),
        "About": _obj(
            {
                "name": STRING,
                "version": STRING,
                "started": TIME,
                "uptime": {"type": "number", "description": "Seconds"},
                "timezone": STRING,
                "user": STRING,
                "permissions": PERMISSIONS,
                "servers": {"type": "object", "additionalProperties": {"type": "object"}},
                "database": {"type": "object"},
                "scheduler": {"type": "object"},
                "node": {"type": "string", "description": "This node's name"},
                "nodes": {"type": "array", "items": _ref("Node")},
            }
        ),
        "Node": _obj(
            {
                "name": STRING,
                "this": {"type": "boolean", "description": "The node that answers"},
                "host": STRING,
                "pid": INT,
                "version": STRING,
                "api": {"type": "string", "description": "Its API address (as configured)"},
                "started": TIME,
                "heartbeat": TIME,
                "lease": {"type": "number", "description": "Seconds its heartbeat holds"},
                "alive": {
                    "type": "boolean",
                    "description": "Its lease holds (not stopped, not taken over)",
                },
                "running": {"type": "integer", "description": "RUNNING transfers it owns"},
                "stopped": _nullable(TIME),
                "takenOverBy": _nullable(STRING),
                "takenOverAt": _nullable(TIME),
            },
            (
                "name",
                "this",
                "host",
                "version",
                "started",
                "heartbeat",
                "lease",
                "alive",
                "running",
            ),
        ),
        "AuditEntry": _obj(
            {
                "id": INT,
                "at": TIME,
                "who": STRING,
                "action": STRING,
                "target": STRING,
                "details": {"type": "object"},
            }
        ),
        "AuditList": _list("entries", "AuditEntry"),
        "OpenApi": {"type": "object", "description": "This document"},
        **SCHEMAS,
    }


def _operation(r: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": r.operation_id,
        "summary": r.summary,
        "tags": [r.tag],
    }
    if r.description:
        op["description"] = r.description
    op["x-permission"] = f"{r.area}:{r.letter}" if r.area else "any authenticated user"
    if r.public:
        op["x-permission"] = "none"
        op["security"] = []
    elif r.open_when is not None:
        op["x-permission"] += " (or none, depending on a setting)"
    params = [
        {"name": name, "in": "path", "required": True, "schema": STRING}
        for name, _ in _PATH_PARAM.findall(r.path)
    ]
    for p in r.query:
        schema = {"type": "array", "items": dict(p.schema)} if p.repeated else dict(p.schema)
        param: dict[str, Any] = {
            "name": p.name,
            "in": "query",
            "description": p.description,
            "required": p.required,
            "schema": schema,
        }
        if p.repeated:
            param["explode"] = True
        params.append(param)
    if params:
        op["parameters"] = params
    responses: dict[str, Any] = {}
    if r.body:
        content = {JSON: {"schema": _ref(r.body)}}
        if r.body_yaml:
            # The same object, written in YAML.
            content["application/yaml"] = {"schema": _ref(r.body)}
        op["requestBody"] = {"required": True, "content": content}
        if 415 not in r.responses:
            responses["415"] = {
                "description": "Unsupported Content-Type (or none)",
                "content": {JSON: {"schema": _ref("Errors")}},
            }
    for status, (description, answer_schema) in sorted(r.responses.items()):
        answer: dict[str, Any] = {"description": description}
        if answer_schema:
            media = r.answer_type if 200 <= status < 300 else JSON
            answer["content"] = {media: {"schema": _ref(answer_schema)}}
        responses[str(status)] = answer
    if 401 in r.responses and 429 not in r.responses:
        # Whatever asks for credentials may refuse an address with too many failures.
        responses["429"] = {
            "description": "Too many failed logins from this address; `Retry-After` says "
            "when to try again",
            "headers": {"Retry-After": {"schema": INT, "description": "Seconds"}},
            "content": {JSON: {"schema": _ref("Errors")}},
        }
    op["responses"] = dict(sorted(responses.items()))
    return op


def build_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        paths.setdefault(openapi_path(r.path), {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gatewayd admin API",
            "version": __version__,
            "description": "Drive and watch the gateway: transfers, rules, servers, "
            "partners, accounts, users, tokens. Errors are "
            '`{"errors": [{"message", "errorCode"}]}` with every problem at once.',
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                # The console's (`POST /api/session`); changes also need X-CSRF-Token.
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "gatewayd_session"},
            },
        },
        "security": [{"basicAuth": []}, {"bearerAuth": []}, {"sessionCookie": []}],
        "paths": dict(sorted(paths.items())),
    }


@route(
    "GET",
    "/api/openapi.json",
    summary="This OpenAPI 3.1 document",
    area=None,
    letter=None,
    tag="administration",
    responses={200: ("The document", "OpenApi"), 401: ("Not authenticated", "Errors")},
)
async def openapi_document(call: Call) -> web.StreamResponse:
    return web.json_response(build_document())
