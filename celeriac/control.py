"""Remote control and task sending, off the event loop.

Celery's control calls block for up to their timeout, so every one runs in a thread pool (kombu
connections are per thread). Replies are awaited only until every asked worker has answered,
which turns Flower's one-second inspect into a few milliseconds on a healthy cluster.

Celery's own ``limit=`` counts messages read from the reply queue, not replies to this request:
a late reply to an earlier request (RabbitMQ keeps a thread's reply queue for 10 s) uses up one
read, and the request returns a worker short while its own reply becomes the next stale one.
So the replies are counted here, by hostname, and collecting stops once every worker asked has
answered (the callback raises :class:`_Enough` out of kombu's drain loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from celery import Celery

log = logging.getLogger("celeriac.control")

T = TypeVar("T")

#: ``limit=`` that never ends the collection by itself (kombu defaults it to the number of
#: destinations); ours stops it, or the timeout.
_UNLIMITED = sys.maxsize


class _Enough(Exception):
    """Raised from the reply callback once every expected worker has answered."""


class _Replies:
    """Collects reply bodies (``{hostname: value}``) until ``expected`` workers have answered."""

    def __init__(self, expected: int | None) -> None:
        self.expected = expected
        self.by_worker: dict[str, Any] = {}

    def __call__(self, body: Any) -> None:
        if isinstance(body, dict):
            for worker, value in body.items():
                self.by_worker.setdefault(worker, value)
        if self.expected is not None and len(self.by_worker) >= self.expected:
            raise _Enough

    @property
    def limit(self) -> int | None:
        return _UNLIMITED if self.expected is not None else None


#: What ``/api/workers`` gathers for every worker, and with ``workername`` also the task lists.
INSPECT_ALWAYS = ("stats", "active_queues", "registered", "conf")
INSPECT_DETAIL = ("active", "reserved", "scheduled", "revoked")


class Control:
    def __init__(self, app: Celery, timeout: float, max_threads: int = 16) -> None:
        self.app = app
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="celeriac-ctl")
        # A broadcast holds two connections of the app's pool at once: one to collect the
        # replies on, and one under the producer it publishes with. With more threads than
        # half the pool (broker_pool_limit, 10 by default) every thread can hold one and wait
        # forever for its second. So the pool is made big enough for every thread, and, in
        # case it was created before we could, no more broadcasts run at once than it has
        # room for.
        self._slots = threading.BoundedSemaphore(_pool_room(app, max_threads))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # -- control commands -------------------------------------------------------------------
    async def command(
        self, worker: str, name: str, arguments: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Send ``name`` to one worker and return its reply dict, or None if it did not answer."""
        replies = await self.run(self._command, worker, name, arguments or {})
        if worker not in replies:
            return None
        answer = replies[worker]
        return answer if isinstance(answer, dict) else {"ok": answer}

    def _command(self, worker: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        replies = _Replies(1)
        with self._slots, contextlib.suppress(_Enough):
            self.app.control.broadcast(
                name,
                arguments=arguments,
                destination=[worker],
                reply=True,
                limit=replies.limit,
                timeout=self.timeout,
                callback=replies,
            )
        return replies.by_worker

    async def fire(self, name: str, destination: list[str] | None, **arguments: Any) -> None:
        """A command nobody waits for (shutdown, revoke, heartbeat)."""
        await self.run(self._fire, name, destination, arguments)

    def _fire(self, name: str, destination: list[str] | None, arguments: dict[str, Any]) -> None:
        with self._slots:
            self.app.control.broadcast(name, arguments=arguments, destination=destination)

    def wake_workers(self) -> None:
        """Ask every worker for a heartbeat now (called from the event thread after a connect)."""
        self.app.control.broadcast("heartbeat")

    # -- inspect ----------------------------------------------------------------------------
    async def inspect(
        self, methods: Iterable[str], workers: list[str] | None, expected: int | None
    ) -> dict[str, dict[str, Any]]:
        """Run several inspect methods concurrently; returns {worker: {method: reply}}.

        ``expected`` is how many replies to wait for; None waits out the whole timeout.
        """
        names = list(methods)
        results = await asyncio.gather(
            *(self.run(self._inspect_one, m, workers, expected) for m in names)
        )
        merged: dict[str, dict[str, Any]] = {}
        for method, replies in zip(names, results, strict=True):
            for worker, value in (replies or {}).items():
                merged.setdefault(worker, {})[method] = value
        return merged

    def _inspect_one(
        self, method: str, workers: list[str] | None, expected: int | None
    ) -> dict[str, Any]:
        replies = _Replies(expected)
        inspector = self.app.control.inspect(
            destination=workers, timeout=self.timeout, limit=replies.limit, callback=replies
        )
        started = time.monotonic()
        try:
            with self._slots:
                getattr(inspector, method)()
        except _Enough:
            pass
        except Exception as exc:  # a lost broker must not turn into a 500
            log.warning("inspect %s failed: %s", method, exc)
            return {}
        log.debug("inspect %s: %d replies in %.3f s", method, len(replies.by_worker),
                  time.monotonic() - started)
        return replies.by_worker


def _pool_room(app: Celery, threads: int) -> int:
    """How many broadcasts may run at once; grows the app's connection pool if still possible."""
    needed = 2 * threads + 2
    pool = getattr(app, "_pool", None)  # created on first use; its limit is fixed then
    if pool is None:
        limit = app.conf.broker_pool_limit
        if limit is None or limit >= needed:
            return threads
        app.conf.broker_pool_limit = needed
        return threads
    limit = getattr(pool, "limit", None)
    if not limit:
        return threads
    return max(1, min(threads, (limit - 1) // 2))
