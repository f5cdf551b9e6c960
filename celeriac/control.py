"""Remote control and task sending, off the event loop.

Celery's control calls block for up to their timeout, so every one runs in a thread pool (kombu
connections are per thread). Replies are awaited only until every asked worker has answered:
``limit=`` is the number of workers asked, which turns Flower's one-second inspect into a few
milliseconds on a healthy cluster.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from celery import Celery

log = logging.getLogger("celeriac.control")

T = TypeVar("T")

#: What ``/api/workers`` gathers for every worker, and with ``workername`` also the task lists.
INSPECT_ALWAYS = ("stats", "active_queues", "registered", "conf")
INSPECT_DETAIL = ("active", "reserved", "scheduled", "revoked")


class Control:
    def __init__(self, app: Celery, timeout: float, max_threads: int = 16) -> None:
        self.app = app
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="celeriac-ctl")

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
        replies = await self.run(
            self.app.control.broadcast,
            name,
            arguments=arguments or {},
            destination=[worker],
            reply=True,
            limit=1,
            timeout=self.timeout,
        )
        for reply in replies or ():
            if worker in reply:
                answer = reply[worker]
                return answer if isinstance(answer, dict) else {"ok": answer}
        return None

    async def fire(self, name: str, destination: list[str] | None, **arguments: Any) -> None:
        """A command nobody waits for (shutdown, revoke, heartbeat)."""
        await self.run(
            self.app.control.broadcast, name, arguments=arguments, destination=destination
        )

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
        inspector = self.app.control.inspect(
            destination=workers, timeout=self.timeout, limit=expected
        )
        started = time.monotonic()
        try:
            replies = getattr(inspector, method)()
        except Exception as exc:  # a lost broker must not turn into a 500
            log.warning("inspect %s failed: %s", method, exc)
            return {}
        log.debug("inspect %s: %d replies in %.3f s", method, len(replies or {}),
                  time.monotonic() - started)
        return replies or {}
