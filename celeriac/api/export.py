"""``GET /api/celeriac/tasks/export``: the tasks of a filter as CSV or JSON lines, streamed.

The filters are those of ``/api/tasks``; ``format`` is ``csv`` (default) or ``jsonl``, and
``limit`` optionally stops after that many rows. Rows come newest first, read from the store a
page at a time (a keyset cursor on SQLite) and written as they come, so a million rows never
sit in memory and the first bytes leave at once. A malformed filter is a 400 before anything
is sent.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import get_int, get_str
from celeriac.api.tasks import LIST_KEYS, cluster_of, parse_task_query
from celeriac.store.aggregates import store_matching
from celeriac.store.base import TaskRecord

#: Columns of an export, in order: a task's fields as /api/tasks has them.
COLUMNS = ("uuid", *(k for k in LIST_KEYS if k != "uuid"))
PAGE = 1000
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return value
    return orjson.dumps(value, default=repr).decode()


def csv_lines(pages: Iterator[list[TaskRecord]], limit: int | None) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    left = limit
    for page in pages:
        rows = page[:left] if left is not None else page
        for rec in rows:
            writer.writerow([_csv_value(rec.get(c)) for c in COLUMNS])
        if left is not None:
            left -= len(rows)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        if left is not None and left <= 0:
            return
    if buf.tell():
        yield buf.getvalue()


def jsonl_lines(pages: Iterator[list[TaskRecord]], limit: int | None) -> Iterator[bytes]:
    left = limit
    for page in pages:
        rows = page[:left] if left is not None else page
        yield b"".join(
            orjson.dumps({c: rec.get(c) for c in COLUMNS}, default=repr) + b"\n" for rec in rows
        )
        if left is not None:
            left -= len(rows)
            if left <= 0:
                return


async def export_tasks(request: Request) -> Response:
    args = dict(request.query_params)
    fmt = (get_str(args, "format") or "csv").lower()
    if fmt not in FORMATS:
        raise APIError(400, f"Invalid format '{fmt}', expected csv or jsonl")
    limit = get_int(args, "limit")
    if limit is not None and limit < 0:
        raise APIError(400, "limit must be zero or more")
    q = replace(parse_task_query(args), limit=None, offset=0, sort_by=None, descending=False)
    store = cluster_of(request).store
    try:  # the search is parsed here, so a bad one is a 400 and not a broken download
        pages = await run_in_threadpool(store_matching, store, q, PAGE)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None
    body: Iterator[Any] = (
        csv_lines(pages, limit) if fmt == "csv" else jsonl_lines(pages, limit)
    )
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return StreamingResponse(
        body,  # a sync iterator: Starlette pulls each page on a worker thread
        media_type=FORMATS[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="celeriac-tasks-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


routes = [Route("/api/celeriac/tasks/export", export_tasks, methods=["GET"])]
