"""The ASGI application and the uvicorn runner.

The event reader and the store writer start and stop in the ASGI lifespan, so whatever serves
the app (uvicorn here, or any ASGI server) gets the whole monitor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from celeriac.api import openapi, status, task_actions, tasks, workers
from celeriac.api.errors import APIError, handle_api_error, text_error
from celeriac.auth import BasicAuthMiddleware
from celeriac.cluster import Cluster
from celeriac.settings import Settings
from celeriac.web.pages import web_routes

log = logging.getLogger("celeriac")


async def healthcheck(request: Request) -> Response:
    return PlainTextResponse("OK")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return text_error(exc.status_code, "" if exc.status_code == 404 else str(exc.detail))


async def server_error(request: Request, exc: Exception) -> Response:
    # Never a traceback on the wire; the log has it.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return text_error(500, "Internal error")


def routes() -> list[BaseRoute]:
    return [
        Route("/healthcheck", healthcheck, methods=["GET", "HEAD"]),
        *tasks.routes,
        *task_actions.routes,
        *workers.routes,
        *status.routes,
        *openapi.routes,
        *web_routes,
    ]


def create_app(settings: Settings, cluster: Cluster | None = None) -> Starlette:
    """Build the ASGI app; the cluster is created here unless a test or the demo passes one."""
    cluster = cluster if cluster is not None else Cluster(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cluster.start()
        try:
            yield
        finally:
            cluster.close()

    route_list = routes()
    if settings.prefix:
        route_list = [Mount(settings.prefix, routes=route_list)]
    app = Starlette(
        routes=route_list,
        exception_handlers={
            APIError: handle_api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        middleware=[Middleware(BasicAuthMiddleware, settings=settings)],
        lifespan=lifespan,
    )
    app.state.cluster = cluster
    app.state.settings = settings
    return app


def serve(settings: Settings, cluster: Cluster | None = None) -> None:
    import uvicorn

    app = create_app(settings, cluster)
    config = uvicorn.Config(
        app,
        host=settings.address,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
