"""JSON responses the way Flower shapes them, and result-backend answers."""

from __future__ import annotations

from typing import Any

import orjson
from celery.result import AsyncResult
from starlette.responses import Response

JSON_TYPE = "application/json; charset=UTF-8"


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
