"""The ASGI application and the uvicorn runner.

The event reader and the store writer start and stop in the ASGI lifespan, so whatever serves
the app (uvicorn here, or any ASGI server) gets the whole monitor.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celeriac import auth, heap, metrics, oidc
from celeriac.alerts import AlertEngine
from celeriac.api import alerts, openapi, status, task_actions, tasks, workers
from celeriac.api.errors import APIError, handle_api_error, text_error
from celeriac.cluster import Cluster
from celeriac.clusters import CLUSTERS_PATH, Clusters, Member
from celeriac.queue_history import QueueSampler
from celeriac.settings import Settings
from celeriac.web.pages import web_routes

log = logging.getLogger("celeriac")

#: The largest request body accepted; a larger one is answered 413 without being read.
MAX_BODY_BYTES = 1024 * 1024


async def healthcheck(request: Request) -> Response:
    # The body stays Flower's "OK"; the role (leader/follower on a shared PostgreSQL store,
    # single otherwise) is in a header, so a proxy or a probe can tell them apart.
    cluster = getattr(request.app.state, "cluster", None)
    role = str(getattr(cluster, "role", "single"))
    return PlainTextResponse("OK", headers={"X-Celeriac-Role": role})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return text_error(exc.status_code, "" if exc.status_code == 404 else str(exc.detail))


async def server_error(request: Request, exc: Exception) -> Response:
    # Never a traceback on the wire; the log has it.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return text_error(500, "Internal error")


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: at once from Content-Length, or as soon as a chunked
    body grows past it, so no client can make celeriac buffer an unbounded body."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await text_error(400, "Invalid Content-Length")(scope, receive, send)
                return
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._too_large_text())
            return message

        await self.app(scope, limited, send)

    def _too_large_text(self) -> str:
        return f"Request body larger than {self.max_bytes} bytes"

    def _too_large(self) -> Response:
        return text_error(413, self._too_large_text())


EXCEPTION_HANDLERS: dict[Any, Any] = {
    APIError: handle_api_error,
    HTTPException: http_error,
    Exception: server_error,
}


def routes() -> list[BaseRoute]:
    return [
        Route("/healthcheck", healthcheck, methods=["GET", "HEAD"]),
        *tasks.routes,
        *task_actions.routes,
        *workers.routes,
        *status.routes,
        *alerts.routes,
        *openapi.routes,
        *metrics.routes,
        *web_routes,
    ]


def create_app(
    settings: Settings, cluster: Cluster | None = None, clusters: Clusters | None = None
) -> Starlette:
    """Build the ASGI app; the clusters are created here unless a test or the demo passes one
    (``cluster``) or the command line passes them all (``clusters``)."""
    if clusters is None:
        clusters = (Clusters.single(settings, cluster) if cluster is not None
                    else Clusters.build(settings))
    default = clusters.default
    parts = {m.name: ClusterParts(m) for m in clusters}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        clusters.start()
        for p in parts.values():
            p.start()
        clusters.start_sampling()
        try:
            yield
        finally:
            await clusters.stop_sampling()
            for p in parts.values():
                await p.close()
            clusters.close()

    route_list = routes() + oidc.routes_for(settings)
    if len(clusters) > 1:
        mounts: list[BaseRoute] = [
            Mount(f"{CLUSTERS_PATH}/{m.name}", app=parts[m.name].app(clusters, settings))
            for m in clusters if not m.default
        ]
        route_list = [
            *mounts,
            Route(f"{CLUSTERS_PATH}/{{name}}", other_cluster, methods=_ALL_METHODS),
            Route(f"{CLUSTERS_PATH}/{{name}}/{{rest:path}}", other_cluster, methods=_ALL_METHODS),
            *route_list,
        ]
    if settings.prefix:
        route_list = [Mount(settings.prefix, routes=route_list)]
    app = Starlette(
        routes=route_list,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[
            *oidc.middleware(settings),
            Middleware(auth.AuthMiddleware, settings=settings),
            Middleware(BodyLimitMiddleware),
        ],
        lifespan=lifespan,
    )
    parts[default.name].attach(app, clusters, settings)
    return app


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


async def other_cluster(request: Request) -> Response:
    """``/clusters/NAME/...`` of no mounted cluster: the default one's lives at the root
    (redirected there), any other name is unknown; ``/clusters/NAME`` goes to its ``/``."""
    clusters: Clusters = request.app.state.clusters
    name = request.path_params["name"]
    member = clusters.get(name)
    if member is None:
        return text_error(404, f"Unknown cluster '{name}'")
    target = f"{member.base}/{request.path_params.get('rest', '')}"
    if request.url.query:
        target += f"?{request.url.query}"
    return RedirectResponse(target, status_code=307)


class ClusterParts:
    """What serves one cluster beside the Cluster itself: its alert engine, queue sampler and
    metrics, and (for every cluster but the default) the ASGI app under its prefix."""

    def __init__(self, member: Member) -> None:
        self.member = member
        cluster = member.cluster
        self.alerts = AlertEngine.from_settings(member.settings, cluster)
        self.queue_sampler = QueueSampler(cluster)
        self.metrics = metrics.Metrics(cluster)

    def start(self) -> None:
        if self.alerts is not None:
            self.alerts.start()
        self.queue_sampler.start()

    async def close(self) -> None:
        await self.queue_sampler.close()
        if self.alerts is not None:
            await self.alerts.close()

    def app(self, clusters: Clusters, settings: Settings) -> Starlette:
        """The cluster's own app, mounted at ``/clusters/NAME`` (auth is the outer app's)."""
        app = Starlette(routes=routes(), exception_handlers=EXCEPTION_HANDLERS)
        self.attach(app, clusters, settings, self.member.settings)
        return app

    def attach(self, app: Starlette, clusters: Clusters, root: Settings,
               own: Settings | None = None) -> None:
        app.state.cluster = self.member.cluster
        app.state.cluster_name = self.member.name
        app.state.clusters = clusters
        app.state.settings = own or root  # its prefix is the one its pages link within
        app.state.root_prefix = root.prefix  # sign-in and sign-out live at the root only
        app.state.alerts = self.alerts
        app.state.queue_sampler = self.queue_sampler
        app.state.metrics = self.metrics


def serve(
    settings: Settings, cluster: Cluster | None = None, clusters: Clusters | None = None
) -> None:
    import uvicorn

    app = create_app(settings, cluster, clusters)
    log.info("%s", auth.describe(settings))
    heap.tune_gc()
    heap.Trimmer().start()  # a daemon thread: it ends with the process
    config = uvicorn.Config(
        app,
        host=settings.address,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=settings.certfile,
        ssl_keyfile=settings.keyfile,
        ssl_ca_certs=settings.ca_certs,
        uds=settings.unix_socket,
        # Flower's --xheaders: X-Forwarded-* from any proxy; else only from this machine's.
        forwarded_allow_ips="*" if settings.xheaders else None,
    )
    uvicorn.Server(config).run()
