"""The cluster's worker bookkeeping against a real broker, in-process."""

from __future__ import annotations

import asyncio
from typing import Any

from celeriac.cluster import Cluster
from celeriac.settings import Settings


def test_with_no_worker_known_a_plain_listing_searches_once_then_answers_from_memory(
    redis_broker: Any,
) -> None:
    """Flower answers ``/api/workers`` from what it knows; with nobody there, asking again on
    every call would make each one wait out the whole inspect timeout."""
    cluster = Cluster(Settings(broker=redis_broker.url, db="memory", inspect_timeout=200))
    asked: list[list[str] | None] = []
    real = cluster.control.inspect

    async def counting(methods: Any, workers: list[str] | None, expected: int | None) -> Any:
        asked.append(workers)
        return await real(methods, workers, expected)

    cluster.control.inspect = counting  # type: ignore[method-assign]
    try:

        async def three_listings() -> None:
            for _ in range(3):
                await cluster.fill_workers()

        asyncio.run(three_listings())
        assert asked == [None]  # one broadcast to find anyone, then nothing until the retry
        assert cluster.worker_info == {}
        asyncio.run(cluster.refresh_workers())  # ?refresh=true always asks
        assert asked == [None, None]
    finally:
        cluster.control.close()
