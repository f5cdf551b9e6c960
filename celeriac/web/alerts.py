"""``/alerts``: the rules, what fires now, what resolved lately, and how webhooks fare.

Everything comes from the engine's snapshot, the same one ``/api/celeriac/alerts`` serves.
Webhook URLs appear only as scheme, host and port (they often carry a token).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from celeriac.alerts import disabled_snapshot
from celeriac.alerts.rules import fmt_seconds
from celeriac.api.alerts import engine_of
from celeriac.web.markup import esc, fmt_time, page, table


def _badge(word: str | None) -> str:
    if not word:
        return '<span class="muted">—</span>'
    return f'<span class="badge alert-{esc(word)}">{esc(word)}</span>'


def _alert_rows(alerts: list[dict[str, Any]], resolved: bool = False) -> list[list[str]]:
    rows = []
    for a in alerts:
        row = [esc(a["rule"]), esc(a["subject"]), esc(a["summary"]), fmt_time(a["fired_at"])]
        row.append(fmt_time(a["resolved_at"]) if resolved else fmt_time(a["since"]))
        rows.append(row)
    return rows


async def alerts_page(request: Request) -> Response:
    engine = engine_of(request)
    snap = engine.snapshot() if engine is not None else disabled_snapshot()
    if not snap["enabled"]:
        body = """
<h1>Alerts</h1>
<section id="alerts"><p>No alert rules: start celeriac with <code>--alerts FILE</code> (or
<code>CELERIAC_ALERTS</code>), a TOML file of rules and webhooks. The README shows the format
and <code>deploy/alerts.example.toml</code> is a complete example.</p></section>
"""
        return page(request, "Alerts", body, nav="/alerts")
    rules = [
        [esc(r["name"]), esc(r["kind"]), esc(r["condition"]), _badge(r["state"]),
         esc(", ".join(r["webhooks"])),
         f'<span class="error">{esc(r["error"])}</span>' if r["error"] else ""]
        for r in snap["rules"]
    ]
    hooks = [
        [esc(w["webhook"]), f"<code>{esc(w['url'])}</code>", esc(w["format"]),
         esc(w["delivered"]), esc(w["failed"]), esc(w["retries"]), esc(w["pending"]),
         _badge(w["last_result"]), esc(w["last_error"] or "")]
        for w in snap["webhooks"]
    ]
    failures = [
        [fmt_time(f["at"]), esc(f["webhook"]), esc(f["rule"]), esc(f["status"]),
         esc(f["attempts"]), f'<span class="error">{esc(f["error"])}</span>']
        for f in snap["failures"]
    ]
    failed = sum(w["failed"] + w["dropped"] for w in snap["webhooks"])
    queue_note = (f'<p class="error">Queue lengths unavailable: {esc(snap["queue_error"])}</p>'
                  if snap["queue_error"] else "")
    if snap["role"] == "follower":
        queue_note += ("<p>This instance is a follower: the leader (the instance that reads "
                       "the events) evaluates the rules and sends the notifications.</p>")
    body = f"""
<h1>Alerts</h1>
<section id="alerts">
<p class="muted">Rules from <code>{esc(snap["file"])}</code>, evaluated every
{esc(fmt_seconds(snap["interval"]))}; last evaluated {fmt_time(snap["evaluated_at"])}.
{esc(snap["fired"])} fired, {esc(snap["resolved"])} resolved since start.</p>
{queue_note}
<section class="cards">
<div class="card"><div class="num" id="n-firing">{len(snap["firing"])}</div>
<div class="label">firing</div></div>
<div class="card"><div class="num" id="n-delivery-failures">{failed}</div>
<div class="label">deliveries failed</div></div>
</section>
<section><h2>Firing</h2>
{table(["Rule", "Subject", "Summary", "Fired", "Since"], _alert_rows(snap["firing"]),
       cls="alerts-firing")}</section>
<section><h2>Rules</h2>
{table(["Rule", "Kind", "Condition", "State", "Webhooks", ""], rules, cls="alert-rules")}
</section>
<section><h2>Webhooks</h2>
{table(["Webhook", "URL", "Format", "Delivered", "Failed", "Retries", "Pending",
        "Last result", "Last error"], hooks, cls="webhooks")}</section>
<section><h2>Delivery failures</h2>
{table(["At", "Webhook", "Rule", "Notification", "Attempts", "Error"], failures,
       cls="delivery-failures")}</section>
<section><h2>Recently resolved</h2>
{table(["Rule", "Subject", "Summary", "Fired", "Resolved"],
       _alert_rows(snap["recent"], resolved=True), cls="alerts-resolved")}</section>
</section>
"""
    return page(request, "Alerts", body, nav="/alerts", script="alerts.js")
