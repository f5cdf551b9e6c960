"""``/tasks`` (the history, filtered, sorted, paged, live) and ``/task/<id>`` (one task whole).

The tasks table is filled by ``tasks.js`` from ``/api/tasks`` and kept live by the stream; the
filter form is plain HTML with the current choices in the URL, so a filtered view is a bookmark.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from celeriac.api.bulk import rerun_payload, routing
from celeriac.api.tasks import cluster_of
from celeriac.cluster import Cluster
from celeriac.constants import ALL_STATES, FINAL_STATES, TASK_EVENT_STATES
from celeriac.store.base import TaskRecord
from celeriac.web.markup import (
    esc,
    fmt_duration,
    fmt_time,
    json_script,
    kv_table,
    not_found,
    page,
    path_part,
    pretty,
    state_badge,
)

LIMITS = (10, 20, 50, 100, 500)
#: Most tasks drawn in one workflow tree.
TREE_MAX = 200


def _select(name: str, label: str, choices: list[str], current: str | None) -> str:
    opts = ['<option value="">All</option>'] + [
        f'<option{" selected" if c == current else ""}>{esc(c)}</option>' for c in choices
    ]
    return f'<label>{label} <select name="{name}">{"".join(opts)}</select></label>'


async def tasks_page(request: Request) -> Response:
    cluster = cluster_of(request)
    args = request.query_params
    types = await run_in_threadpool(cluster.store.task_types)
    workers = sorted(cluster.known_workers())
    limit = args.get("limit") or "20"
    limits = "".join(
        f'<option{" selected" if str(n) == limit else ""}>{n}</option>' for n in LIMITS
    )
    form = f"""
<form id="filters" class="filters" method="get">
{_select("state", "State", list(ALL_STATES), args.get("state"))}
{_select("taskname", "Name", types, args.get("taskname"))}
{_select("workername", "Worker", workers, args.get("workername"))}
<label class="grow">Search <input type="search" name="search" value="{esc(args.get("search"))}"
 placeholder="text in name, id, args, result…"></label>
<label>Received from <input type="datetime-local" name="received_start"
 value="{esc(_local(args.get("received_start")))}"></label>
<label>to <input type="datetime-local" name="received_end"
 value="{esc(_local(args.get("received_end")))}"></label>
<label>Rows <select name="limit">{limits}</select></label>
<input type="hidden" name="sort_by" value="{esc(args.get("sort_by"))}">
<input type="hidden" name="offset" value="{esc(args.get("offset"))}">
<button type="submit">Apply</button>
</form>"""
    columns = [("name", "Name"), ("uuid", "UUID"), ("state", "State"), ("args", "Args"),
               ("kwargs", "Kwargs"), ("result", "Result"), ("received", "Received"),
               ("started", "Started"), ("runtime", "Runtime"), ("worker", "Worker")]
    heads = "".join(f'<th data-col="{c}">{label}</th>' for c, label in columns)
    picks = "".join(
        f'<label><input type="checkbox" name="col" value="{c}" checked> {label}</label>'
        for c, label in columns
    )
    api = esc(request.app.state.settings.prefix)
    bulk_max = int(request.app.state.settings.bulk_max)
    body = f"""
<div class="title"><h1>Tasks</h1><span id="task-status" class="muted"></span>
<details class="columns"><summary>Columns</summary><div id="columns">{picks}</div></details>
</div>
{form}
<div class="bulk-bar">
<a id="export-csv" class="button" href="{api}/api/celeriac/tasks/export?format=csv"
 download>Export CSV</a>
<a id="export-jsonl" class="button" href="{api}/api/celeriac/tasks/export?format=jsonl"
 download>Export JSON lines</a>
<span class="sep"></span>
<button id="bulk-rerun" type="button" data-action="rerun">Re-run all matching…</button>
<button id="bulk-revoke" type="button" data-action="revoke" class="danger">Revoke all
matching…</button>
<label class="small"><input type="checkbox" id="bulk-terminate"> and terminate running</label>
<label class="small">at most <input type="number" id="bulk-cap" value="{bulk_max}" min="1"
 max="{bulk_max}"></label>
</div>
<section id="bulk" class="controls" hidden>
<p id="bulk-summary"></p>
<div class="row"><button id="bulk-confirm" type="button" class="danger" hidden></button>
<button id="bulk-close" type="button">Close</button></div>
<div class="scroll"><table id="bulk-tasks" class="tasks"><thead><tr><th>Task</th><th>UUID</th>
<th>State</th><th>Outcome</th><th>Detail</th></tr></thead><tbody></tbody></table></div>
</section>
<div class="scroll"><table id="tasks" class="tasks"><thead><tr>{heads}</tr></thead>
<tbody><tr><td colspan="10" class="muted">loading…</td></tr></tbody></table></div>
<nav class="pager"><button id="prev" type="button">← Newer</button>
<span id="range" class="muted"></span>
<button id="next" type="button">Older →</button></nav>
"""
    return page(request, "Tasks", body, nav="/tasks", script="tasks.js")


def _local(value: str | None) -> str:
    """The API's ``YYYY-MM-DD HH:MM`` as a datetime-local input's value."""
    return (value or "").replace(" ", "T")


_ENDS = ("succeeded", "failed", "revoked", "rejected")


def _delta(seconds: float) -> str:
    return fmt_duration(seconds) if seconds >= 0 else "0 (clocks differ)"


def timeline(rec: TaskRecord) -> str:
    # In time order, except that "sent" opens and the end closes: they come from different
    # machines' clocks (the client's, the worker's), which may disagree by a little.
    events = sorted(
        ((rec[f], kind.removeprefix("task-")) for kind, (state, f) in TASK_EVENT_STATES.items()
         if isinstance(rec.get(f), int | float)),
        key=lambda e: (0 if e[1] == "sent" else 2 if e[1] in _ENDS else 1, e[0]),
    )
    if not events:
        return '<p class="muted">No events with a time.</p>'
    origin = min(ts for ts, _ in events)
    items, prev = [], events[0][0]
    for i, (ts, what) in enumerate(events):
        after = "" if i == 0 else (
            f" <span class=muted>+{_delta(ts - prev)} (at {fmt_duration(ts - origin)})</span>")
        items.append(f'<li class="ev ev-{esc(what)}"><span class="ev-name">{esc(what)}</span> '
                     f"{fmt_time(ts)}{after}</li>")
        prev = ts
    summary = []
    # Waiting is measured on one clock where possible: the worker's received -> started.
    queued_from = rec.get("received") or rec.get("sent")
    if isinstance(queued_from, int | float) and isinstance(rec.get("started"), int | float):
        summary.append(f"waited {_delta(rec['started'] - queued_from)}")
    if isinstance(rec.get("runtime"), int | float):
        summary.append(f"ran {fmt_duration(rec['runtime'])}")
    if len(events) > 1:
        summary.append(f"{fmt_duration(max(ts for ts, _ in events) - origin)} from first to last"
                       " event")
    line = f'<p class="muted small">{", ".join(summary)}</p>' if summary else ""
    return f'<ol class="timeline">{"".join(items)}</ol>{line}'


def _link(prefix: str, task_id: Any, label: str | None = None) -> str:
    if not task_id:
        return '<span class="muted">—</span>'
    text = esc(label or task_id)
    return f'<a href="{esc(prefix)}/task/{esc(path_part(str(task_id)))}"><code>{text}</code></a>'


def workflow(cluster: Cluster, prefix: str, rec: TaskRecord) -> str:
    """The tree from the root task down, this task highlighted; capped at TREE_MAX nodes."""
    root_id = rec.get("root_id") or rec.get("uuid")
    budget = [TREE_MAX]

    def node(task_id: str, depth: int) -> str:
        budget[0] -= 1
        r = rec if task_id == rec["uuid"] else cluster.state.task(task_id)
        me = ' class="me"' if task_id == rec["uuid"] else ""
        label = f"{(r or {}).get('name') or '?'} {task_id[:8]}"
        head = f"{_link(prefix, task_id, label)} {state_badge((r or {}).get('state'))}"
        kids = (r or {}).get("children") or []
        if not kids or depth > 20:
            return f"<li{me}>{head}</li>"
        parts = []
        for kid in kids:
            if budget[0] <= 0:
                parts.append(f'<li class="muted">… {len(kids)} children in all</li>')
                break
            parts.append(node(kid, depth + 1))
        return f"<li{me}>{head}<ul>{''.join(parts)}</ul></li>"

    if root_id == rec["uuid"] and not rec.get("children"):
        return '<p class="muted">Not part of a workflow.</p>'
    return f'<ul class="tree">{node(str(root_id), 0)}</ul>'


def _block(title: str, value: Any, cls: str = "") -> str:
    if value is None or value == "":
        return ""
    return f'<h3>{esc(title)}</h3><pre class="{cls}">{esc(pretty(value))}</pre>'


async def task_page(request: Request) -> Response:
    cluster = cluster_of(request)
    task_id = request.path_params["task_id"]
    rec = await run_in_threadpool(cluster.state.task, task_id)
    if rec is None:
        return not_found(request, f"Unknown task '{task_id}'", "/tasks")
    prefix = request.app.state.settings.prefix
    tree = await run_in_threadpool(workflow, cluster, prefix, rec)
    api = esc(prefix)
    q = esc(path_part(task_id))
    fields = [
        ("Name", esc(rec.get("name"))),
        ("UUID", f"<code>{esc(task_id)}</code>"),
        ("State", state_badge(rec.get("state"))),
        ("Worker", f'<a href="{api}/worker/{esc(path_part(rec["worker"]))}">{esc(rec["worker"])}'
                   "</a>" if rec.get("worker") else "—"),
        ("Client", esc(rec.get("client")) or "—"),
        ("Runtime", fmt_duration(rec.get("runtime"))),
        ("Retries", esc(rec.get("retries"))),
        ("ETA", esc(rec.get("eta")) or "—"),
        ("Expires", esc(rec.get("expires")) or "—"),
        ("Exchange / routing key", f"{esc(rec.get('exchange')) or '—'} / "
                                   f"{esc(rec.get('routing_key')) or '—'}"),
        ("Parent", _link(prefix, rec.get("parent_id"))),
        ("Root", _link(prefix, rec.get("root_id"))),
        ("Children", " ".join(_link(prefix, c) for c in rec.get("children") or ()) or "—"),
        ("Lamport clock", esc(rec.get("clock"))),
        ("Last event", fmt_time(rec.get("timestamp"))),
    ]
    payload = rerun_payload(rec)
    if payload is not None:
        payload.update(routing(rec))
    final = rec.get("state") in FINAL_STATES
    rerun = (
        f'<button class="act" data-post="{api}/api/task/send-task/{esc(path_part(rec["name"]))}"'
        f' data-json="#rerun-args" data-out="out-task" data-after="goto-task"'
        f' data-confirm="Send {esc(rec["name"])} again with the same arguments?">Re-run</button>'
        if payload is not None
        else '<button disabled title="arguments are not Python literals">Re-run</button>'
    )
    actions = f"""
<section class="controls"><div class="row">
<button class="act" data-post="{api}/api/task/revoke/{q}" data-out="out-task"
 data-confirm="Revoke this task? A worker will not start it."{" disabled" if final else ""}>Revoke
</button>
<button class="act danger" data-post="{api}/api/task/revoke/{q}?terminate=true"
 data-out="out-task" data-confirm="Terminate this task? Its process gets SIGTERM."
 {" disabled" if final else ""}>Terminate</button>
{rerun}
</div><output id="out-task" class="reply"></output>
{json_script("rerun-args", payload) if payload is not None else ""}
</section>"""
    body = f"""
<div class="title" data-task="{esc(task_id)}" data-final="{int(final)}"
 data-state="{esc(rec.get("state"))}" data-ts="{esc(rec.get("timestamp"))}">
<h1>{esc(rec.get("name") or "Task")}</h1>
{state_badge(rec.get("state"))}</div>
{actions}
<div class="grid2">
<section><h2>Fields</h2>{kv_table(fields)}</section>
<section><h2>Timeline</h2>{timeline(rec)}<h2>Workflow</h2>{tree}</section>
</div>
<section><h2>Arguments and outcome</h2>
{_block("args", rec.get("args"))}{_block("kwargs", rec.get("kwargs"))}
{_block("result", rec.get("result"))}{_block("exception", rec.get("exception"), "error")}
{_block("traceback", rec.get("traceback"), "traceback")}
</section>"""
    return page(request, f"Task {task_id[:8]}", body, nav="/tasks", script="live.js")

