"""The overview of every watched cluster: a dashboard section, and ``/api/celeriac/clusters``.

Shown only when celeriac watches more than one cluster; each row links to that cluster's own
dashboard. The section is server-rendered and refreshed with the dashboard's other sections
(dashboard.js); the JSON is the same for every cluster's prefix.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.responses import json_response
from celeriac.clusters import Clusters
from celeriac.constants import ALL_STATES
from celeriac.web.markup import esc, table


def clusters_of(request: Request) -> Clusters | None:
    return getattr(request.app.state, "clusters", None)


async def clusters_api(request: Request) -> Response:
    """``GET /api/celeriac/clusters``: ``[{name, default, url, broker, role, connected,
    workers_online, workers_offline, tasks: {state: n} or null, events_per_s}]``."""
    clusters = clusters_of(request)
    return json_response(await clusters.overview() if clusters is not None else [])


def _states(counts: dict[str, int] | None) -> str:
    if counts is None:
        return '<span class="muted">not counted</span>'
    shown = [(s, counts[s]) for s in ALL_STATES if counts.get(s)]
    shown += [(s, n) for s, n in sorted(counts.items()) if s not in ALL_STATES and n]
    if not shown:
        return '<span class="muted">none</span>'
    return " ".join(f'<span class="badge state-{esc(s)}">{esc(s)} {n}</span>' for s, n in shown)


async def clusters_section(request: Request) -> str:
    """Every cluster at a glance; empty with one cluster."""
    clusters = clusters_of(request)
    if clusters is None or len(clusters) < 2:
        return ""
    current = getattr(request.app.state, "cluster_name", None)
    rows = []
    for c in await clusters.overview():
        here = " <span class=muted>(this one)</span>" if c["name"] == current else ""
        default = " <span class=muted>default</span>" if c["default"] else ""
        rate = c["events_per_s"]
        rows.append([
            f'<a href="{esc(c["url"])}" data-cluster="{esc(c["name"])}">{esc(c["name"])}</a>'
            f"{default}{here}",
            f'<code>{esc(c["broker"])}</code>'
            + ("" if c["connected"] or c["role"] == "follower"
               else ' <span class="error">disconnected</span>'),
            f'<span class="n-online">{c["workers_online"]}</span>'
            + (f' <span class="muted">({c["workers_offline"]} offline)</span>'
               if c["workers_offline"] else ""),
            _states(c["tasks"]),
            "—" if rate is None else f"{rate:g}",
        ])
    return f"""
<section id="clusters"><h2>Clusters <span class="muted small">every cluster this celeriac
watches</span></h2>
{table(["Cluster", "Broker", "Workers online", "Tasks by state", "Events / s"], rows,
       cls="clusters")}
</section>"""


routes = [Route("/api/celeriac/clusters", clusters_api, methods=["GET"])]
