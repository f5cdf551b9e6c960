"""``/failures`` (failed tasks grouped), ``/types`` (per task type charts), and the dashboard's
history charts: all read from the store's aggregates (``store/aggregates.py``) and drawn as
inline SVG on the server (``web/charts.py``).
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from celeriac.api.insights import WINDOWS, group_filters, queue_series, window_of
from celeriac.api.tasks import cluster_of
from celeriac.store.aggregates import (
    TypeBucket,
    store_failure_groups,
    store_throughput,
    store_type_stats,
)
from celeriac.web.charts import fmt_scale, lines, spark, stacked_bars
from celeriac.web.markup import esc, fmt_duration, fmt_time, page

#: Task types drawn on /types, the busiest first.
TYPES_SHOWN = 30
#: Queues drawn on the dashboard's chart (one colour each), the longest first.
QUEUES_SHOWN = 8


def window_links(request: Request, current: str, path: str) -> str:
    prefix = esc(request.app.state.settings.prefix)
    links = []
    for name in WINDOWS:
        here = ' aria-current="page"' if name == current else ""
        links.append(f'<a class="button small" href="{prefix}{path}?window={name}"{here}>'
                     f"{name}</a>")
    return f'<span class="windows">{"".join(links)}</span>'


def _rate(failed: int, total: int) -> str:
    return f"{100 * failed / total:.1f} %" if total else "—"


def _times(since: float, bucket: float, count: int) -> str:
    return (f'<span class="muted small">from {fmt_time(since)} to '
            f"{fmt_time(since + bucket * count)}, one bar per {fmt_duration(bucket)}</span>")


async def history_section(request: Request) -> str:
    """The dashboard's charts over the stored history: throughput and failure rate."""
    window, since, bucket, count = window_of(request)
    found = await run_in_threadpool(store_throughput, cluster_of(request).store, since, bucket)
    by_index = {b.index: b for b in found}
    pairs = [(float(by_index[i].succeeded), float(by_index[i].failed)) if i in by_index
             else (0.0, 0.0) for i in range(count)]
    ok, bad = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    bars, top = stacked_bars(pairs, "tasks succeeded and failed per bucket")
    rates: list[list[float | None]] = [
        [100 * f / (s + f) if s + f else None] for s, f in pairs
    ]
    rate_svg, _ = lines(rates, "failure rate per bucket", ["fail"], top=100.0, height=70.0)
    return f"""
<section id="history" data-window="{esc(window)}"><h2>History
<span class="muted small">from the store</span> {window_links(request, window, "/")}</h2>
<div class="chart-wrap">{bars}</div>
<p class="legend"><span class="key ok"></span> succeeded {int(ok)}
<span class="key fail"></span> failed {int(bad)} · failure rate {_rate(int(bad), int(ok + bad))}
· top {fmt_scale(top)} tasks per {fmt_duration(bucket)} · {_times(since, bucket, count)}</p>
<div class="chart-wrap">{rate_svg}</div>
<p class="legend"><span class="key fail"></span> failure rate per bucket, 0 to 100 %
· <a href="{esc(request.app.state.settings.prefix)}/types?window={esc(window)}">per task type
→</a></p>
</section>"""


async def queue_section(request: Request) -> str:
    """The dashboard's queue lengths over time: the peak of each bucket, from the sampler."""
    found = await run_in_threadpool(queue_series, request)
    window, since, bucket = found["window"], found["since"], found["bucket"]
    series: dict[str, list[int | None]] = found["queues"]
    count = WINDOWS[window][1]
    peak = {n: max([v for v in vs if v is not None], default=-1) for n, vs in series.items()}
    shown = sorted((n for n in series if peak[n] >= 0), key=lambda n: (-peak[n], n))
    hidden = shown[QUEUES_SHOWN:]
    shown = shown[:QUEUES_SHOWN]
    rows: list[list[float | None]] = [
        [None if series[n][i] is None else float(series[n][i] or 0) for n in shown]
        for i in range(count)
    ]
    svg, top = lines(rows, "messages waiting per queue", [f"q{k}" for k in range(len(shown))])
    keys = " ".join(
        f'<span class="key q{k}"></span> <span data-queue-peak="{esc(n)}" '
        f'data-peak="{peak[n]}">{esc(n)} {peak[n]}</span>' for k, n in enumerate(shown))
    if not shown:
        keys = ('<span class="muted">No sample yet: queue lengths are read every '
                f"{found['interval']:.0f} s.</span>")
    more = f" · {len(hidden)} more queues not drawn" if hidden else ""
    error = (f' · <span class="error">last read failed: {esc(found["error"])}</span>'
             if found["error"] else "")
    return f"""
<section id="queue-history" data-window="{esc(window)}"><h2>Queue lengths
<span class="muted small">messages waiting, sampled every {found['interval']:.0f} s, kept in
memory</span></h2>
<div class="chart-wrap">{svg}</div>
<p class="legend">{keys}{more} · top {fmt_scale(top)} messages, the most seen per
{fmt_duration(bucket)}{error} · {_times(since, bucket, count).replace("one bar", "one point")}
</p></section>"""


async def failures_page(request: Request) -> Response:
    window, since, bucket, count = window_of(request, "24h")
    groups = await run_in_threadpool(
        store_failure_groups, cluster_of(request).store, since, bucket
    )
    prefix = esc(request.app.state.settings.prefix)
    rows = []
    for g in groups:
        series = [g.series.get(i, 0) for i in range(count)]
        filters = group_filters(g.name, g.exception_type, g.example)
        link = f"{prefix}/tasks?{esc(urlencode(filters))}"
        example = f'<div class="muted small cut">{esc(g.example)}</div>' if g.example else ""
        rows.append(
            f'<tr data-group="{esc(g.name)}|{esc(g.exception_type)}">'
            f"<td>{esc(g.name) or '—'}</td>"
            f"<td><code>{esc(g.exception_type) or '—'}</code>{example}</td>"
            f'<td class="num" data-count="{g.count}">{g.count}</td>'
            f"<td>{fmt_time(g.first)}</td><td>{fmt_time(g.last)}</td>"
            f'<td class="spark-cell" title="{sum(series)} in the last {esc(window)}">'
            f'{spark(series, "failures over time")}</td>'
            f'<td><a class="tasks-link" href="{link}">tasks →</a></td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="7" class="muted">No failed tasks stored.</td></tr>')
    body = f"""
<div class="title"><h1>Failures</h1>{window_links(request, window, "/failures")}</div>
<p class="muted">Failed tasks grouped by task name and exception type, the most recent first.
First and last seen cover every task stored; the bars count the last {esc(window)}
({_times(since, bucket, count)}).</p>
<div class="scroll"><table id="failures" class="failures"><thead><tr><th>Task</th>
<th>Exception</th><th>Failed</th><th>First seen</th><th>Last seen</th>
<th>Last {esc(window)}</th><th></th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></div>"""
    return page(request, "Failures", body, nav="/failures")


def _type_card(prefix: str, name: str, whole: TypeBucket, buckets: list[TypeBucket],
               count: int) -> str:  # fmt: skip
    by_index = {b.index: b for b in buckets}
    pairs = []
    rates: list[list[float | None]] = []
    runtimes: list[list[float | None]] = []
    for i in range(count):
        b = by_index.get(i)
        ok, bad = (b.succeeded, b.failed) if b else (0, 0)
        pairs.append((float(ok), float(bad)))
        rates.append([100 * bad / (ok + bad) if ok + bad else None])
        runtimes.append([b.p50, b.p90, b.p99] if b else [None, None, None])
    bars, top = stacked_bars(pairs, f"{name}: tasks per bucket", height=80.0)
    rate_svg, _ = lines(rates, f"{name}: failure rate", ["fail"], top=100.0, height=60.0)
    rt_svg, rt_top = lines(runtimes, f"{name}: runtime percentiles", ["p50", "p90", "p99"],
                           height=80.0)
    link = f"{prefix}/tasks?{esc(urlencode({'taskname': name}))}"
    total = whole.succeeded + whole.failed
    return f"""
<section class="type-card" data-type="{esc(name)}">
<h3><a href="{link}">{esc(name)}</a></h3>
<p class="small">{whole.succeeded} succeeded · {whole.failed} failed ·
failure rate {_rate(whole.failed, total)} · runtime p50 {fmt_duration(whole.p50)},
p90 {fmt_duration(whole.p90)}, p99 {fmt_duration(whole.p99)}</p>
<div class="chart-wrap">{bars}</div>
<p class="legend small">throughput · top {fmt_scale(top)} per bucket</p>
<div class="chart-wrap">{rate_svg}</div>
<p class="legend small">failure rate, 0 to 100 %</p>
<div class="chart-wrap">{rt_svg}</div>
<p class="legend small"><span class="key p50"></span> p50 <span class="key p90"></span> p90
<span class="key p99"></span> p99 runtime · top {fmt_duration(rt_top)}</p>
</section>"""


async def types_page(request: Request) -> Response:
    window, since, bucket, count = window_of(request)
    store = cluster_of(request).store

    def read() -> tuple[list[TypeBucket], list[TypeBucket]]:
        return (store_type_stats(store, since, bucket * count),
                store_type_stats(store, since, bucket))

    whole, per_bucket = await run_in_threadpool(read)
    by_type: dict[str, list[TypeBucket]] = {}
    for b in per_bucket:
        by_type.setdefault(b.name, []).append(b)
    busiest = sorted(whole, key=lambda t: (-(t.succeeded + t.failed), t.name))
    prefix = esc(request.app.state.settings.prefix)
    cards = [_type_card(prefix, t.name, t, by_type.get(t.name, []), count)
             for t in busiest[:TYPES_SHOWN]]
    more = (f'<p class="muted">{len(busiest) - TYPES_SHOWN} more task types not drawn.</p>'
            if len(busiest) > TYPES_SHOWN else "")
    empty = '<p class="muted">No task finished in this window.</p>' if not cards else ""
    body = f"""
<div class="title"><h1>Task types</h1>{window_links(request, window, "/types")}</div>
<p class="muted">Throughput, failure rate and runtime percentiles of each task type over the
last {esc(window)}, the busiest first ({_times(since, bucket, count)}).</p>
{empty}<div class="type-grid">{"".join(cards)}</div>{more}"""
    return page(request, "Task types", body, nav="/")

