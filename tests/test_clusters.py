"""Several clusters, one instance: two real brokers (Redis and RabbitMQ), a real worker on each,
one celeriac watching both. Nothing of one shows in the other; commands under a cluster's prefix
reach that cluster's worker only; the default cluster answers at Flower's paths.

One celeriac, both brokers and both workers are shared by the module (they take seconds to
start); each test sends tasks of its own.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from celeriac.clusters import cluster_db, cluster_settings
from celeriac.settings import ClusterSpec, Settings, SettingsError
from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, CeleryWorker, MonitorFactory, MonitorProcess, WorkerFactory
from tests.fixtures.clusters import (
    check_pool_grow_stays_in,
    check_revoke_stays_in,
    task_info,
    tasks_at,
)
from tests.fixtures.processes import wait_for

AUTH = ("admin", "s3cret-pw")


@pytest.fixture(scope="module")
def red(module_celery_worker: WorkerFactory, redis_broker: BrokerInfo) -> CeleryWorker:
    return module_celery_worker(redis_broker, hostname="red@%h")


@pytest.fixture(scope="module")
def rabbit(module_celery_worker: WorkerFactory, amqp_broker: BrokerInfo) -> CeleryWorker:
    return module_celery_worker(amqp_broker, hostname="rabbit@%h")


@pytest.fixture(scope="module")
def hooks() -> Iterator[Receiver]:
    """Where the alerts of both clusters go."""
    receiver = Receiver().start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def monitor(
    module_celeriac_server: MonitorFactory, red: CeleryWorker, rabbit: CeleryWorker,
    hooks: Receiver, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[MonitorProcess]:
    """The Redis cluster is the default one (``--broker``, named ``red``); the RabbitMQ one is
    ``--cluster rabbit=...`` with the same app module (so its app must be a copy). One alert
    rule, evaluated for each cluster on its own."""
    amqp = rabbit.broker
    rules = tmp_path_factory.mktemp("alerts") / "alerts.toml"
    rules.write_text(f"""interval = "0.3s"
[[webhook]]
name = "json"
url = "{hooks.url("/json")}"
[[rule]]
name = "failing"
kind = "failure_rate"
task = "tests.fail"
above = 0.5
window = "30s"
min_tasks = 2
""")
    m = module_celeriac_server(
        red.broker, "--default-cluster", "red",
        "--cluster", f"rabbit={amqp.url}",
        "--cluster-app", "rabbit=tests.apps.proj",
        "--cluster-result-backend", f"rabbit={amqp.backend_url}",
        "--basic-auth", ":".join(AUTH), "--alerts", str(rules),
    )
    m.client.auth = AUTH
    yield m


# What each cluster shows ------------------------------------------------------------------------


def test_each_cluster_shows_only_its_own_tasks_and_workers(
    monitor: MonitorProcess, red: CeleryWorker, rabbit: CeleryWorker
) -> None:
    on_red = red.broker.tasks.add.delay(1, 2)
    on_rabbit = rabbit.broker.tasks.add.delay(3, 4)
    assert on_red.get(timeout=20) == 3 and on_rabbit.get(timeout=20) == 7

    wait_for(lambda: on_red.id in tasks_at(monitor), 20, 0.2, "red's task at /api/tasks")
    wait_for(lambda: on_rabbit.id in tasks_at(monitor, "/clusters/rabbit"), 20, 0.2,
             "rabbit's task at /clusters/rabbit/api/tasks")
    red_tasks, rabbit_tasks = tasks_at(monitor), tasks_at(monitor, "/clusters/rabbit")
    assert on_rabbit.id not in red_tasks and on_red.id not in rabbit_tasks
    assert {t["worker"] for t in red_tasks.values()} <= {red.hostname}
    assert {t["worker"] for t in rabbit_tasks.values()} <= {rabbit.hostname}
    assert task_info(monitor, "", on_rabbit.id) is None
    assert task_info(monitor, "/clusters/rabbit", on_red.id) is None
    info = task_info(monitor, "/clusters/rabbit", on_rabbit.id)
    assert info is not None and info["state"] == "SUCCESS" and info["result"] == "7"

    red_workers = monitor.client.get("/api/workers", params={"refresh": "true"}).json()
    rabbit_workers = monitor.client.get("/clusters/rabbit/api/workers",
                                        params={"refresh": "true"}).json()
    assert set(red_workers) == {red.hostname}
    assert set(rabbit_workers) == {rabbit.hostname}
    # A worker of one cluster is unknown in the other, even by its exact name.
    r = monitor.client.get("/clusters/rabbit/api/workers", params={"workername": red.hostname})
    assert r.status_code == 404 and r.text == f"Unknown worker '{red.hostname}'"
    types = monitor.client.get("/clusters/rabbit/api/task/types").json()
    assert "tests.add" in str(types)


def test_the_default_cluster_answers_at_flowers_paths(
    monitor: MonitorProcess, red: CeleryWorker
) -> None:
    done = red.broker.tasks.echo.delay("default")
    done.get(timeout=20)
    wait_for(lambda: done.id in tasks_at(monitor), 20, 0.2, "the task at /api/tasks")
    # /clusters/<default>/... is the same cluster: redirected to Flower's path, query kept.
    r = monitor.client.get("/clusters/red/api/tasks", params={"limit": "1"})
    assert r.status_code == 307 and r.headers["location"] == "/api/tasks?limit=1"
    assert monitor.client.get("/healthcheck").text == "OK"
    assert monitor.client.get("/clusters/rabbit/healthcheck").text == "OK"


def test_an_unknown_cluster_is_404(monitor: MonitorProcess) -> None:
    for path in ("/clusters/nope/api/tasks", "/clusters/nope", "/clusters/nope/"):
        r = monitor.client.get(path)
        assert r.status_code == 404 and r.text == "Unknown cluster 'nope'", path
    assert monitor.client.post("/clusters/nope/api/task/revoke/x").status_code == 404


def test_applying_under_a_prefix_runs_on_that_clusters_broker(
    monitor: MonitorProcess, rabbit: CeleryWorker
) -> None:
    r = monitor.client.post("/clusters/rabbit/api/task/async-apply/tests.add",
                            json={"args": [20, 22]})
    assert r.status_code == 200, r.text
    task_id = r.json()["task-id"]

    def done() -> dict[str, Any] | None:
        info = task_info(monitor, "/clusters/rabbit", task_id)
        return info if info and info["state"] == "SUCCESS" else None

    info = wait_for(done, 20, 0.2, "the applied task to succeed on rabbit")
    assert info["worker"] == rabbit.hostname and info["result"] == "42"
    assert task_id not in tasks_at(monitor)
    r = monitor.client.get(f"/clusters/rabbit/api/task/result/{task_id}")
    assert r.status_code == 200 and r.json()["result"] == 42  # rabbit's own result backend


# Remote control stays within its cluster ----------------------------------------------------------


def test_pool_grow_under_a_prefix_reaches_only_that_clusters_worker(
    monitor: MonitorProcess, red: CeleryWorker, rabbit: CeleryWorker
) -> None:
    check_pool_grow_stays_in(monitor, "/clusters/rabbit", rabbit, red)


def test_revoke_under_a_prefix_reaches_only_that_clusters_worker(
    monitor: MonitorProcess, red: CeleryWorker, rabbit: CeleryWorker
) -> None:
    check_revoke_stays_in(monitor, "/clusters/rabbit", rabbit, red)


# Auth, metrics, storage ---------------------------------------------------------------------------


def test_auth_and_csrf_hold_under_a_prefix(monitor: MonitorProcess) -> None:
    anonymous = httpx.Client(base_url=monitor.url, timeout=10)
    with anonymous:
        assert anonymous.get("/clusters/rabbit/api/tasks").status_code == 401
        assert anonymous.get("/clusters/rabbit/metrics").status_code == 401
        assert anonymous.get("/clusters/rabbit/healthcheck").status_code == 200
        assert anonymous.get("/clusters/nope/api/tasks").status_code == 401  # nothing leaks
    r = monitor.client.post("/clusters/rabbit/api/task/revoke/x",
                            headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403


def test_metrics_per_cluster(monitor: MonitorProcess, red: CeleryWorker,
                             rabbit: CeleryWorker) -> None:
    red.broker.tasks.add.delay(0, 0).get(timeout=20)
    rabbit.broker.tasks.add.delay(0, 0).get(timeout=20)

    def shows(base: str, host: str) -> str | None:
        text = monitor.client.get(f"{base}/metrics").text
        return text if host in text else None

    red_text = wait_for(lambda: shows("", red.hostname), 20, 0.3, "red's worker in /metrics")
    rabbit_text = wait_for(lambda: shows("/clusters/rabbit", rabbit.hostname), 20, 0.3,
                           "rabbit's worker in /clusters/rabbit/metrics")
    assert rabbit.hostname not in red_text and red.hostname not in rabbit_text


def test_alerts_are_evaluated_per_cluster_and_name_it(
    monitor: MonitorProcess, rabbit: CeleryWorker, hooks: Receiver
) -> None:
    for result in [rabbit.broker.tasks.fail.delay("boom") for _ in range(2)]:
        result.get(timeout=20, propagate=False)
    (fired,) = hooks.wait(lambda r: of(r.accepted("/json"), "firing"), 20,
                          "a firing for rabbit's failures")
    assert fired["cluster"] == "rabbit" and fired["rule"] == "failing"
    assert [b for b in hooks.accepted("/json") if b.get("cluster") != "rabbit"] == []
    rabbit_alerts = monitor.client.get("/clusters/rabbit/api/celeriac/alerts").json()
    red_alerts = monitor.client.get("/api/celeriac/alerts").json()
    assert rabbit_alerts["fired"] == 1 and red_alerts["fired"] == 0


def test_each_cluster_has_its_own_sqlite_file(monitor: MonitorProcess) -> None:
    own = Path(monitor.log_path).parent / f"celeriac-{monitor.port}.sqlite3"
    assert own.exists()
    assert own.with_name(f"celeriac-{monitor.port}.rabbit.sqlite3").exists()


# The UI -------------------------------------------------------------------------------------------


def test_the_switcher_and_the_overview(
    monitor: MonitorProcess, red: CeleryWorker, rabbit: CeleryWorker
) -> None:
    html = monitor.client.get("/", headers={"Accept": "text/html"}).text
    switcher = re.search(r'<details class="switcher".*?</details>', html, re.S)
    assert switcher is not None
    assert 'href="/" data-cluster="red" aria-current=true' in switcher.group(0)
    assert 'href="/clusters/rabbit/" data-cluster="rabbit"' in switcher.group(0)
    overview = re.search(r'<section id="clusters">.*?</section>', html, re.S)
    assert overview is not None
    assert "rabbit" in overview.group(0) and "amqp://" in overview.group(0)

    page = monitor.client.get("/clusters/rabbit/tasks").text
    assert '<meta name="celeriac-base" content="/clusters/rabbit">' in page
    assert "<title>Tasks · rabbit · celeriac</title>" in page
    links = re.findall(r'(?:href|src|data-post)="(/[^"]*)"', page)
    inside = [u for u in links if u.startswith("/clusters/rabbit/")]
    others = [u for u in links if not u.startswith("/clusters/rabbit/")]
    # Only the switcher leaves the prefix: to the same page of the default cluster.
    assert inside and others == ["/tasks"]
    assert 'href="/tasks" data-cluster="red"' in page
    # The worker page's control buttons and forms post under the prefix too.
    page = monitor.client.get(f"/clusters/rabbit/worker/{rabbit.hostname}").text
    targets = re.findall(r'(?:href|src|data-post|data-api)="(/[^"]*)"', page)
    assert any("/api/worker/pool/grow/" in u for u in targets)
    assert [u for u in targets if not u.startswith("/clusters/rabbit")] == ["/workers"]

    def both_online() -> list[dict[str, Any]] | None:
        rows = monitor.client.get("/api/celeriac/clusters").json()
        return rows if all(c["workers_online"] == 1 for c in rows) else None

    rows = wait_for(both_online, 20, 0.3, "one worker online in each cluster")
    assert [(c["name"], c["default"], c["url"]) for c in rows] == [
        ("red", True, "/"), ("rabbit", False, "/clusters/rabbit/")]
    assert rows[1]["broker"].startswith("amqp://") and "guest@" not in rows[0]["broker"]
    assert all(isinstance(c["tasks"], dict) for c in rows)


# Settings ----------------------------------------------------------------------------------------


def build(**flags: Any) -> Settings:
    return Settings.build(flags, {})


@pytest.mark.parametrize(("flags", "error"), [
    ({"clusters": ["EU=redis://h"]}, "cluster: 'EU' is not a cluster name"),
    ({"clusters": ["eu"]}, "cluster: expected NAME=VALUE"),
    ({"clusters": ["eu=h:6379"]}, "cluster eu: 'h:6379' is not a broker URL"),
    ({"clusters": ["eu=redsi://u:pw@h"]}, "cluster eu: unknown broker transport 'redsi' in "
                                          "'redsi://u:***@h'"),
    ({"clusters": ["eu=redis://a", "eu=redis://b"]}, "cluster: name 'eu' given more than once"),
    ({"clusters": ["eu=redis://a", "e_u=redis://b", "e-u=redis://c"]},
     "cluster: 'e_u' differs from another name only in - and _"),
    ({"clusters": ["eu=redis://:pw@a:6379/0", "us=redis://a"]},
     "cluster us: same broker as cluster 'eu' (redis://a:6379/0)"),
    ({"broker": "redis://x", "clusters": ["eu=redis://a"], "default_cluster": "eu"},
     "cluster: name 'eu' given more than once (--default-cluster names the --broker cluster)"),
    ({"clusters": ["eu=redis://a"], "default_cluster": "us"},
     "default_cluster: no cluster named 'us'"),
    ({"clusters": ["eu=redis://a"], "cluster_apps": ["us=proj"]},
     "cluster-app: no --cluster named 'us'"),
    ({"clusters": ["eu=redis://a"], "cluster_result_backends": ["eu=redis://b", "eu=redis://c"]},
     "cluster-result-backend: given twice for cluster 'eu'"),
])
def test_bad_cluster_settings_are_one_clear_line(flags: dict[str, Any], error: str) -> None:
    with pytest.raises(SettingsError) as info:
        build(**flags)
    assert str(info.value).startswith(error), str(info.value)
    assert "pw" not in str(info.value)


def test_clusters_from_flags_and_environment() -> None:
    s = build(broker="redis://x", clusters=["eu=redis://a", "us=amqp://u:pw@b//"],
              cluster_apps=["eu=proj.celery"], cluster_result_backends=["us=redis://r/2"])
    specs = s.cluster_specs()
    assert [(c.name, c.broker, c.app, c.result_backend, c.primary) for c in specs] == [
        ("default", "redis://x", None, None, True),
        ("eu", "redis://a", "proj.celery", None, False),
        ("us", "amqp://u:pw@b//", None, "redis://r/2", False),
    ]
    assert "pw" not in repr(s) and "pw" not in repr(specs)
    env = {"CELERIAC_CLUSTERS": "eu=redis://a;redis://b, us=amqp://b//\nasia=redis://c/3",
           "CELERIAC_CLUSTER_APPS": "us=proj", "CELERIAC_DEFAULT_CLUSTER": "us"}
    s = Settings.build({}, env)
    assert [(c.name, c.broker, c.app) for c in s.cluster_specs()] == [
        ("us", "amqp://b//", "proj"), ("eu", "redis://a;redis://b", None),
        ("asia", "redis://c/3", None)]
    # Flags replace the variable.
    s = Settings.build({"clusters": ("x=redis://q",)},
                       env | {"CELERIAC_CLUSTER_APPS": "", "CELERIAC_DEFAULT_CLUSTER": "x"})
    assert [c.name for c in s.cluster_specs()] == ["x"]
    assert not build(broker="redis://x").several_clusters


def test_each_cluster_keeps_its_history_apart() -> None:
    eu = ClusterSpec("eu-west", "redis://a")
    primary = ClusterSpec("main", "redis://b", primary=True)
    assert cluster_db("/data/tasks.sqlite3", eu) == "/data/tasks.eu-west.sqlite3"
    assert cluster_db("/data/tasks.sqlite3", primary) == "/data/tasks.sqlite3"
    assert cluster_db(None, eu) is None  # the default file is per broker already
    assert cluster_db("memory", eu) == "memory"
    url = cluster_db("postgresql://u:pw@h/db?sslmode=disable", eu)
    assert url == ("postgresql://u:pw@h/db?sslmode=disable"
                   "&options=-c%20search_path%3Dceleriac_eu_west%2Cpublic")
    s = build(clusters=["eu-west=redis://a"], url_prefix="/mon")
    assert cluster_settings(s, eu, default=False).prefix == "/mon/clusters/eu-west"
    assert cluster_settings(s, eu, default=True).prefix == "/mon"


def test_a_bad_cluster_flag_exits_2_in_one_line() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "--cluster", "eu=redsi://u:hunter2@h"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("celeriac: invalid setting: cluster eu: unknown broker "
                                   "transport 'redsi' in 'redsi://u:***@h'")


def test_the_layout_under_a_url_prefix() -> None:
    """In-process, no lifespan (nothing connects): routing, redirects and 404s only."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from celeriac.server import create_app

    settings = Settings.build({"broker": "redis://127.0.0.1:1/0", "url_prefix": "flower",
                               "clusters": ["b=redis://127.0.0.1:1/1"], "db": "memory",
                               "unauthenticated_api": True}, {})
    app = create_app(settings)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path)

    def fetch(path: str) -> httpx.Response:
        # A thread of its own: a browser test may have left a loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, get(path)).result()

    r = fetch("/flower/clusters/b/api/openapi.json")
    assert r.status_code == 200 and r.json()["servers"] == [{"url": "/flower/clusters/b"}]
    r = fetch("/flower/clusters/default/api/tasks?limit=1")
    assert r.status_code == 307 and r.headers["location"] == "/flower/api/tasks?limit=1"
    r = fetch("/flower/clusters/nope/api/tasks")
    assert (r.status_code, r.text) == (404, "Unknown cluster 'nope'")
    assert fetch("/clusters/b/api/tasks").status_code == 404  # outside the prefix: nothing
    page = fetch("/flower/clusters/b/tasks").text
    assert '<meta name="celeriac-base" content="/flower/clusters/b">' in page
    assert 'href="/flower/tasks" data-cluster="default"' in page
    assert fetch("/flower/clusters/b/static/app.js").status_code == 200
    r = fetch("/flower/clusters/b")
    assert r.status_code == 307 and r.headers["location"] == "/flower/clusters/b/"


def test_a_single_cluster_flag_is_watched() -> None:
    """``--cluster NAME=URL`` alone (no --broker): that cluster, as the default one."""
    from celeriac.clusters import Clusters

    settings = Settings.build({"clusters": ["only=redis://127.0.0.1:1/5"], "db": "memory"}, {})
    clusters = Clusters.build(settings)
    try:
        assert len(clusters) == 1 and clusters.default.name == "only"
        assert clusters.default.cluster.app.conf.broker_url == "redis://127.0.0.1:1/5"
        assert clusters.default.base == ""
    finally:
        clusters.close()


def test_two_clusters_on_one_postgresql_database(
    red: CeleryWorker, rabbit: CeleryWorker, celeriac_server: MonitorFactory, postgres_url: str
) -> None:
    """Each cluster in its own schema, with its own leader election: this instance leads
    both, and the tasks of each are stored and served apart."""
    m = celeriac_server(red.broker, "--db", postgres_url,
                        "--cluster", f"rabbit={rabbit.broker.url}")
    for base in ("", "/clusters/rabbit"):
        assert m.client.get(f"{base}/healthcheck").headers["x-celeriac-role"] == "leader"
    on_red = red.broker.tasks.add.delay(5, 5)
    on_rabbit = rabbit.broker.tasks.add.delay(6, 6)
    assert on_red.get(timeout=20) == 10 and on_rabbit.get(timeout=20) == 12
    wait_for(lambda: on_red.id in tasks_at(m), 20, 0.2, "red's task stored")
    wait_for(lambda: on_rabbit.id in tasks_at(m, "/clusters/rabbit"), 20, 0.2,
             "rabbit's task stored")
    assert on_rabbit.id not in tasks_at(m) and on_red.id not in tasks_at(m, "/clusters/rabbit")
    import psycopg

    def stored() -> tuple[set[str], set[str]] | None:
        # The API lists a task before its batch is committed: wait for the rows themselves.
        with psycopg.connect(postgres_url) as conn:
            rows = {r[0] for r in conn.execute("SELECT uuid FROM celeriac_rabbit.tasks")}
            public = {r[0] for r in conn.execute("SELECT uuid FROM public.tasks")}
        return (rows, public) if on_rabbit.id in rows and on_red.id in public else None

    rows, public = wait_for(stored, 10, 0.2, "both tasks committed, each in its schema")
    assert on_red.id not in rows and on_rabbit.id not in public
    # A second instance on the same database follows in both clusters, and serves each
    # cluster's tasks from that cluster's schema.
    follower = celeriac_server(red.broker, "--db", postgres_url,
                               "--cluster", f"rabbit={rabbit.broker.url}")
    for base in ("", "/clusters/rabbit"):
        assert follower.client.get(f"{base}/healthcheck").headers["x-celeriac-role"] == (
            "follower")
    assert on_red.id in tasks_at(follower) and on_rabbit.id not in tasks_at(follower)
    rabbit_tasks = tasks_at(follower, "/clusters/rabbit")
    assert on_rabbit.id in rabbit_tasks and on_red.id not in rabbit_tasks
    # The lock is per cluster store: the schema is part of the election's identity.
    assert re.search(r"leader for amqp://\S+ \[celeriac_rabbit\]: ingesting", m.log_text())
    password = psycopg.conninfo.conninfo_to_dict(postgres_url)["password"]
    assert password and password not in m.log_text()


def test_an_unreachable_cluster_is_one_line_naming_it(redis_broker: BrokerInfo) -> None:
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "celeriac", "--broker", redis_broker.url, "--db", "memory",
         "--cluster", f"gone=amqp://guest:hunter2@127.0.0.1:{port}//"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("celeriac: cluster gone: cannot connect to broker "
                               "amqp://guest:***@127.0.0.1")
    assert "hunter2" not in done.stderr + done.stdout
