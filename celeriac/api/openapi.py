"""The OpenAPI description of every endpoint, served at ``/api/openapi.json``.

Written out by hand, endpoint by endpoint, because the contract is Flower's and must not drift
with refactors; a test checks that every route is described.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac import __version__
from celeriac.api.responses import json_response
from celeriac.settings import Settings

_TEXT_ERROR = {"description": "Error", "content": {"text/plain": {"schema": {"type": "string"}}}}
_MESSAGE = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}
_TASK = {
    "type": "object",
    "properties": {
        k: {} for k in (
            "uuid", "name", "state", "args", "kwargs", "result", "exception", "traceback",
            "received", "started", "succeeded", "failed", "retried", "revoked", "sent", "eta",
            "expires", "retries", "runtime", "timestamp", "clock", "worker", "client",
            "exchange", "routing_key", "parent_id", "root_id",
        )
    },
}
_TASK_RESULT = {
    "type": "object",
    "properties": {
        "task-id": {"type": "string"},
        "state": {"type": "string"},
        "result": {},
        "traceback": {"type": ["string", "null"]},
    },
    "required": ["task-id", "state"],
}
_TASK_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "args": {"type": "array"},
                    "kwargs": {"type": "object"},
                    "countdown": {"type": "number"},
                    "eta": {"type": "string", "format": "date-time"},
                    "expires": {},
                    "queue": {"type": "string"},
                },
                "additionalProperties": True,
            }
        }
    },
}

_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_ALERT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "rule": {"type": "string"}, "kind": {"type": "string"},
        "key": {"type": "string"}, "subject": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "firing", "resolved"]},
        "since": {"type": "number"}, "fired_at": _NUM_OR_NULL, "resolved_at": _NUM_OR_NULL,
        "value": _NUM_OR_NULL, "summary": {"type": "string"},
    },
    "required": ["id", "rule", "kind", "key", "subject", "state", "since", "summary"],
}
_ALERTS = {
    "type": "object",
    "properties": {
        "enabled": {"type": "boolean"},
        "role": _STR_OR_NULL,
        "file": _STR_OR_NULL,
        "interval": _NUM_OR_NULL,
        "evaluated_at": _NUM_OR_NULL,
        "evaluations": {"type": "integer"},
        "fired": {"type": "integer"},
        "resolved": {"type": "integer"},
        "queue_error": _STR_OR_NULL,
        "queue_lengths": {"type": ["object", "null"],
                          "additionalProperties": {"type": "integer"}},
        "rules": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string"}, "kind": {"type": "string"},
                "condition": {"type": "string"}, "for": {"type": "number"},
                "webhooks": {"type": "array", "items": {"type": "string"}},
                "state": {"type": "string", "enum": ["ok", "pending", "firing"]},
                "alerts": {"type": "array", "items": _ALERT},
                "error": _STR_OR_NULL,
            },
            "required": ["name", "kind", "condition", "state", "alerts"],
        }},
        "firing": {"type": "array", "items": _ALERT},
        "recent": {"type": "array", "items": _ALERT},
        "webhooks": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "webhook": {"type": "string"}, "url": {"type": "string"},
                "format": {"type": "string", "enum": ["json", "slack"]},
                "delivered": {"type": "integer"}, "failed": {"type": "integer"},
                "dropped": {"type": "integer"}, "retries": {"type": "integer"},
                "pending": {"type": "integer"},
                "last_result": {"type": ["string", "null"], "enum": ["delivered", "failed", None]},
                "last_error": _STR_OR_NULL, "last_attempt_at": _NUM_OR_NULL,
                "last_delivered_at": _NUM_OR_NULL, "last_failed_at": _NUM_OR_NULL,
            },
            "required": ["webhook", "url", "delivered", "failed", "retries", "pending"],
        }},
        "failures": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "at": {"type": "number"}, "webhook": {"type": "string"},
                "url": {"type": "string"}, "rule": {"type": "string"},
                "alert_id": {"type": "string"}, "status": {"type": "string"},
                "attempts": {"type": "integer"}, "error": {"type": "string"},
            },
            "required": ["at", "webhook", "rule", "status", "attempts", "error"],
        }},
    },
    "required": ["enabled", "rules", "firing", "recent", "webhooks", "failures"],
}


_BULK = {
    "type": "object",
    "properties": {
        "action": {"type": "string"}, "dry_run": {"type": "boolean"},
        "cap": {"type": "integer"}, "matched": {"type": "integer"},
        "more": {"type": "boolean", "description": "more tasks matched than the cap"},
        "summary": {"type": "object"},
        "tasks": {"type": "array", "items": {"type": "object", "properties": {
            "uuid": {"type": "string"}, "name": {}, "state": {},
            "outcome": {"type": "string", "enum": ["ok", "skipped", "error"]},
            "reason": {"type": "string"}, "task-id": {"type": "string"}}}},
    },
}


def _param(name: str, kind: str = "string", where: str = "query", **extra: Any) -> dict[str, Any]:
    required = where == "path"
    return {"name": name, "in": where, "required": required, "schema": {"type": kind, **extra}}


def _op(
    summary: str,
    schema: dict[str, Any],
    params: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (400,),
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "401": _TEXT_ERROR,
            **{str(code): _TEXT_ERROR for code in errors},
        },
    }
    if body is not None:
        op["requestBody"] = body
    return op


def _worker_op(summary: str, *params: dict[str, Any]) -> dict[str, Any]:
    return {"post": _op(summary, _MESSAGE, [_param("name", where="path"), *params],
                        (400, 403, 404, 504))}


_FILTERS = [
    _param(n) for n in ("state", "taskname", "workername", "received_start", "received_end",
                        "search")
]
_BULK_PARAMS = [
    {"name": "dry_run", "in": "query", "required": False,
     "description": "true (the default) only lists what would be done",
     "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}},
    {"name": "cap", "in": "query", "required": False,
     "description": "act on the newest this many (default and most: --bulk-max, 1000)",
     "schema": {"type": "integer", "minimum": 1}},
]
_WINDOW = _param("window", enum=["15m", "1h", "24h"])
_QUEUE_SERIES = {"type": "object", "properties": {
    "window": {"type": "string"}, "since": {"type": "number"}, "bucket": {"type": "integer"},
    "interval": {"type": "number"}, "sampled_at": {"type": ["number", "null"]},
    "latest": {"type": "object", "additionalProperties": {"type": "integer"}},
    "error": _STR_OR_NULL, "dropped": {"type": "array", "items": {"type": "string"}},
    "queues": {"type": "object", "additionalProperties": {
        "type": "array", "items": {"type": ["integer", "null"]}}}}}


_TIMEOUT = {
    "name": "timeout", "in": "query", "required": False, "schema": {"type": "number"},
    "description": "Seconds to wait for the result; 0 or less does not wait, more than "
                   "--max-wait (5 minutes by default) waits --max-wait.",
}


#: Operations with a ``search`` answer a malformed one with JSON (the rest of their 400s are
#: plain text, as every API error).
_SEARCH_ERROR = {"description": "Bad argument, or a malformed search", "content": {
    "text/plain": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object", "properties": {
        "error": {"type": "string"}}, "required": ["error"]}}}}


def _common_responses(paths: dict[str, Any]) -> None:
    """What the middleware and the router may answer on any operation: 401 without
    credentials, 403 for a change by a read-only identity or from another site, 404 for a path
    no route matches, 413 for a body over 1 MiB."""
    for path, operations in paths.items():
        for method, op in operations.items():
            responses = op["responses"]
            if path != "/healthcheck":
                responses.setdefault("401", _TEXT_ERROR)
            if method not in ("get", "head", "options"):
                responses.setdefault("403", _TEXT_ERROR)
            if "{" in path:  # a parameter no route matches (one with a line break, say)
                responses.setdefault("404", _TEXT_ERROR)
            if any(p.get("name") == "search" for p in op.get("parameters", ())):
                responses["400"] = _SEARCH_ERROR
            responses.setdefault("413", _TEXT_ERROR)


def spec(prefix: str = "", *, open_api: bool = False, metrics_public: bool = False
         ) -> dict[str, Any]:
    """``open_api``: no credentials needed (``--unauthenticated-api`` and none configured)."""
    boolean = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]}
    task_id = _param("task_id", where="path")
    name = _param("name", where="path")
    paths: dict[str, Any] = {
        "/healthcheck": {"get": {"summary": "Liveness", "responses": {"200": {
            "description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/api/workers": {"get": _op(
            "List workers", {"type": "object"},
            [{"name": n, "in": "query", "required": False, "schema": boolean}
             for n in ("refresh", "status")] + [_param("workername")], (400, 404))},
        "/api/worker/shutdown/{name}": _worker_op("Shut down a worker"),
        "/api/worker/pool/restart/{name}": _worker_op("Restart a worker's pool"),
        "/api/worker/pool/grow/{name}": _worker_op(
            "Grow a worker's pool", _param("n", "integer", minimum=1, maximum=1000)),
        "/api/worker/pool/shrink/{name}": _worker_op(
            "Shrink a worker's pool", _param("n", "integer", minimum=1, maximum=1000)),
        "/api/worker/pool/autoscale/{name}": _worker_op(
            "Autoscale a worker's pool", _param("min", "integer", minimum=0),
            _param("max", "integer", minimum=1)),
        "/api/worker/queue/add-consumer/{name}": _worker_op(
            "Start consuming from a queue", _param("queue")),
        "/api/worker/queue/cancel-consumer/{name}": _worker_op(
            "Stop consuming from a queue", _param("queue")),
        "/api/queues/length": {"get": _op("Length of every active queue", {"type": "object"})},
        "/api/tasks": {"get": _op(
            "List tasks, newest first",
            {"type": "object", "additionalProperties": _TASK},
            [_param("limit", "integer", minimum=0), _param("offset", "integer", minimum=0),
             _param("sort_by", enum=["name", "-name", "received", "-received", "started",
                                     "-started", "state", "-state"]),
             _param("workername"), _param("taskname"), _param("state"),
             _param("received_start"), _param("received_end"), _param("search")])},
        "/api/task/types": {"get": _op("Task names seen", {"type": "object"})},
        "/api/task/info/{task_id}": {"get": _op("A task's details", _TASK, [task_id], (404,))},
        "/api/task/result/{task_id}": {"get": _op(
            "A task's result", _TASK_RESULT, [task_id, _TIMEOUT])},
        "/api/task/apply/{name}": {"post": _op(
            "Run a task and wait for its result", _TASK_RESULT, [name], (400, 404, 503),
            _TASK_BODY)},
        "/api/task/async-apply/{name}": {"post": _op(
            "Send a task", _TASK_RESULT, [name], (400, 404, 503), _TASK_BODY)},
        "/api/task/send-task/{name}": {"post": _op(
            "Send a task by name", _TASK_RESULT, [name], (400, 503), _TASK_BODY)},
        "/api/task/abort/{task_id}": {"post": _op("Abort a task", _MESSAGE, [task_id], (503,))},
        "/api/task/revoke/{task_id}": {"post": _op(
            "Revoke a task", _MESSAGE,
            [task_id, {"name": "terminate", "in": "query", "required": False, "schema": boolean},
             _param("signal")])},
        "/api/task/timeout/{name}": {"post": _op(
            "Set a task type's time limits on a worker", _MESSAGE,
            [name, _param("workername"), _param("soft", "number"), _param("hard", "number")],
            (400, 403, 404, 504))},
        "/api/task/rate-limit/{name}": {"post": _op(
            "Set a task type's rate limit on a worker", _MESSAGE,
            [name, _param("workername"), _param("ratelimit")], (400, 403, 404, 504))},
        "/api/celeriac/status": {"get": _op("celeriac's ingest health", {"type": "object"})},
        "/api/celeriac/tasks/rerun": {"post": _op(
            "Re-run every task matching the filters (send-task with the same arguments)",
            _BULK, [*_FILTERS, *_BULK_PARAMS])},
        "/api/celeriac/tasks/revoke": {"post": _op(
            "Revoke every unfinished task matching the filters", _BULK,
            [*_FILTERS, *_BULK_PARAMS,
             {"name": "terminate", "in": "query", "required": False, "schema": boolean},
             _param("signal")])},
        "/api/celeriac/tasks/export": {"get": {
            "summary": "The tasks matching the filters as CSV or JSON lines, streamed",
            "parameters": [*_FILTERS, _param("format", enum=["csv", "jsonl"]),
                           _param("limit", "integer", minimum=0)],
            "responses": {"200": {"description": "OK", "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}}}},
                "400": _TEXT_ERROR, "401": _TEXT_ERROR}}},
        "/api/celeriac/stats/throughput": {"get": _op(
            "Tasks succeeded and failed per time bucket", {"type": "object"}, [_WINDOW])},
        "/api/celeriac/stats/task-types": {"get": _op(
            "Per task type: counts, failure rate and runtime percentiles per time bucket",
            {"type": "object"}, [_WINDOW, _param("name")])},
        "/api/celeriac/stats/queues": {"get": _op(
            "Per queue, the most messages waiting in each time bucket (sampled every 10 s, "
            "kept in memory for 24 h)", _QUEUE_SERIES, [_WINDOW])},
        "/api/celeriac/failures": {"get": _op(
            "Failed tasks grouped by task name and exception type", {"type": "object"},
            [_WINDOW])},
        "/api/celeriac/queues/{name}/purge": {"post": _op(
            "Purge a queue: remove every message waiting in it", {
                "type": "object",
                "properties": {"queue": {"type": "string"}, "purged": {"type": "integer"},
                               "message": {"type": "string"}}},
            [name], (400, 403, 404, 503))},
        "/api/celeriac/clusters": {"get": _op(
            "Every cluster this instance watches: name, URL, broker, workers online, tasks by "
            "state, events/s (one item when it watches one)", {"type": "array"}, errors=())},
        "/api/celeriac/alerts": {"get": _op(
            "Alert rules, firing and resolved alerts, webhook deliveries", _ALERTS, errors=())},
        "/api/openapi.json": {"get": _op("This description", {"type": "object"})},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (OpenMetrics when the Accept header asks for it)",
            "responses": {"200": {"description": "OK", "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}}}}}}},
    }
    _common_responses(paths)
    paths["/healthcheck"]["get"]["security"] = []
    if metrics_public:
        paths["/metrics"]["get"]["security"] = []
    return {
        "openapi": "3.1.0",
        "info": {"title": "celeriac (Flower-compatible API)", "version": __version__},
        "servers": [{"url": prefix or "/"}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                           "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [] if open_api else [{"basic": []}, {"bearer": []}],
        "paths": paths,
    }


async def openapi(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    return json_response(spec(settings.prefix, open_api=not settings.has_credentials
                              and settings.unauthenticated_api,
                              metrics_public=settings.metrics_public))


routes = [Route("/api/openapi.json", openapi, methods=["GET"])]
