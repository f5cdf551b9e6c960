"""``/workers`` and ``/worker/<name>``: what the workers say about themselves, and their controls.

Both pages read ``cluster.worker_info`` (inspect replies) and the live state; the worker page
asks that one worker afresh on every load. Buttons post to the JSON API (see ``app.js``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from celeriac.api.tasks import cluster_of
from celeriac.web.markup import (
    esc,
    fmt_duration,
    fmt_time,
    kv_table,
    not_found,
    page,
    path_part,
    pretty,
    status_badge,
    table,
)


async def refresh(request: Request, name: str | None = None) -> None:
    """Inspect the workers, sharing one round of inspect among pages that ask at once.

    Several tabs (and the redraws after each button) would otherwise each start their own
    round of inspect calls for the same answers.
    """
    state = request.app.state
    rounds: dict[str | None, asyncio.Task[None]] | None = getattr(state, "web_refreshes", None)
    if rounds is None:
        rounds = state.web_refreshes = {}
    running = rounds.get(name)
    if running is None or running.done():
        running = rounds[name] = asyncio.ensure_future(cluster_of(request).refresh_workers(name))
    await asyncio.shield(running)


def _load(info: dict[str, Any]) -> str:
    load = info.get("loadavg")
    if isinstance(load, list | tuple) and load:
        return esc(" ".join(f"{float(x):.2f}" for x in load))
    return "—"


def _queues(info: dict[str, Any]) -> list[str]:
    return [q["name"] for q in info.get("active_queues") or () if isinstance(q, dict)]


def _pool_name(stats: dict[str, Any]) -> str:
    impl = str((stats.get("pool") or {}).get("implementation") or "")
    # "celery.concurrency.prefork:TaskPool" -> "prefork"
    return impl.rpartition(":")[0].rpartition(".")[2] or impl


async def workers_page(request: Request) -> Response:
    cluster = cluster_of(request)
    if request.query_params.get("refresh") or set(cluster.state.online_workers()) - set(
        cluster.worker_info
    ):
        await refresh(request)
    live = cluster.state.workers()
    names = sorted(set(live) | set(cluster.worker_info))
    prefix = request.app.state.settings.prefix
    rows = []
    for name in names:
        info = cluster.worker_info.get(name, {})
        hb = live.get(name, {})
        stats = info.get("stats") or {}
        pool = stats.get("pool") or {}
        processes = pool.get("processes")
        rows.append([
            f'<a href="{esc(prefix)}/worker/{esc(path_part(name))}">{esc(name)}</a>',
            f'<span data-worker-status="{esc(name)}">{status_badge(bool(hb.get("online")))}</span>',
            f'<span data-worker-active="{esc(name)}">{esc(hb.get("active", "—"))}</span>',
            f'<span data-worker-processed="{esc(name)}">{esc(hb.get("processed", "—"))}</span>',
            f'<span data-worker-load="{esc(name)}">{_load(hb)}</span>',
            esc(_pool_name(stats)) or "—",
            esc(pool.get("max-concurrency", "—")),
            esc(len(processes)) if isinstance(processes, list) else "—",
            esc(", ".join(_queues(info))) or "—",
            fmt_duration(stats.get("uptime")),
            fmt_time(hb.get("last_heartbeat")),
        ])
    body = (
        '<div class="title"><h1>Workers</h1>'
        f'<a class="button" href="{esc(prefix)}/workers?refresh=1">Refresh</a></div>'
        + table(
            ["Worker", "Status", "Active", "Processed", "Load", "Pool", "Concurrency",
             "Processes", "Queues", "Uptime", "Last heartbeat"],
            rows,
            cls="workers",
        )
    )
    return page(request, "Workers", body, nav="/workers", script="live.js")


def _task_list(prefix: str, items: Any, kind: str) -> str:
    rows = []
    for item in items or ():
        if not isinstance(item, dict):  # revoked is a list of ids
            rows.append([_task_link(prefix, str(item)), "", "", ""])
            continue
        req = item.get("request") if kind == "scheduled" else item
        req = req if isinstance(req, dict) else {}
        started = req.get("time_start")
        extra = fmt_time(item.get("eta") if kind == "scheduled" else started)
        rows.append([
            _task_link(prefix, str(req.get("id") or "")),
            esc(req.get("name")),
            f"<code>{esc(req.get('args'))} {esc(req.get('kwargs'))}</code>",
            extra,
        ])
    when = "ETA" if kind == "scheduled" else "Started"
    return table(["Task", "Name", "Arguments", when], rows)


def _task_link(prefix: str, task_id: str) -> str:
    return f'<a href="{esc(prefix)}/task/{esc(path_part(task_id))}"><code>{esc(task_id)}</code></a>'


def _controls(api: str, name: str, info: dict[str, Any]) -> str:
    q = esc(path_part(name))
    registered = [t for t in info.get("registered") or () if isinstance(t, str)]
    options = "".join(f"<option>{esc(t.split(' ')[0])}</option>" for t in registered)
    return f"""
<section class="controls">
<h2>Pool</h2>
<div class="row">
<form class="act" data-post="{api}/api/worker/pool/grow/{q}" data-out="out-pool"
 data-after="reload">
<label>n <input name="n" type="number" min="1" value="1" size="3"></label>
<button type="submit">Grow</button></form>
<form class="act" data-post="{api}/api/worker/pool/shrink/{q}" data-out="out-pool"
 data-after="reload"><label>n <input name="n" type="number" min="1" value="1" size="3"></label>
<button type="submit">Shrink</button></form>
<form class="act" data-post="{api}/api/worker/pool/autoscale/{q}" data-out="out-pool"
 data-after="reload">
<label>min <input name="min" type="number" min="0" value="1" size="3" required></label>
<label>max <input name="max" type="number" min="1" value="4" size="3" required></label>
<button type="submit">Autoscale</button></form>
<button class="act" data-post="{api}/api/worker/pool/restart/{q}" data-out="out-pool"
 data-confirm="Restart the pool of {esc(name)}? Running tasks are lost."
 data-after="reload">Restart pool</button>
<button class="act danger" data-post="{api}/api/worker/shutdown/{q}" data-out="out-pool"
 data-confirm="Shut down {esc(name)}? It will not come back by itself.">Shut down</button>
</div>
<output id="out-pool" class="reply"></output>
<h2>Consumers</h2>
<form class="act row" data-post="{api}/api/worker/queue/add-consumer/{q}" data-out="out-queue"
 data-after="reload"><label>queue <input name="queue" required></label>
<button type="submit">Add consumer</button></form>
<output id="out-queue" class="reply"></output>
<h2>Limits per task type</h2>
<form class="act limits row" data-out="out-limits" data-workername="{esc(name)}"
 data-api="{api}">
<label>task <select name="task">{options}</select></label>
<label>rate <input name="ratelimit" placeholder="10/m" size="6"></label>
<button type="submit" name="which" value="rate">Set rate limit</button>
<label>soft <input name="soft" type="number" min="0" step="any" size="5"></label>
<label>hard <input name="hard" type="number" min="0" step="any" size="5"></label>
<button type="submit" name="which" value="time">Set time limits</button>
</form>
<output id="out-limits" class="reply"></output>
</section>"""


def _queue_table(api: str, name: str, info: dict[str, Any]) -> str:
    rows = []
    for queue in info.get("active_queues") or ():
        if not isinstance(queue, dict):
            continue
        exchange = queue.get("exchange") or {}
        qname = str(queue.get("name") or "")
        rows.append([
            esc(qname),
            esc(exchange.get("name") if isinstance(exchange, dict) else exchange),
            esc(exchange.get("type") if isinstance(exchange, dict) else ""),
            esc(queue.get("routing_key")),
            f'<button class="act small" data-post="{api}/api/worker/queue/cancel-consumer/'
            f'{esc(path_part(name))}" data-form="queue={esc(qname)}" data-out="out-queue" '
            f'data-confirm="Stop consuming from {esc(qname)}?" data-after="reload">'
            "Cancel consumer</button>",
        ])
    return table(["Queue", "Exchange", "Type", "Routing key", ""], rows)


async def worker_page(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    if not cluster.is_worker(name):
        return not_found(request, f"Unknown worker '{name}'", "/workers")
    await refresh(request, name)
    info = cluster.worker_info.get(name, {})
    live = cluster.state.workers().get(name, {})
    prefix = request.app.state.settings.prefix
    api = esc(prefix)
    stats = info.get("stats") or {}
    pool = stats.get("pool") or {}
    listed = pool.get("processes")
    processes: list[Any] = listed if isinstance(listed, list) else []
    asked = info.get("timestamp")
    stale = "" if asked and time.time() - asked < 5 else (
        '<p class="error">The worker did not answer; showing what it said before.</p>')
    autoscaler = stats.get("autoscaler")
    pool_rows = [
        ("Implementation", esc(pool.get("implementation"))),
        ("Concurrency (max)", f'<span id="max-concurrency">{esc(pool.get("max-concurrency"))}'
                              "</span>"),
        ("Processes", f'<span id="processes" data-count="{len(processes)}">{len(processes)}'
                      f"</span> <code>{esc(' '.join(str(p) for p in processes))}</code>"),
        ("Max tasks per child", esc(pool.get("max-tasks-per-child"))),
        ("Time limits (soft, hard)", esc(pool.get("timeouts"))),
        ("Autoscaler", f"<code>{esc(pretty(autoscaler))}</code>" if autoscaler else "off"),
        ("Prefetch count", esc(stats.get("prefetch_count"))),
    ]
    general = [
        ("Status", status_badge(bool(live.get("online")))),
        ("PID", esc(stats.get("pid"))),
        ("Uptime", fmt_duration(stats.get("uptime"))),
        ("Active / processed", f"{esc(live.get('active', '—'))} / "
                               f"{esc(live.get('processed', '—'))}"),
        ("Load", _load(live)),
        ("Software", esc(" ".join(str(live.get(k) or "") for k in
                                  ("sw_ident", "sw_ver", "sw_sys")).strip())),
        ("Last heartbeat", fmt_time(live.get("last_heartbeat"))),
        ("Inspected", fmt_time(asked)),
    ]
    totals = stats.get("total") or {}
    registered = [str(t) for t in info.get("registered") or ()]
    conf = info.get("conf") or {}
    body = f"""
<div class="title"><h1>{esc(name)}</h1>{status_badge(bool(live.get("online")))}
<a class="button" href="{api}/worker/{esc(path_part(name))}">Refresh</a></div>
{stale}
<div class="grid2">
<section><h2>Worker</h2>{kv_table(general)}</section>
<section><h2>Pool</h2>{kv_table(pool_rows)}</section>
</div>
{_controls(api, name, info)}
<section><h2>Queues consumed</h2>{_queue_table(api, name, info)}</section>
<section><h2>Active</h2>{_task_list(prefix, info.get("active"), "active")}</section>
<section><h2>Reserved</h2>{_task_list(prefix, info.get("reserved"), "reserved")}</section>
<section><h2>Scheduled</h2>{_task_list(prefix, info.get("scheduled"), "scheduled")}</section>
<section><h2>Revoked</h2>{_task_list(prefix, info.get("revoked"), "revoked")}</section>
<section><h2>Registered tasks ({len(registered)})</h2>
{table(["Task", "Processed"], [[esc(t), esc(totals.get(t.split(" ")[0], 0))]
                               for t in registered])}</section>
<section><h2>Broker</h2>{kv_table((k, esc(pretty(v))) for k, v in
                                  (stats.get("broker") or {}).items())}</section>
<section><h2>Configuration</h2>{kv_table((k, f"<code>{esc(pretty(v))}</code>") for k, v in
                                         sorted(conf.items()))}</section>
"""
    return page(request, name, body, nav="/workers", script="live.js")
