"""The cluster's worker bookkeeping against a real broker, in-process."""

from __future__ import annotations

import asyncio
from typing import Any

from celeriac.cluster import Cluster
from celeriac.settings import Settings, redact_url


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


def test_the_flags_broker_and_backend_win_over_celerys_environment_variables(
    redis_broker: Any, redis_server: Any, celery_worker: Any, monkeypatch: Any
) -> None:
    """CELERY_BROKER_URL and CELERY_RESULT_BACKEND, often left in the environment for the
    workers, are read by Celery before an app's own settings: ``--broker`` and
    ``--result-backend`` must still be the ones used."""
    celery_worker(redis_broker, hostname="flagged@%h", concurrency=1)  # before the decoys
    decoy = redis_server.new_url()  # a real, empty broker: watching it would show no worker
    monkeypatch.setenv("CELERY_BROKER_URL", decoy)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", decoy)
    cluster = Cluster(
        Settings(
            broker=redis_broker.url,
            result_backend=redis_broker.backend_url,
            db="memory",
            inspect_timeout=5000,
        )
    )
    try:
        assert cluster.broker_url == redact_url(redis_broker.url)
        with cluster.app.connection_for_read() as conn:
            assert conn.as_uri(include_password=True) == redis_broker.url
        with cluster.app.connection_for_write() as conn:
            assert conn.as_uri(include_password=True) == redis_broker.url
        assert cluster.app.backend.as_uri(include_password=True) == redis_broker.backend_url

        async def find() -> None:
            await cluster.refresh_workers()

        asyncio.run(find())  # the broadcast goes out on the flag's broker: its worker answers
        assert any(name.startswith("flagged@") for name in cluster.worker_info)
        result = cluster.app.send_task("tests.add", (2, 3))
        assert result.get(timeout=30) == 5  # sent there, and its result read from the flag's
    finally:
        cluster.control.close()
