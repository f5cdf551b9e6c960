"""``/`` (the dashboard) and ``/broker`` (queues and their lengths).

The dashboard's numbers, worker table and throughput chart are drawn by ``dashboard.js`` from
the stream; the page carries the first snapshot inline so it is complete before the stream's
first message.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from celeriac.api.tasks import cluster_of
from celeriac.constants import ALL_STATES
from celeriac.queues import queue_consumers, queue_lengths
from celeriac.web.clusters import clusters_section
from celeriac.web.hub import count_tasks, worker_summary
from celeriac.web.insights import history_section, queue_section
from celeriac.web.markup import esc, json_script, page, path_part, table
from celeriac.web.stream import hub_of
from celeriac.web.workers import refresh


async def dashboard_page(request: Request) -> Response:
    cluster = cluster_of(request)
    hub = hub_of(request)
    snap = hub.snapshot
    counts, worker_counts, total = snap.counts, snap.worker_counts, snap.total
    if hub.version == 0:  # nobody watched yet: count once now
        counted = await run_in_threadpool(count_tasks, cluster.store)
        counts, worker_counts = counted if counted else (None, None)
        total = await run_in_threadpool(cluster.store.count)
    initial = {
        "workers": {n: worker_summary(w) for n, w in sorted(cluster.state.workers().items())},
        "counts": counts,
        "worker_counts": worker_counts,
        "total": total,
        "samples": [list(s) for s in hub.samples],
        "states": list(ALL_STATES),
    }
    cards = "".join(
        f'<div class="card"><div class="num" id="{i}">&ndash;</div><div class="label">{label}</div>'
        "</div>"
        for i, label in (("n-online", "workers online"), ("n-offline", "workers offline"),
                         ("n-active", "tasks running"), ("n-total", "tasks stored"),
                         ("n-rate", "events / s"), ("n-failrate", "failed, last minute"))
    )
    body = f"""
<h1>Dashboard</h1>
{await clusters_section(request)}
<section class="cards">{cards}</section>
<section><h2>Throughput <span class="muted small">tasks finished per second, live</span></h2>
<div class="chart-wrap"><svg id="chart" viewBox="0 0 600 160" preserveAspectRatio="none"
 role="img" aria-label="tasks succeeded and failed per second"></svg></div>
<p class="legend"><span class="key ok"></span> succeeded <span class="key fail"></span> failed
<span class="muted" id="chart-span"></span></p></section>
{await history_section(request)}
{await queue_section(request)}
<section><h2>Tasks by state</h2><div id="states" class="states"></div></section>
<section><h2>Workers</h2>
<div class="scroll"><table id="workers" class="workers"><thead><tr><th>Worker</th>
<th>Status</th><th>Active</th><th>Processed</th><th>Succeeded</th><th>Failed</th><th>Load</th>
<th>Last heartbeat</th></tr></thead><tbody></tbody></table></div></section>
{json_script("initial", initial)}
"""
    return page(request, "Dashboard", body, nav="/", script="dashboard.js")


#: How far back the broker page's time in queue looks.
WAIT_WINDOW = 15 * 60.0


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def wait_summary(waits: list[float]) -> str:
    """Median and 95th percentile of sorted waits, as the broker page shows them."""
    if not waits:
        return '<span class="muted">no data</span>'
    p50 = waits[(len(waits) - 1) // 2]
    p95 = waits[min(len(waits) - 1, int(len(waits) * 0.95))]
    return (
        f'<span class="wait" title="{len(waits)} tasks">p50 {_seconds(p50)}, '
        f"p95 {_seconds(p95)}</span>"
    )


async def broker_page(request: Request) -> Response:
    cluster = cluster_of(request)
    if not cluster.worker_info:
        await refresh(request)
    consumers = queue_consumers(cluster.worker_info)
    names = sorted(consumers)
    lengths = await cluster.control.run(queue_lengths, cluster.app, names)
    waits = cluster.state.queue_waits(WAIT_WINDOW)
    prefix = request.app.state.settings.prefix
    rows = [
        [
            esc(name),
            f'<span data-queue="{esc(name)}">{esc(lengths.get(name, 0))}</span>',
            wait_summary(waits.get(name, [])),
            " ".join(
                f'<a href="{esc(prefix)}/worker/{esc(path_part(w))}">{esc(w)}</a>'
                for w in consumers[name]
            ),
            f'<button class="act danger small" type="button" data-out="out-purge" '
            f'data-post="{esc(prefix)}/api/celeriac/queues/{esc(path_part(name))}/purge" '
            f'data-after="reload" data-confirm="Purge queue {esc(name)}? Every message waiting '
            f'in it is deleted; tasks a worker already holds are not.">Purge</button>',
        ]
        for name in names
    ]
    body = f"""
<h1>Broker</h1>
<p>URL <code>{esc(cluster.broker_url)}</code></p>
<section><h2>Queues</h2>
{table(["Queue", "Messages waiting", "Time in queue (15 min)", "Consumed by", ""], rows,
        cls="queues")}
<output id="out-purge" class="reply"></output>
<p class="muted small">Queues that some worker consumes; lengths are asked of the broker
every few seconds. Time in queue is from a task's sending to its receipt by a worker, for
the tasks received in the last 15 minutes whose clients send <code>task-sent</code> events
(<code>task_send_sent_event = True</code>).</p></section>
"""
    return page(request, "Broker", body, nav="/broker", script="broker.js")
