"""`/metrics`: the gateway's Prometheus metrics (`gatewayd.metrics`), in the text
exposition format. Credentials are asked like anywhere in the API unless
`api.metrics_auth` is false; any user or token will do, whatever its permissions, so a
scraper can use a token issued with no permission at all.
"""

from __future__ import annotations

from aiohttp import web

from gatewayd.api.body import Query
from gatewayd.api.routes import SCHEMAS, ApiContext, Call, route
from gatewayd.metrics import CONTENT_TYPE

SCHEMAS["Metrics"] = {
    "type": "string",
    "description": "Prometheus text exposition format (version 0.0.4)",
}


def _open(ctx: ApiContext) -> bool:
    return not ctx.loaded.config.api.metrics_auth


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics (transfers, bytes, durations, sessions, tasks, database)",
    description="Credentials are asked unless `api.metrics_auth` is false.",
    area=None,
    letter=None,
    tag="administration",
    responses={200: ("The metrics", "Metrics"), 401: ("Not authenticated", "Errors")},
    open_when=_open,
    answer_type=CONTENT_TYPE.split(";")[0],
)
async def get_metrics(call: Call) -> web.StreamResponse:
    Query(call.request, ()).check()
    body = call.ctx.metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
