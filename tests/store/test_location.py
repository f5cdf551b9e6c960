"""Where the history lives by default: one file per cluster, named without credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celeriac.store.location import cluster_identity, db_path, default_db_file


def test_no_persistence_only_when_asked() -> None:
    for value in ("memory", "MEMORY", ":memory:"):
        assert db_path(value, "redis://localhost:6379/0") is None
    assert db_path("/srv/celeriac/tasks.db", "redis://x") == "/srv/celeriac/tasks.db"
    assert db_path("~/t.db", "redis://x") == os.path.expanduser("~/t.db")


def test_the_default_file_is_in_the_data_directory(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = db_path(None, "redis://localhost:6379/0")
    assert path is not None
    assert Path(path).parent == tmp_path / "celeriac"
    assert Path(path).name.startswith("redis-localhost-6379-0-") and path.endswith(".sqlite3")


def test_one_file_per_cluster_never_named_with_credentials() -> None:
    same = {
        default_db_file(u)
        for u in ("redis://", "redis://localhost:6379/0", "redis://:s3cret@localhost/0",
                  "redis://localhost:6379")
    }  # fmt: skip
    assert len(same) == 1
    others = [
        "redis://localhost:6379/1", "redis://other:6379/0", "redis://localhost:6380/0",
        "amqp://guest:guest@localhost//", "amqp://guest:guest@localhost/prod",
        "amqp://u:p@rabbit:5672/prod%2Fa", "amqp://u:p@rabbit:5672/prod-a",
    ]  # fmt: skip
    names = {default_db_file(u) for u in others} | same
    assert len(names) == len(others) + 1
    for url in ["amqp://admin:hunter2@rabbit:5672/prod", "redis://:hunter2@cache:6379/2"]:
        assert "hunter2" not in default_db_file(url) and "admin" not in default_db_file(url)
        assert "hunter2" not in cluster_identity(url)
