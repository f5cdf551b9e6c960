"""The Celery app of the test suite: ``celery -A tests.apps.proj worker`` runs it.

Broker and result backend come from ``CELERIAC_TEST_BROKER`` / ``CELERIAC_TEST_BACKEND``, which
the fixtures set for every worker and monitor they start. The test process builds its own app
per broker with :func:`create_app` (see ``BrokerInfo.app``) so the tasks it sends carry the same
names and options as the workers'.

Tasks (all named ``tests.<name>``): ``add(x, y)``, ``mul(x, y)``, ``tsum(values)`` (a chord or
group reducer), ``echo(v)``, ``sleep(seconds)``, ``fail(msg)`` (raises :class:`TaskError`),
``retry(times)`` (retries ``times`` times, then returns how often it retried) and
``abortable(seconds, keep_aborted=False)`` (an AbortableTask that polls ``is_aborted()``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task
from celery.contrib.abortable import AbortableTask
from celery.exceptions import Ignore

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


class TaskError(Exception):
    """What ``tests.fail`` raises: a custom exception, as real projects have."""


def create_app(
    broker: str | None = None, backend: str | None = None, set_as_current: bool = False
) -> Celery:
    """A fresh app with every test task registered on it.

    Not made the current app: in the test process there is one app per broker, and a stray
    ``AsyncResult(id)`` without ``app=`` should not reach for a default broker. (A worker makes
    its app current itself.)
    """
    app = Celery(
        "tests",
        broker=broker or os.environ.get("CELERIAC_TEST_BROKER", DEFAULT_BROKER),
        backend=backend or os.environ.get("CELERIAC_TEST_BACKEND") or None,
        set_as_current=set_as_current,
    )
    app.conf.update(
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        result_expires=3600,
    )
    _register_tasks(app)
    return app


def _register_tasks(app: Celery) -> None:
    @app.task(shared=False, name="tests.add")
    def add(x: Any, y: Any) -> Any:
        return x + y

    @app.task(shared=False, name="tests.mul")
    def mul(x: Any, y: Any) -> Any:
        return x * y

    @app.task(shared=False, name="tests.tsum")
    def tsum(values: list[Any]) -> Any:
        return sum(values)

    @app.task(shared=False, name="tests.echo")
    def echo(v: Any) -> Any:
        return v

    @app.task(shared=False, name="tests.sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(shared=False, name="tests.fail")
    def fail(msg: str = "boom") -> None:
        raise TaskError(msg)

    @app.task(shared=False, bind=True, name="tests.retry", max_retries=None)
    def retry(self: Task, times: int, countdown: float = 0.1) -> int:
        if self.request.retries < times:
            raise self.retry(countdown=countdown)
        return int(self.request.retries)

    @app.task(shared=False, bind=True, base=AbortableTask, name="tests.abortable")
    def abortable(
        self: AbortableTask, seconds: float = 30.0, interval: float = 0.1,
        keep_aborted: bool = False,
    ) -> str:
        """Returns "aborted" once aborted: the worker then stores SUCCESS over ABORTED. With
        ``keep_aborted`` it raises Ignore instead, so ABORTED stays (and no final event is sent).
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.is_aborted():
                if keep_aborted:
                    raise Ignore()
                return "aborted"
            time.sleep(interval)
        return "finished"


class TaskNamespace:
    """``TaskNamespace(app).add`` is ``app.tasks["tests.add"]``."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Task:
        try:
            return self._app.tasks[f"tests.{name}"]
        except KeyError:
            raise AttributeError(f"no task tests.{name}") from None


#: The app ``celery -A tests.apps.proj`` loads (broker and backend from the environment). Tests
#: use ``BrokerInfo.app`` instead, which is bound to their module's broker.
app = create_app()
tasks = TaskNamespace(app)
