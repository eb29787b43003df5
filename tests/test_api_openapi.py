"""The OpenAPI document: a valid OpenAPI 3.1 document that describes exactly the routes
the application serves, each with its body and answers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from gatewayd.api.openapi import build_document, openapi_path
from tests.api_support import ApiEnv

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[ApiEnv]:
    environment = ApiEnv(tmp_path)
    yield environment
    await environment.stop()


def app_routes(env: ApiEnv) -> set[tuple[str, str]]:
    """(method, path) of every route of the running application, as OpenAPI spells it."""
    assert env.gw.api is not None and env.gw.api._runner is not None
    app = env.gw.api._runner.app
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD to every GET
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        assert path, info
        found.add((route.method.lower(), openapi_path(path)))
    return found


async def test_the_document_and_the_application_agree(env: ApiEnv) -> None:
    await env.start()
    document = await env.api.get("/api/openapi.json")
    assert document == build_document()
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    routes = app_routes(env)
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented routes the application does not serve"
    assert len(routes) >= 25


def test_the_document_is_valid_openapi_3_1() -> None:
    document = build_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        for item in value.values():
            found |= _refs(item)
        return found
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value)) if value else set()
    return set()


def test_every_operation_is_complete() -> None:
    document = build_document()
    schemas = document["components"]["schemas"]
    assert {r.rsplit("/", 1)[1] for r in _refs(document)} <= set(schemas)
    for path, item in document["paths"].items():
        for name in re.findall(r"\{(\w+)\}", path):
            for op in item.values():
                assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"])
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op["summary"] and op["operationId"], where
            # Only the console's page, files and login need no credentials.
            assert "401" in op["responses"] or op.get("security") == [], where
            assert any(code.startswith("2") for code in op["responses"]), where
            if method in ("post", "put") and not path.endswith(("/pause", "/resume", "/cancel",
                                                                 "/retry", "/restart",
                                                                 "/stop", "/fire")):  # fmt: skip
                assert "requestBody" in op, where
    request = schemas["TransferRequest"]
    assert set(request["properties"]) == {
        "rule", "partner", "account", "isSend", "file", "output", "start", "transferInfo",
        "nbOfAttempts", "firstRetryDelay", "retryIncrementFactor",
    }  # fmt: skip
    assert "source" not in schemas["Rule"]["properties"]
    assert {"name", "direction", "path", "allow", "pre", "post", "error"} <= set(
        schemas["Rule"]["properties"]
    )


def test_transfer_schema_matches_the_shape() -> None:
    from datetime import UTC

    from gatewayd.api.shapes import transfer_json
    from gatewayd.model import Transfer

    shape = transfer_json(
        Transfer(rule="r", is_server=False, is_send=True, requester="a", requested="b",
                 protocol="local", id=1),
        UTC,
    )  # fmt: skip
    assert set(shape) == set(build_document()["components"]["schemas"]["Transfer"]["properties"])
