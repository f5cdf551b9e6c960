"""JSON responses the way Flower shapes them, and result-backend answers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from celery.result import AsyncResult
from starlette.responses import Response

JSON_TYPE = "application/json; charset=UTF-8"

T = TypeVar("T")


def _default(value: Any) -> Any:
    # Results and replies can hold anything a worker serialised; show what cannot be JSON.
    return repr(value)


def json_response(data: Any, status: int = 200) -> Response:
    body = orjson.dumps(data, default=_default, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type=JSON_TYPE)


def safe_result(value: Any) -> Any:
    """The result as JSON if it is JSON, else its repr (exceptions, custom objects)."""
    try:
        orjson.dumps(value)
    except TypeError:
        return repr(value)
    return value


def task_result_fields(task_id: str, result: AsyncResult) -> dict[str, Any]:
    """``{"task-id", "state"[, "result"[, "traceback"]]}`` as read from the backend now."""
    state = result.state
    response: dict[str, Any] = {"task-id": task_id, "state": state}
    if state == "FAILURE":
        response["result"] = safe_result(result.result)
        response["traceback"] = result.traceback
    elif result.ready():
        response["result"] = safe_result(result.result)
    return response


async def run_waiting(fn: Callable[..., T], *args: Any) -> T:
    """Run a call that may block for long (waiting for a task's result) on a thread of its own.

    Not on the control pool: a few dozen clients waiting for slow tasks would take all of its
    threads, and inspect, control commands and publishing would queue behind them. A daemon
    thread also never holds up the process at exit.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():  # the client went away and the request was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def target() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = fn(*args)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=target, name="celeriac-wait", daemon=True).start()
    return await future
