"""One PostgreSQL database, several clusters: each ``--cluster`` in a schema of its own, on a
real PostgreSQL server (the store's writer, migrations and readers all land there)."""

from __future__ import annotations

import time

import psycopg

from celeriac.cluster import open_store
from celeriac.clusters import cluster_settings
from celeriac.settings import Settings
from celeriac.store.pg_schema import schema_of


def test_each_cluster_has_its_own_schema_and_tables(postgres_url: str) -> None:
    settings = Settings.build({"broker": "redis://127.0.0.1:1/0", "db": postgres_url,
                               "clusters": ["eu-west=redis://127.0.0.1:1/1"]}, {})
    primary, eu = settings.cluster_specs()
    stores = {
        spec.name: open_store(cluster_settings(settings, spec, default=spec.primary),
                              str(spec.broker))
        for spec in (primary, eu)
    }
    for store in stores.values():
        store.start()
    try:
        stores["eu-west"].put({"uuid": "only-in-eu", "name": "t.eu", "state": "SUCCESS",
                               "timestamp": time.time()})
        stores["default"].put({"uuid": "only-in-default", "name": "t.default",
                               "state": "SUCCESS", "timestamp": time.time()})
        for store in stores.values():
            assert store.flush(timeout=10)
        assert stores["eu-west"].get("only-in-eu") is not None
        assert stores["eu-west"].get("only-in-default") is None
        assert stores["default"].get("only-in-eu") is None
        assert stores["eu-west"].count() == stores["default"].count() == 1
        assert stores["eu-west"].task_types() == ["t.eu"]
    finally:
        for store in stores.values():
            store.close()
    eu_url = cluster_settings(settings, eu, default=False).db
    assert eu_url is not None and schema_of(eu_url) == "celeriac_eu_west"
    with psycopg.connect(postgres_url) as conn:
        where = dict(conn.execute(
            "SELECT table_schema, count(*) FROM information_schema.tables "
            "WHERE table_name IN ('tasks', 'schema_version') GROUP BY table_schema").fetchall())
    assert where == {"public": 2, "celeriac_eu_west": 2}
