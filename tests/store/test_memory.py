"""MemoryStore (``--db memory``): the same answers as the SQLite store, bounded in memory."""

from __future__ import annotations

import time

import pytest

from celeriac.store.base import TaskQuery
from celeriac.store.memory import MemoryStore
from celeriac.store.search import SearchError
from tests.store.test_sqlite import make


def test_search_filters_like_the_sqlite_store() -> None:
    store = MemoryStore(100)
    for i in range(40):
        store.put(make(i))
    found = store.query(TaskQuery(search="bad 11"))
    assert [r["uuid"] for r in found] == ["task-00011"]
    either = store.query(TaskQuery(search='args:"(22," OR result:105'))
    assert [r["uuid"] for r in either] == ["task-00035", "task-00022"]
    with pytest.raises(SearchError):
        store.query(TaskQuery(search='"open'))


def test_max_age_drops_old_finished_tasks_only() -> None:
    store = MemoryStore(100, max_age=60)
    now = time.time()
    store.put(make(1, state="SUCCESS", timestamp=now - 600))
    store.put(make(2, state="STARTED", timestamp=now - 600))
    store.put(make(3, state="FAILURE", timestamp=now - 10))
    assert {r["uuid"] for r in store.query(TaskQuery())} == {"task-00002", "task-00003"}
    assert store.stats()["pruned"] == 1


def test_workers_are_kept_and_max_tasks_evicts_the_oldest() -> None:
    store = MemoryStore(3)
    store.put_worker("w@h", {"freq": 2.0})
    for i in range(5):
        store.put(make(i))
    assert store.workers() == {"w@h": {"freq": 2.0}}
    assert [r["uuid"] for r in store.query(TaskQuery(sort_by="name"))] != []
    assert store.count() == 3 and store.get("task-00001") is None
    assert store.flush() and store.stats()["failing"] is False
