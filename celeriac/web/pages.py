"""The UI's routes, at Flower's paths so bookmarks carry over, plus its assets, its live stream
and the API endpoints of its own features (bulk actions, export, charts, failures, purge).

``server.routes()`` adds :data:`web_routes` next to the API's; under ``--url-prefix`` they are
mounted with everything else, and every page builds its links from the same prefix.
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from celeriac.api import broker, bulk, export, insights
from celeriac.web import clusters, stream
from celeriac.web.alerts import alerts_page
from celeriac.web.dashboard import broker_page, dashboard_page
from celeriac.web.insights import failures_page, types_page
from celeriac.web.tasks import task_page, tasks_page
from celeriac.web.workers import worker_page, workers_page

STATIC_DIR = Path(__file__).parent / "static"

web_routes: list[BaseRoute] = [
    Route("/", dashboard_page, methods=["GET", "HEAD"]),
    Route("/dashboard", dashboard_page, methods=["GET", "HEAD"]),
    Route("/workers", workers_page, methods=["GET", "HEAD"]),
    Route("/worker/{name:path}", worker_page, methods=["GET", "HEAD"]),
    Route("/tasks", tasks_page, methods=["GET", "HEAD"]),
    Route("/task/{task_id:path}", task_page, methods=["GET", "HEAD"]),
    Route("/broker", broker_page, methods=["GET", "HEAD"]),
    Route("/failures", failures_page, methods=["GET", "HEAD"]),
    Route("/types", types_page, methods=["GET", "HEAD"]),
    Route("/alerts", alerts_page, methods=["GET", "HEAD"]),
    *stream.routes,
    # The API endpoints of the UI's own features, under /api/celeriac/ (never Flower's paths).
    *bulk.routes,
    *export.routes,
    *insights.routes,
    *broker.routes,
    *clusters.routes,
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]
