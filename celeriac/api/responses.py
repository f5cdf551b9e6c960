"""JSON responses the way Flower shapes them, and result-backend answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import orjson
from celery.exceptions import TimeoutError as CeleryTimeoutError
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


#: How often the last fraction of a wait looks at the backend.
POLL_INTERVAL = 0.05


def wait_for_result(result: AsyncResult, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the task to finish; True if it did.

    ``AsyncResult.get`` on the Redis backend drains in one-second steps and looks at its
    timeout only between them, so ``get(timeout=0.5)`` takes a second. It is used for the whole
    seconds (it returns the moment the result is published); the rest is polled.
    """
    deadline = time.monotonic() + timeout
    whole = math.floor(timeout)
    if whole >= 1:
        with contextlib.suppress(CeleryTimeoutError):
            result.get(timeout=whole, propagate=False)
            return True
    while True:
        if result.ready():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(POLL_INTERVAL, remaining))


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


class _Slot:
    """One pool thread's mailbox."""

    __slots__ = ("job", "ready")

    def __init__(self, job: tuple[Callable[[], Any], Future[Any]]) -> None:
        self.job: tuple[Callable[[], Any], Future[Any]] | None = job
        self.ready = threading.Event()


class WaitPool:
    """Daemon threads, reused, for calls that block for long: waiting for a task's result.

    Not the control pool: a few dozen clients waiting for slow tasks would take all of its
    threads, and inspect, control commands and publishing would queue behind them. Daemon
    threads never hold up the process at exit (a wait may last hours). The most recently idle
    thread takes the next call, so a steady load keeps using the same few threads, and with
    them Celery's per-thread result backends and their connections.
    """

    def __init__(self, max_threads: int = 64) -> None:
        self._max = max_threads
        self._lock = threading.Lock()
        self._idle: list[_Slot] = []
        self._backlog: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self.threads = 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        job = (fn, future)
        with self._lock:
            if self._idle:
                slot = self._idle.pop()
                slot.job = job
                slot.ready.set()
                return future
            if self.threads >= self._max:
                self._backlog.append(job)
                return future
            self.threads += 1
        threading.Thread(target=self._work, args=(_Slot(job),), name="celeriac-wait",
                         daemon=True).start()
        return future

    def _work(self, slot: _Slot) -> None:
        while True:
            job, slot.job = slot.job, None
            if job is not None:
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
                del job, fn, future  # hold nothing of the last call while idle
            with self._lock:
                if self._backlog:
                    slot.job = self._backlog.popleft()
                    continue
                slot.ready.clear()
                self._idle.append(slot)
            slot.ready.wait()


_waits = WaitPool()


async def run_waiting(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)``, which may block for long, on the wait pool."""
    return await asyncio.wrap_future(_waits.submit(functools.partial(fn, *args)))
