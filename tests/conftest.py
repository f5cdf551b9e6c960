"""Fixtures that start the real thing: redis-server, a RabbitMQ node, celery workers, celeriac.

Shared (started once, stopped at the end of their scope):

- session: ``redis_server``, ``rabbitmq_server`` (started in the background as soon as
  collection shows that some test needs it, so its boot overlaps the Redis tests).
- module: ``redis_url`` (a fresh db), ``amqp_url`` (a fresh vhost), ``broker`` (parametrised
  over redis and amqp; tests using it run once per broker), ``redis_broker``, ``amqp_broker``,
  ``worker`` (one ``w1@%h`` worker on ``broker``), and the factories ``module_celery_worker``
  and ``module_celeriac_server`` for tests of one module that can share processes.

Per test: the factories ``celery_worker``, ``celeriac_server`` and ``flower_server``; whatever
they start is stopped after the test. Use them for tests that kill, shut down, or reconfigure
what they started.

When a test fails, the report carries the log tails of the processes its fixtures started.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures import (
    BrokerInfo,
    CeleryWorker,
    MonitorFactory,
    MonitorProcess,
    RabbitMQServer,
    RedisServer,
    WorkerFactory,
    join_background_stops,
    make_broker,
)
from tests.fixtures.postgres import PostgresServer

RABBITMQ = pytest.StashKey[RabbitMQServer]()
AMQP_FIXTURES = frozenset({"rabbitmq_server", "amqp_url", "amqp_broker"})


def _needs_rabbitmq(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & AMQP_FIXTURES:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("broker") == "amqp"


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.option.collectonly or RABBITMQ in config.stash:
        return
    if any(_needs_rabbitmq(item) for item in session.items):
        config.stash[RABBITMQ] = RabbitMQServer().launch()


def pytest_unconfigure(config: pytest.Config) -> None:
    join_background_stops()
    server = config.stash.get(RABBITMQ, None)
    if server is not None:
        server.stop()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    server = config.stash.get(RABBITMQ, None)
    if server is not None and server.ready_after is not None:
        terminalreporter.write_line(
            f"RabbitMQ node {server.node} took {server.ready_after:.1f} s to start"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            for label, text in _log_tails(name, value):
                report.sections.append((f"log of {label}", text))
    return report


def _log_tails(name: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, WorkerFactory):
        processes = [w.process for w in value.workers]
    elif isinstance(value, MonitorFactory):
        processes = [m.process for m in value.monitors]
    elif isinstance(value, CeleryWorker | MonitorProcess):
        processes = [value.process]
    else:
        return
    for p in processes:
        yield f"{p.name} ({name}) {p.log_path}", p.log_tail(60)


# Brokers --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server (``redis://127.0.0.1:<port>/0``), one per session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    join_background_stops()  # workers and monitors still shutting down need their broker
    server.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    """A Redis URL with a database of this module's own, flushed."""
    return redis_server.new_url()


@pytest.fixture(scope="session")
def rabbitmq_server(pytestconfig: pytest.Config) -> Iterator[RabbitMQServer]:
    """A private RabbitMQ node (guest/guest on loopback), one per session."""
    server = pytestconfig.stash.get(RABBITMQ, None)
    if server is None:
        server = pytestconfig.stash[RABBITMQ] = RabbitMQServer().launch()
    yield server.wait_ready()
    join_background_stops()
    server.stop()  # stays in the stash for the summary line; stopping again is harmless


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster (initdb in a temp dir, a free port), one per session."""
    server = PostgresServer().start()
    yield server
    join_background_stops()  # monitors still shutting down may hold connections
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database of this test's own, as a URL with a password in it."""
    return postgres_server.new_url(request.node.name[:30])


@pytest.fixture(scope="module")
def amqp_url(rabbitmq_server: RabbitMQServer, request: pytest.FixtureRequest) -> str:
    """An AMQP URL on a vhost of this module's own."""
    return rabbitmq_server.new_url(_module_label(request))


def _broker(kind: str, request: pytest.FixtureRequest) -> BrokerInfo:
    redis_server = request.getfixturevalue("redis_server")
    rabbit = request.getfixturevalue("rabbitmq_server") if kind == "amqp" else None
    return make_broker(kind, redis_server, rabbit, _module_label(request))


@pytest.fixture(scope="module", params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerInfo]:
    """Each broker in turn (``-k redis`` / ``-k amqp`` picks one), with a Redis result backend.

    Fresh per module: a new Redis db or RabbitMQ vhost for the broker, a new db for results.
    """
    info = _broker(request.param, request)
    yield info
    info.close()


@pytest.fixture(scope="module")
def redis_broker(request: pytest.FixtureRequest) -> Iterator[BrokerInfo]:
    info = _broker("redis", request)
    yield info
    info.close()


@pytest.fixture(scope="module")
def amqp_broker(request: pytest.FixtureRequest) -> Iterator[BrokerInfo]:
    info = _broker("amqp", request)
    yield info
    info.close()


def _module_label(request: pytest.FixtureRequest) -> str:
    return str(request.module.__name__).rpartition(".")[2]


# Workers ----------------------------------------------------------------------------------------


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[WorkerFactory]:
    """``celery_worker(broker, hostname="w1@%h", concurrency=2, autoscale=None,
    pool_restarts=False, queues=None, extra_args=())``: a started worker, stopped after the test.
    """
    factory = WorkerFactory(tmp_path)
    yield factory
    factory.close(wait=True)  # the next test may start a worker of the same name


@pytest.fixture(scope="module")
def module_celery_worker(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WorkerFactory]:
    """Like ``celery_worker``, but its workers live until the module's last test."""
    factory = WorkerFactory(tmp_path_factory.mktemp(f"workers-{_module_label(request)}"))
    yield factory
    factory.close()  # in the background: the next module has brokers of its own


@pytest.fixture(scope="module")
def worker(module_celery_worker: WorkerFactory, broker: BrokerInfo) -> CeleryWorker:
    """One ``w1@%h`` worker (prefork, 2 processes) on ``broker``, shared by the module."""
    return module_celery_worker(broker)


# Monitors ---------------------------------------------------------------------------------------


@pytest.fixture
def celeriac_server(tmp_path: Path) -> Iterator[MonitorFactory]:
    """``celeriac_server(broker, *extra_flags, env=None)``: a running celeriac (``.url``,
    ``.client``, ``.log_path``, ``.stop()``), stopped after the test; ``.flower(broker)``
    starts Flower instead.
    """
    factory = MonitorFactory(tmp_path)
    yield factory
    factory.close(wait=True)


@pytest.fixture(scope="module")
def module_celeriac_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[MonitorFactory]:
    """Like ``celeriac_server``, but what it starts lives until the module's last test."""
    factory = MonitorFactory(tmp_path_factory.mktemp(f"monitors-{_module_label(request)}"))
    yield factory
    factory.close()


@pytest.fixture
def flower_server(celeriac_server: MonitorFactory) -> Callable[..., MonitorProcess]:
    """``flower_server(broker, *extra_flags)``: a running Flower 2.x, stopped after the test."""
    return celeriac_server.flower


# Task history ---------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$XDG_DATA_HOME for the session: a celeriac started without ``--db`` keeps its default
    task database there, never in the user's own data directory."""
    path = tmp_path_factory.mktemp("xdg-data")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_DATA_HOME", str(path))
    yield path
    patch.undo()


@pytest.fixture(autouse=True)
def private_test_data_dir(
    private_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """And one per test, so in-process clusters of two tests never share a default file."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data")))
    yield
    patch.undo()
