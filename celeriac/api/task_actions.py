"""Task actions: run, send, revoke, abort, and per-task-type limits on a worker."""

from __future__ import annotations

import logging
import signal as signals
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.contrib.abortable import AbortableAsyncResult
from celery.result import AsyncResult
from kombu.compression import get_encoder
from kombu.exceptions import OperationalError
from kombu.serialization import registry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from celeriac.api.errors import APIError
from celeriac.api.params import arguments, get_bool, get_float, get_str, json_object
from celeriac.api.responses import (
    json_response,
    run_waiting,
    task_result_fields,
    wait_for_result,
)
from celeriac.api.tasks import cluster_of, path_value
from celeriac.cluster import Cluster

log = logging.getLogger("celeriac.api")


async def task_arguments(request: Request) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """``args``, ``kwargs`` and the remaining (raw) apply_async options of a JSON body.

    Flower's order of checks: the body first (bad JSON, not an object, args not a list), then
    the handler looks the task up (404), then ``timeout`` and the options are parsed (400).
    """
    options = await json_object(request)
    args = options.pop("args", [])
    kwargs = options.pop("kwargs", {})
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list):
        raise APIError(400, "args must be an array")
    if not isinstance(kwargs, dict):
        raise APIError(400, "kwargs must be an object")
    return args, kwargs, options


def _normalise_options(options: dict[str, Any]) -> dict[str, Any]:
    try:
        if "countdown" in options:
            options["countdown"] = _number(options["countdown"])
        if "eta" in options:
            options["eta"] = _datetime(options["eta"])
        if "expires" in options:
            value = options["expires"]
            options["expires"] = (
                _datetime(value) if isinstance(value, str) and not _is_number(value)
                else _number(value)
            )
    except (TypeError, ValueError):
        raise APIError(400, "Invalid option") from None
    for key in ("queue", "routing_key", "exchange"):
        if key in options and not isinstance(options[key], str):
            raise APIError(400, "Invalid option")
    serializer = options.get("serializer")
    if serializer is not None and (not isinstance(serializer, str)
                                   or serializer not in registry.name_to_type):
        raise APIError(400, "Invalid option")
    if options.get("compression") is not None:
        try:
            get_encoder(options["compression"])
        except (KeyError, TypeError):
            raise APIError(400, "Invalid option") from None
    return options


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(value)
    return number


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(value)
    return datetime.fromisoformat(value)


#: What a broker or result backend that cannot be reached raises (Celery's Redis backend
#: subscribes to the result channel when a task is sent, so its errors show here too).
_UNREACHABLE = (OperationalError, OSError, RedisConnectionError, RedisTimeoutError)


async def _publish(cluster: Cluster, send: Callable[..., AsyncResult], *args: Any,
                   **options: Any) -> AsyncResult:
    """Publish a task. apply_async takes any option a client sends; the ones Celery or kombu
    cannot use (an unknown serializer, a countdown past the year 9999, a header that is not a
    mapping...) are the client's mistake, a 400. A broker (or backend) that cannot be reached
    is a 503."""
    try:
        return await cluster.control.run(send, *args, **options)
    except _UNREACHABLE as exc:
        log.warning("publishing failed: %s: %s", type(exc).__name__, exc)
        raise APIError(503, "The broker is unavailable") from None
    except Exception as exc:
        log.debug("refused options: %r", exc)
        raise APIError(400, "Invalid option") from None


def _registered(cluster: Cluster, name: str) -> Any:
    task = cluster.app.tasks.get(name)
    if task is None:
        raise APIError(404, f"Unknown task '{name}'")
    return task


def _state(result: AsyncResult) -> str:
    try:
        return str(result.state)
    except Exception:  # no result backend configured: nothing to read
        return "PENDING"


async def apply(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    args, kwargs, options = await task_arguments(request)
    task = _registered(cluster, name)
    timeout = options.pop("timeout", None)
    # Flower waits for ever without a timeout; celeriac at most --max-wait, then answers with
    # the state so far (no request holds a thread for ever).
    longest = cluster.settings.max_wait
    if timeout is not None:
        try:
            timeout = min(max(_number(timeout), 0.0), longest)
        except (TypeError, ValueError):
            raise APIError(400, "Invalid timeout") from None
    options = _normalise_options(options)
    result = await _publish(cluster, task.apply_async, args=args, kwargs=kwargs, **options)

    task_id = result.id

    def wait() -> dict[str, Any]:
        # A result of this thread's own (Celery's backends are per thread).
        mine = AsyncResult(task_id, app=cluster.app)
        try:
            done = wait_for_result(mine, timeout or longest)
        except Exception:  # the backend failed: answer with what can be read
            done = False
        if not done:  # timed out: the state so far, without a result
            return {"task-id": task_id, "state": _state(mine)}
        return task_result_fields(task_id, mine)

    return json_response(await run_waiting(wait))


async def async_apply(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    args, kwargs, options = await task_arguments(request)
    task = _registered(cluster, name)
    options = _normalise_options(options)
    result = await _publish(cluster, task.apply_async, args=args, kwargs=kwargs, **options)
    state = await cluster.control.run(_state, result)
    return json_response({"task-id": result.id, "state": state})


async def send_task(request: Request) -> Response:
    cluster = cluster_of(request)
    name = path_value(request, "name")
    args, kwargs, options = await task_arguments(request)
    options = _normalise_options(options)
    result = await _publish(cluster, cluster.app.send_task, name, args=args, kwargs=kwargs,
                            **options)
    state = await cluster.control.run(_state, result)
    return json_response({"task-id": result.id, "state": state})


async def abort(request: Request) -> Response:
    cluster = cluster_of(request)
    task_id = path_value(request, "task_id")
    result = AbortableAsyncResult(task_id, app=cluster.app)
    try:
        await cluster.control.run(result.abort)
    except NotImplementedError:
        raise APIError(503, "Abort needs a result backend (--result-backend)") from None
    return json_response({"message": f"Aborted '{task_id}'"})


async def revoke(request: Request) -> Response:
    cluster = cluster_of(request)
    task_id = path_value(request, "task_id")
    args = await arguments(request)
    terminate = get_bool(args, "terminate")
    sig = get_str(args, "signal") or "SIGTERM"
    name = sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}"
    if not sig.isdigit() and not hasattr(signals.Signals, name):
        raise APIError(400, f"Invalid signal '{sig}'")
    await cluster.control.run(
        cluster.app.control.revoke, task_id, terminate=terminate, signal=sig
    )
    return json_response({"message": f"Revoked '{task_id}'"})


def _known_task_name(cluster: Cluster, name: str) -> bool:
    if name in cluster.app.tasks:
        return True
    for info in cluster.worker_info.values():
        if name in (info.get("registered") or ()):
            return True
    return name in cluster.store.task_types()


async def time_limit(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    args = await arguments(request)
    workername = get_str(args, "workername", required=True)
    hard = get_float(args, "hard")
    soft = get_float(args, "soft")
    if not _known_task_name(cluster, name):
        raise APIError(404, f"Unknown task '{name}'")
    assert workername is not None
    if not cluster.is_worker(workername):
        raise APIError(404, f"Unknown worker '{workername}'")
    reply = await cluster.control.command(
        workername, "time_limit", {"task_name": name, "hard": hard, "soft": soft}
    )
    if reply is None or "error" in reply:
        error = "no reply from the worker" if reply is None else reply["error"]
        raise APIError(403 if reply else 504, f"Failed to set timeouts: '{error}'")
    # Flower answers with the worker's own text.
    return json_response({"message": reply.get("ok") or "time limits set successfully"})


async def rate_limit(request: Request) -> Response:
    cluster = cluster_of(request)
    name = request.path_params["name"]
    args = await arguments(request)
    workername = get_str(args, "workername", required=True)
    ratelimit = get_str(args, "ratelimit", required=True)
    if not _known_task_name(cluster, name):
        raise APIError(404, f"Unknown task '{name}'")
    assert workername is not None
    if not cluster.is_worker(workername):
        raise APIError(404, f"Unknown worker '{workername}'")
    reply = await cluster.control.command(
        workername, "rate_limit", {"task_name": name, "rate_limit": ratelimit}
    )
    if reply is None or "error" in reply:
        error = "no reply from the worker" if reply is None else reply["error"]
        raise APIError(403 if reply else 504, f"Failed to set rate limit: '{error}'")
    # Flower answers with the worker's own text ("0" is a truthy string to the worker too).
    return json_response({"message": reply.get("ok") or "new rate limit set successfully"})


routes = [
    Route("/api/task/apply/{name:path}", apply, methods=["POST"]),
    Route("/api/task/async-apply/{name:path}", async_apply, methods=["POST"]),
    Route("/api/task/send-task/{name:path}", send_task, methods=["POST"]),
    Route("/api/task/abort/{task_id:path}", abort, methods=["POST"]),
    Route("/api/task/revoke/{task_id:path}", revoke, methods=["POST"]),
    Route("/api/task/timeout/{name:path}", time_limit, methods=["POST"]),
    Route("/api/task/rate-limit/{name:path}", rate_limit, methods=["POST"]),
]
