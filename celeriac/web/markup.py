"""HTML building blocks shared by every page: escaping, value formatting and the layout.

Pages are plain Python strings. Every value that came from a worker or a task (names, args,
results, tracebacks) goes through :func:`esc`; nothing else in the web package writes
untrusted text into markup. Scripts and styles come from ``static/`` only, and the
Content-Security-Policy header below makes the browser refuse anything else.
"""

from __future__ import annotations

import html
import pprint
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse

from celeriac import __version__

#: Top navigation: (path, label).
NAV = (("/", "Dashboard"), ("/workers", "Workers"), ("/tasks", "Tasks"),
       ("/failures", "Failures"), ("/broker", "Broker"),
       ("/alerts", "Alerts"))

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

FAVICON = (
    "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'%3E"
    "%3Ccircle cx='8' cy='9' r='6' fill='%23b7a57a'/%3E%3Cpath d='M8 3 L6 0 M8 3 L10 0' "
    "stroke='%234c8c3c' stroke-width='1.5'/%3E%3C/svg%3E"
)


def esc(value: Any) -> str:
    """Text for HTML content or a double-quoted attribute; None is empty."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def base(request: Request) -> str:
    """The URL prefix every link and API call starts with (``""`` or ``/prefix``)."""
    prefix: str = request.app.state.settings.prefix
    return prefix


def root(request: Request) -> str:
    """The prefix of what exists once for all clusters (sign-in, sign-out)."""
    return str(getattr(request.app.state, "root_prefix", base(request)))


def switcher(request: Request, nav: str) -> str:
    """With several clusters, links to the same page of each; nothing with one."""
    clusters = getattr(request.app.state, "clusters", None)
    if clusters is None or len(clusters) < 2:
        return ""
    current = getattr(request.app.state, "cluster_name", None)
    items = "".join(
        f'<li><a href="{esc(m.base + nav)}" data-cluster="{esc(m.name)}"'
        f'{" aria-current=true" if m.name == current else ""}>{esc(m.name)}'
        f'{" <span class=muted>(default)</span>" if m.default else ""}</a></li>'
        for m in clusters
    )
    return (f'<details class="switcher" id="cluster-switcher"><summary title="cluster">'
            f'<span class="muted">cluster</span> <b>{esc(current)}</b></summary>'
            f"<ul>{items}</ul></details>")


def cluster_label(request: Request) -> str:
    """`` · NAME`` for a tab's title when several clusters are watched."""
    clusters = getattr(request.app.state, "clusters", None)
    if clusters is None or len(clusters) < 2:
        return ""
    return f" · {getattr(request.app.state, 'cluster_name', '')}"


def path_part(value: str) -> str:
    """A worker name or task id as one URL path segment (``@`` stays readable)."""
    return quote(value, safe="@:")


def fmt_time(ts: Any) -> str:
    """A ``<time>`` the browser rewrites to local time; UTC text until then."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return '<span class="muted">—</span>'
    utc = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
    millis = f"{ts % 1:.3f}"[1:]
    return f'<time data-ts="{ts}">{utc}{millis} UTC</time>'


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "—"
    s = float(seconds)
    if s < 0.001:
        return f"{s * 1_000_000:.0f} µs"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def pretty(value: Any) -> str:
    """A readable rendering of a reply or result: JSON when it is, else Python's repr."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return pprint.pformat(value, width=100)


def state_badge(state: Any) -> str:
    s = esc(state or "UNKNOWN")
    return f'<span class="badge state-{s}">{s}</span>'


def status_badge(online: bool) -> str:
    word = "online" if online else "offline"
    return f'<span class="badge {word}">{word}</span>'


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table from cells that are already markup."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = '<tr><td class="muted" colspan="99">none</td></tr>'
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def kv_table(pairs: Iterable[tuple[str, str]]) -> str:
    """Two columns: a plain label and a value that is already markup."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>'


def json_script(element_id: str, data: Any) -> str:
    """Data for the page's script, inert to the HTML parser (``<`` never appears raw)."""
    body = orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    body = body.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{body}</script>'


def page(
    request: Request,
    title: str,
    body: str,
    *,
    nav: str,
    script: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """The whole document around ``body``: head, navigation, live indicator, scripts."""
    prefix = base(request)
    v = quote(__version__)
    links = "".join(
        f'<a href="{esc(prefix + path)}"{" aria-current=page" if path == nav else ""}>'
        f"{label}</a>"
        for path, label in NAV
    )
    scripts = f'<script src="{esc(prefix)}/static/app.js?v={v}" defer></script>'
    if script:
        scripts += f'<script src="{esc(prefix)}/static/{esc(script)}?v={v}" defer></script>'
    document = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="celeriac-base" content="{esc(prefix)}">
<title>{esc(title)}{esc(cluster_label(request))} · celeriac</title>
<link rel="icon" href="{FAVICON}">
<link rel="stylesheet" href="{esc(prefix)}/static/celeriac.css?v={v}">
{scripts}
</head>
<body>
<header class="top">
<a class="brand" href="{esc(prefix)}/">celeriac</a>
{switcher(request, nav)}
<nav>{links}</nav>
<span id="live" class="live" title="not live">●</span>
{signed_in(request)}
</header>
<main id="main">
{body}
</main>
<footer>celeriac {esc(__version__)}</footer>
</body>
</html>
"""
    return HTMLResponse(
        document,
        status_code=status_code,
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
    )


def signed_in(request: Request) -> str:
    """Who is signed in with OpenID Connect, and the way out; nothing for other identities."""
    identity = request.scope.get("celeriac.identity")
    if identity is None or getattr(identity, "kind", None) != "oidc":
        return ""
    role = " (read-only)" if identity.read_only else ""
    return (f'<span class="user">{esc(identity.name)}{role} · '
            f'<a href="{esc(root(request))}/logout">Sign out</a></span>')


def not_found(request: Request, what: str, nav: str) -> HTMLResponse:
    body = f'<h1>Not found</h1><p class="error">{esc(what)}</p>'
    return page(request, "Not found", body, nav=nav, status_code=404)
