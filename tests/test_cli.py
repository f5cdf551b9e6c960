"""The command line fails with one clear line, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    ManagedProcess,
    MonitorProcess,
    RedisServer,
    WorkerFactory,
    free_port,
    make_broker,
    wait_for,
)
from tests.fixtures.clusters import (
    check_pool_grow_stays_in,
    check_revoke_stays_in,
    state_at,
    tasks_at,
)
from tests.fixtures.monitors import clean_environ


def run_celeriac(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_broker_is_one_line_and_hides_the_password() -> None:
    port = closed_port()
    done = run_celeriac("--broker", f"amqp://guest:hunter2@127.0.0.1:{port}//")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("celeriac: cannot connect to broker amqp://guest:***@127.0.0.1")
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_bad_setting_exits_2_with_its_name() -> None:
    done = run_celeriac("--broker", "redis://127.0.0.1:1/0", "--port", "99999")
    assert done.returncode == 2
    assert done.stderr.strip() == "celeriac: invalid setting: port: 99999 is not a TCP port"


def test_unknown_app_module() -> None:
    done = run_celeriac("--broker", "redis://127.0.0.1:1/0", "-A", "no_such_module_here")
    assert done.returncode == 2
    assert "cannot load 'no_such_module_here'" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    done = run_celeriac("--no-such-flag")
    assert done.returncode == 2
    assert "No such option" in done.stderr


def test_flower_spelling_of_options_is_accepted() -> None:
    done = run_celeriac("--help")
    assert done.returncode == 0
    for flag in ("--max_tasks", "--max-tasks", "--url_prefix", "--basic_auth",
                 "--inspect_timeout", "--purge_offline_workers", "--unauthenticated_api",
                 "--api-token", "--api-token-file", "--basic-auth-read-only", "--metrics-public",
                 "--certfile", "--keyfile"):
        assert flag in done.stdout


def test_celery_subcommand_is_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "celeriac", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--unauthenticated-api" in done.stdout


# celery -A proj celeriac --cluster NAME=URL: the -A app's cluster at Flower's paths, another
# under /clusters/NAME/. Two Redis brokers, a worker on each, celeriac as a celery subcommand.


@pytest.fixture(scope="module")
def away_broker(redis_server: RedisServer) -> Iterator[BrokerInfo]:
    """The other cluster's broker and result backend: Redis dbs of their own."""
    info = make_broker("redis", redis_server, None, "cli")
    yield info
    info.close()


@pytest.fixture(scope="module")
def home(module_celery_worker: WorkerFactory, redis_broker: BrokerInfo) -> CeleryWorker:
    return module_celery_worker(redis_broker, hostname="home@%h", concurrency=1)


@pytest.fixture(scope="module")
def away(module_celery_worker: WorkerFactory, away_broker: BrokerInfo) -> CeleryWorker:
    return module_celery_worker(away_broker, hostname="away@%h", concurrency=1)


def start_celery_celeriac(
    log_dir: Path,
    broker: BrokerInfo,
    celery_args: Sequence[str],
    *flags: str,
    env: Mapping[str, str],
) -> MonitorProcess:
    """``python -m celery <celery_args> celeriac --port P --unauthenticated-api --db ...``."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "celery",
        *celery_args,
        "celeriac",
        "--port",
        str(port),
        "--unauthenticated-api",
        "--db",
        str(log_dir / f"tasks-{port}.sqlite3"),
        *flags,
    ]
    full_env = {**clean_environ(), "PYTHONUNBUFFERED": "1", **env}
    process = ManagedProcess(
        argv, log_dir / f"celery-celeriac-{port}.log", env=full_env, name=f"celery celeriac :{port}"
    )
    return MonitorProcess(process, port, broker)


@pytest.fixture(scope="module")
def subcommand(
    home: CeleryWorker, away: CeleryWorker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MonitorProcess]:
    """``celery -A tests.apps.proj celeriac --default-cluster home --cluster other=<away>``:
    the -A app takes broker and backend from its own configuration (the environment
    tests.apps.proj reads), as a project's app does; no --broker."""
    m = start_celery_celeriac(
        tmp_path_factory.mktemp("subcommand"),
        home.broker,
        ["-A", "tests.apps.proj"],
        "--default-cluster",
        "home",
        "--cluster",
        f"other={away.broker.url}",
        env=home.broker.env,
    )
    try:
        yield m.wait_healthy()
    finally:
        m.stop()


def workers_at(m: MonitorProcess, base: str) -> set[str]:
    r = m.client.get(f"{base}/api/workers", params={"refresh": "true"})
    assert r.status_code == 200, r.text
    return set(r.json())


def test_subcommand_serves_the_app_at_flowers_paths_and_the_cluster_apart(
    subcommand: MonitorProcess, home: CeleryWorker, away: CeleryWorker
) -> None:
    on_home = home.broker.tasks.add.delay(1, 2)
    on_away = away.broker.tasks.add.delay(3, 4)
    assert on_home.get(timeout=20) == 3 and on_away.get(timeout=20) == 7
    wait_for(
        lambda: state_at(subcommand, "", on_home.id) == "SUCCESS",
        20,
        0.2,
        "the -A app's task at /api/task/info",
    )
    wait_for(
        lambda: state_at(subcommand, "/clusters/other", on_away.id) == "SUCCESS",
        20,
        0.2,
        "the other cluster's task at /clusters/other/api/task/info",
    )

    at_home, at_away = tasks_at(subcommand, ""), tasks_at(subcommand, "/clusters/other")
    assert on_home.id in at_home and on_away.id not in at_home
    assert on_away.id in at_away and on_home.id not in at_away
    assert {t["worker"] for t in at_home.values()} == {home.hostname}
    assert {t["worker"] for t in at_away.values()} == {away.hostname}
    assert state_at(subcommand, "", on_away.id) is None
    assert state_at(subcommand, "/clusters/other", on_home.id) is None
    assert workers_at(subcommand, "") == {home.hostname}
    assert workers_at(subcommand, "/clusters/other") == {away.hostname}

    # --default-cluster names the -A app's cluster: its /clusters/ path leads to the root.
    r = subcommand.client.get("/clusters/home/api/tasks", params={"limit": "1"})
    assert r.status_code == 307 and r.headers["location"] == "/api/tasks?limit=1"
    rows = subcommand.client.get("/api/celeriac/clusters").json()
    assert [(c["name"], c["default"], c["url"], c["broker"]) for c in rows] == [
        ("home", True, "/", home.broker.url),
        ("other", False, "/clusters/other/", away.broker.url),
    ]
    db = Path(subcommand.log_path).with_name(f"tasks-{subcommand.port}.sqlite3")
    assert db.exists() and db.with_name(f"tasks-{subcommand.port}.other.sqlite3").exists()


def test_subcommand_applies_with_the_apps_tasks_and_result_backend(
    subcommand: MonitorProcess, home: CeleryWorker
) -> None:
    """At Flower's paths, apply uses the -A app itself: its tasks, broker and backend."""
    r = subcommand.client.post("/api/task/apply/tests.add", json={"args": [20, 22]})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "SUCCESS" and r.json()["result"] == 42
    task_id = r.json()["task-id"]
    assert home.broker.app.AsyncResult(task_id).get(timeout=10) == 42  # in home's backend
    wait_for(lambda: state_at(subcommand, "", task_id) == "SUCCESS", 20, 0.2, "the applied task")
    assert task_id not in tasks_at(subcommand, "/clusters/other")


def test_subcommand_pool_grow_under_the_prefix_reaches_only_that_clusters_worker(
    subcommand: MonitorProcess, home: CeleryWorker, away: CeleryWorker
) -> None:
    check_pool_grow_stays_in(subcommand, "/clusters/other", away, home)


def test_subcommand_revoke_under_the_prefix_reaches_only_that_clusters_worker(
    subcommand: MonitorProcess, home: CeleryWorker, away: CeleryWorker
) -> None:
    task_id = check_revoke_stays_in(subcommand, "/clusters/other", away, home)
    # Unknown at Flower's paths (the -A app's cluster): nothing was sent there.
    assert subcommand.client.get(f"/api/task/info/{task_id}").status_code == 404


def test_celerys_own_broker_and_backend_flags_stay_with_the_app(
    home: CeleryWorker, away: CeleryWorker, tmp_path: Path
) -> None:
    """``celery -A proj -b URL --result-backend URL celeriac --cluster other=...``: celery
    passes -b to the app as CELERY_BROKER_URL, which every Celery app reads before its own
    broker_url; the other cluster must still watch its own broker, not -b's."""
    m = start_celery_celeriac(
        tmp_path,
        home.broker,
        [
            "-A",
            "tests.apps.proj",
            "-b",
            home.broker.url,
            "--result-backend",
            home.broker.backend_url,
        ],
        "--cluster",
        f"other={away.broker.url}",
        env={},  # the app's own config: no broker
    )
    try:
        m.wait_healthy()
        rows = m.client.get("/api/celeriac/clusters").json()
        assert [(c["name"], c["broker"]) for c in rows] == [
            ("default", home.broker.url),
            ("other", away.broker.url),
        ]
        assert workers_at(m, "/clusters/other") == {away.hostname}
        assert workers_at(m, "") == {home.hostname}
        r = m.client.post("/api/task/apply/tests.add", json={"args": [2, 3]})
        assert r.status_code == 200 and r.json()["result"] == 5, r.text  # --result-backend's
        on_away = away.broker.tasks.echo.delay("away")
        on_away.get(timeout=20)
        wait_for(
            lambda: state_at(m, "/clusters/other", on_away.id) == "SUCCESS",
            20,
            0.2,
            "the other cluster's task under /clusters/other",
        )
        assert state_at(m, "", on_away.id) is None
    finally:
        m.stop()


def test_an_app_without_a_broker_is_not_dropped_for_the_cluster(
    away_broker: BrokerInfo, tmp_path: Path
) -> None:
    """-A names the default cluster even when its app has no broker: one clear line, rather
    than the --cluster served at Flower's paths as if no -A had been given."""
    (tmp_path / "brokerless_proj.py").write_text(
        "from celery import Celery\n\napp = Celery('brokerless')\n"
    )
    env = {k: v for k, v in clean_environ().items() if not k.startswith("CELERY_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "brokerless_proj",
            "celeriac",
            "--port",
            str(free_port()),
            "--unauthenticated-api",
            "--db",
            "memory",
            "--cluster",
            f"other={away_broker.url}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "celeriac: invalid setting: broker: no broker URL (give --broker or CELERIAC_BROKER)"
    )


def test_subcommand_help_shows_the_cluster_flags() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.apps.proj", "celeriac", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for shown in (
        "--cluster NAME=BROKER_URL Watch another cluster too, served under "
        "/clusters/NAME/ (repeatable;",
        "--cluster-app NAME=MODULE The Celery app of cluster NAME",
        "--cluster-result-backend NAME=URL The result backend of cluster NAME",
        "--default-cluster NAME The cluster at Flower's paths: the name of --broker's "
        "(or -A's) cluster [default]",
    ):
        assert shown in text, shown
