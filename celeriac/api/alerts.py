"""``/api/celeriac/alerts``: the rules, what fires, what resolved, and how delivery went."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.alerts import AlertEngine, disabled_snapshot
from celeriac.api.responses import json_response


def engine_of(request: Request) -> AlertEngine | None:
    engine: AlertEngine | None = getattr(request.app.state, "alerts", None)
    return engine


async def alerts(request: Request) -> Response:
    engine = engine_of(request)
    return json_response(engine.snapshot() if engine is not None else disabled_snapshot())


routes = [Route("/api/celeriac/alerts", alerts, methods=["GET"])]
