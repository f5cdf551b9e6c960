"""The small pure parts of the UI: escaping, inline data, re-run arguments, the stream's merge."""

from __future__ import annotations

import json
import re

from celery.utils.saferepr import saferepr

from celeriac.api.bulk import rerun_payload
from celeriac.web.hub import Tick, row
from celeriac.web.markup import esc, fmt_duration, fmt_time, json_script
from celeriac.web.stream import delta


def test_esc_covers_text_and_attributes() -> None:
    assert esc('<a href="x">&\'') == "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
    assert esc(None) == ""
    assert esc(3) == "3"


def test_json_script_cannot_end_its_element_early() -> None:
    data = {"args": "</script><script>alert(1)</script>", "amp": "a&b"}
    html = json_script("x", data)
    inner = re.fullmatch(r'<script type="application/json" id="x">(.*)</script>', html)
    assert inner is not None
    assert "<" not in inner.group(1) and ">" not in inner.group(1)
    assert json.loads(inner.group(1)) == data


def test_rerun_payload_rebuilds_literal_arguments() -> None:
    rec = {"name": "t", "args": "(1, 'a', [2.5, None])", "kwargs": "{'k': {'n': True}}"}
    assert rerun_payload(rec) == {"args": [1, "a", [2.5, None]], "kwargs": {"k": {"n": True}}}
    assert rerun_payload({"name": "t", "args": None, "kwargs": None}) == {"args": [], "kwargs": {}}
    # A custom object's repr or a truncated argsrepr cannot be sent again as it was.
    assert rerun_payload({"name": "t", "args": "(<Thing 1>,)", "kwargs": "{}"}) is None
    assert rerun_payload({"name": "t", "args": "(1, 2, 3, ...", "kwargs": "{}"}) is None
    assert rerun_payload({"name": None, "args": "()", "kwargs": "{}"}) is None
    # Celery cuts a long string inside its quotes: it parses, but is not the value sent.
    cut = saferepr((["m", "x" * 5000],), 1024)
    assert rerun_payload({"name": "t", "args": cut, "kwargs": "{}"}) is None
    whole = saferepr((["m", "x" * 500],), 1024)
    assert rerun_payload({"name": "t", "args": whole, "kwargs": "{}"}) == {
        "args": [["m", "x" * 500]], "kwargs": {}}


def test_formatting() -> None:
    assert fmt_duration(0.0000123) == "12 µs"
    assert fmt_duration(0.25) == "250.0 ms"
    assert fmt_duration(3) == "3.00 s"
    assert fmt_duration(None) == "—"
    assert 'data-ts="0.5"' in fmt_time(0.5)
    assert "—" in fmt_time(None)


def test_rows_are_cut_for_the_table() -> None:
    r = row({"uuid": "u", "args": "x" * 1000, "result": {"a": object()}})
    assert len(r["args"]) == 201 and r["args"].endswith("…")
    assert isinstance(r["result"], str)


class FakeHub:
    def __init__(self, ticks: list[Tick]) -> None:
        self.history = ticks
        self.version = ticks[-1].version if ticks else 0

        class Snap:
            workers: dict = {}
            counts = None
            worker_counts = None
            total = 0

        self.snapshot = Snap()


def tick(v: int, tasks: dict[str, str]) -> Tick:
    return Tick(v, float(v), {u: {"uuid": u, "state": s} for u, s in tasks.items()}, False,
                (float(v), v, 0, 0))


def test_a_slow_reader_gets_every_tick_it_missed_merged() -> None:
    hub = FakeHub([tick(3, {"a": "STARTED"}), tick(4, {"b": "RECEIVED"}),
                   tick(5, {"a": "SUCCESS"})])
    message = delta(hub, 2)  # type: ignore[arg-type]
    assert not message["reset"]
    assert {t["uuid"]: t["state"] for t in message["tasks"]} == {"a": "SUCCESS", "b": "RECEIVED"}
    assert len(message["samples"]) == 3
    # One that fell further behind than the history is told to reload.
    assert delta(hub, 1)["reset"] is True  # type: ignore[arg-type]


def test_timeline_keeps_sent_first_and_the_end_last_whatever_the_clocks_say() -> None:
    from celeriac.web.tasks import timeline

    html = timeline({"sent": 10.5, "received": 10.0, "started": 10.1, "failed": 10.2,
                     "runtime": None})
    names = re.findall(r'class="ev-name">(\w+)<', html)
    assert names == ["sent", "received", "started", "failed"]
    assert "clocks differ" in html and "-" not in re.sub(r"<[^>]+>|\d{4}-\d\d-\d\d", "", html)


def test_under_a_cluster_prefix_sign_out_is_the_roots() -> None:
    from types import SimpleNamespace

    from starlette.requests import Request

    from celeriac.auth import Identity
    from celeriac.web.markup import signed_in

    state = SimpleNamespace(settings=SimpleNamespace(prefix="/m/clusters/eu"), root_prefix="/m")
    request = Request({"type": "http", "app": SimpleNamespace(state=state),
                       "celeriac.identity": Identity("a@example.com", "oidc")})
    assert 'href="/m/logout"' in signed_in(request)
