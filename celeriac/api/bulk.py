"""Acting on many tasks at once: re-run or revoke every task that matches a filter.

``POST /api/celeriac/tasks/rerun`` and ``POST /api/celeriac/tasks/revoke`` take the filters of
``/api/tasks`` (state, taskname, workername, received_start, received_end, search) and:

- ``dry_run`` (default **true**: nothing is sent unless ``dry_run=false`` is given), so a script
  that forgets it only gets the list of what would happen;
- ``cap`` (default and most: ``--bulk-max``, 1000 unless configured): the newest ``cap``
  matching tasks are acted on; ``more`` in the reply says whether others matched too.

The reply reports every task: ``outcome`` is ``ok`` (done, or would be in a dry run),
``skipped`` (revoking a task that already finished) or ``error`` with a ``reason`` (arguments
that cannot be rebuilt, a send that failed). A task that cannot be re-run never fails the call.

Re-run sends the task again by name (send-task, so the task need not be registered here) with
its arguments and its routing. Events carry arguments as reprs; they are rebuilt with
:func:`ast.literal_eval`, which evaluates literals only, never code. A repr that is not a
literal (an object, or one Celery cut short) is reported, not guessed at.
"""

from __future__ import annotations

import ast
import signal as signals
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import arguments, get_bool, get_int, get_str
from celeriac.api.responses import json_response
from celeriac.api.tasks import cluster_of, parse_task_query
from celeriac.cluster import Cluster
from celeriac.constants import FINAL_STATES
from celeriac.store.aggregates import store_matching
from celeriac.store.base import TaskRecord

#: Task ids per revoke broadcast: one message per chunk, whatever the number of tasks.
REVOKE_CHUNK = 500
#: Longest argument repr rebuilt; Celery cuts its reprs far shorter (1024 characters).
MAX_REPR = 1_000_000
#: Celery shortens an args or kwargs repr to about 1024 characters (``argsrepr_maxsize``),
#: cutting long strings inside their quotes: ``'xxxx...'`` still parses, as the wrong value.
#: A repr this long with ``...`` in it is taken as cut short and never re-sent.
CUT_AT = 1000


def literal(value: Any) -> tuple[bool, Any]:
    """Task args as events carry them (a repr string) back to values, if they are literals."""
    if value is None or value == "":
        return True, None
    if not isinstance(value, str):
        return True, value
    if len(value) > MAX_REPR or (len(value) >= CUT_AT and "..." in value):
        return False, None
    try:
        return True, ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def rerun_payload(rec: TaskRecord) -> dict[str, Any] | None:
    """``{"args", "kwargs"}`` for send-task, or None when the arguments cannot be rebuilt."""
    ok_a, args = literal(rec.get("args"))
    ok_k, kwargs = literal(rec.get("kwargs"))
    if not (ok_a and ok_k) or not rec.get("name"):
        return None
    if isinstance(args, tuple):
        args = list(args)
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    if not all(isinstance(k, str) for k in kwargs):
        return None
    return {"args": args, "kwargs": kwargs}


def routing(rec: TaskRecord) -> dict[str, str]:
    """Where the task went: a queue (the default exchange routes by queue name) or an
    exchange and routing key."""
    exchange, key = rec.get("exchange"), rec.get("routing_key")
    if not isinstance(key, str) or not key:
        return {}
    if not exchange:
        return {"queue": key}
    return {"exchange": str(exchange), "routing_key": key}


def _why_not(rec: TaskRecord) -> str:
    if not rec.get("name"):
        return "the task's name is not known"
    return ("its args or kwargs are not Python literals (an object's repr), or Celery cut "
            "their repr short")


def _item(rec: TaskRecord, outcome: str, **extra: Any) -> dict[str, Any]:
    return {"uuid": rec.get("uuid"), "name": rec.get("name"), "state": rec.get("state"),
            "outcome": outcome, **extra}


async def _matching(request: Request) -> tuple[int, bool, dict[str, str], list[TaskRecord]]:
    args = await arguments(request)
    q = parse_task_query(args)
    most: int = request.app.state.settings.bulk_max
    cap = get_int(args, "cap", most)
    assert cap is not None
    if not 1 <= cap <= most:
        raise APIError(400, f"cap must be between 1 and {most} (--bulk-max)")
    dry_run = get_bool(args, "dry_run", True)
    q = replace(q, limit=None, offset=0, sort_by=None, descending=False)

    def first() -> list[TaskRecord]:
        found: list[TaskRecord] = []
        for page in store_matching(cluster_of(request).store, q, min(cap + 1, 1000)):
            found.extend(page)
            if len(found) > cap:
                break
        return found[: cap + 1]

    try:
        records = await run_in_threadpool(first)
    except ValueError as exc:  # a malformed search
        raise APIError(400, str(exc)) from None
    return cap, dry_run, args, records


def _reply(action: str, dry_run: bool, cap: int, records: list[Any],
           items: list[dict[str, Any]], **extra: Any) -> Response:  # fmt: skip
    summary = {k: sum(1 for i in items if i["outcome"] == k) for k in ("ok", "skipped", "error")}
    return json_response({
        "action": action, "dry_run": dry_run, "cap": cap, "matched": len(items),
        "more": len(records) > cap, "summary": summary, **extra, "tasks": items,
    })


async def bulk_rerun(request: Request) -> Response:
    cap, dry_run, _, records = await _matching(request)
    cluster = cluster_of(request)
    chosen = records[:cap]
    plans = [(rec, rerun_payload(rec)) for rec in chosen]
    if dry_run:
        items = [
            _item(rec, "ok", **routing(rec)) if payload is not None
            else _item(rec, "error", reason=_why_not(rec))
            for rec, payload in plans
        ]
        return _reply("rerun", True, cap, records, items)
    items = await cluster.control.run(_send_all, cluster, plans)
    return _reply("rerun", False, cap, records, items)


def _send_all(
    cluster: Cluster, plans: list[tuple[TaskRecord, dict[str, Any] | None]]
) -> list[dict[str, Any]]:
    """Send every re-run on one producer (one connection for the whole batch)."""
    app = cluster.app
    items: list[dict[str, Any]] = []
    with app.producer_or_acquire() as producer:
        for rec, payload in plans:
            if payload is None:
                items.append(_item(rec, "error", reason=_why_not(rec)))
                continue
            try:
                result = app.send_task(
                    str(rec["name"]), args=payload["args"], kwargs=payload["kwargs"],
                    producer=producer, **routing(rec),
                )
            except Exception as exc:  # one bad send is reported, the rest go on
                items.append(_item(rec, "error", reason=f"send failed: {exc}"))
                continue
            items.append(_item(rec, "ok", **{"task-id": result.id}))
    return items


async def bulk_revoke(request: Request) -> Response:
    cap, dry_run, args, records = await _matching(request)
    cluster = cluster_of(request)
    terminate = get_bool(args, "terminate")
    sig = get_str(args, "signal") or "SIGTERM"
    name = sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}"
    if not sig.isdigit() and not hasattr(signals.Signals, name):
        raise APIError(400, f"Invalid signal '{sig}'")
    items: list[dict[str, Any]] = []
    ids: list[str] = []
    for rec in records[:cap]:
        if rec.get("state") in FINAL_STATES:
            items.append(_item(rec, "skipped", reason=f"already {rec.get('state')}"))
        else:
            items.append(_item(rec, "ok"))
            ids.append(str(rec["uuid"]))
    start = 0
    if not dry_run:
        try:
            for start in range(0, len(ids), REVOKE_CHUNK):
                chunk = ids[start : start + REVOKE_CHUNK]
                await cluster.control.fire(
                    "revoke", None, task_id=chunk, terminate=terminate, signal=sig
                )
        except Exception as exc:  # the broker went away: say so, per task not yet sent
            sent = set(ids[:start])
            for item in items:
                if item["outcome"] == "ok" and item["uuid"] not in sent:
                    item.update(outcome="error", reason=f"revoke not sent: {exc}")
    return _reply("revoke", dry_run, cap, records, items, terminate=terminate)


routes = [
    Route("/api/celeriac/tasks/rerun", bulk_rerun, methods=["POST"]),
    Route("/api/celeriac/tasks/revoke", bulk_revoke, methods=["POST"]),
]
