"""No input breaks the API: a property-based run of schemathesis over /api/openapi.json, against a
real celeriac watching a real worker on Redis, finds no 5xx and no response that contradicts the
description (status codes, content types, JSON schemas). Then the absurd values a fuzzer may not
reach: huge limits and offsets, endless timeouts, oversized bodies.

The run is bounded: a few examples per operation, the same ones every run (``derandomize``),
within a time budget. For a longer local hunt: ``CELERIAC_TEST_FUZZ_EXAMPLES=100
CELERIAC_TEST_FUZZ_BUDGET=900``, and ``CELERIAC_TEST_FUZZ_SEED=<n>`` for other examples.
Operations that would stop or reshape the shared worker cannot reach it: path parameters are
generated, so they never name the real worker.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from celeriac.server import MAX_BODY_BYTES
from tests.fixtures import BrokerInfo, CeleryWorker, MonitorFactory, MonitorProcess, wait_for

TOKEN = "fuzz-Admin-7c1e9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_WAIT = 2.0  # --max-wait of the celeriac under test, seconds
EXAMPLES = int(os.environ.get("CELERIAC_TEST_FUZZ_EXAMPLES", "6"))
#: Seconds for the whole schemathesis run, shared out between the operations (each runs at
#: least one example per mode however slow the machine).
BUDGET = float(os.environ.get("CELERIAC_TEST_FUZZ_BUDGET", "45"))
SEED = os.environ.get("CELERIAC_TEST_FUZZ_SEED")
#: A request never takes longer than this here (the longest wait is MAX_WAIT, inspect 1 s).
REQUEST_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def worker(module_celery_worker: Any, redis_broker: BrokerInfo) -> CeleryWorker:
    return module_celery_worker(redis_broker, hostname="fuzz@%h")


@pytest.fixture(scope="module")
def monitor(
    module_celeriac_server: MonitorFactory, redis_broker: BrokerInfo, worker: CeleryWorker
) -> Iterator[MonitorProcess]:
    m = module_celeriac_server(redis_broker, "--api-token", f"fuzz:{TOKEN}",
                               "--max-wait", f"{MAX_WAIT}s")
    m.client.headers.update(AUTH)
    wait_for(lambda: m.client.get("/api/workers", params={"status": "true"}).json()
             .get(worker.hostname), 30, 0.2, "the worker online in celeriac")
    # Some history, so that task reads and filters have something to find.
    for r in [redis_broker.tasks.add.delay(i, i) for i in range(3)]:
        r.get(timeout=30)
    redis_broker.tasks.fail.delay("boom").get(timeout=30, propagate=False)
    yield m


def test_openapi_describes_every_route(monitor: MonitorProcess) -> None:
    """Every API route of the app is in the description, and nothing else is."""
    from celeriac.api.openapi import spec
    from celeriac.server import create_app
    from celeriac.settings import Settings

    description = monitor.client.get("/api/openapi.json").json()
    described = set(description["paths"])
    # The security it states is the one configured: a token here, nothing for /healthcheck.
    assert {"bearer": []} in description["security"]
    assert description["paths"]["/healthcheck"]["get"]["security"] == []
    assert "security" not in description["paths"]["/metrics"]["get"]  # not --metrics-public
    assert spec(open_api=True)["security"] == []
    assert spec(metrics_public=True)["paths"]["/metrics"]["get"]["security"] == []
    app = create_app(Settings(broker="redis://127.0.0.1:1/0", unauthenticated_api=True,
                              db=":memory:"))
    routes = set()
    for route in app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/api/") or path in ("/metrics", "/healthcheck"):
            # Starlette's converters ({name:path}) are plain parameters in OpenAPI.
            routes.add(path.replace(":path}", "}"))
    routes.discard("/api/task/info")  # the empty id: /api/task/info/{task_id} with ""
    assert routes - described == set(), "routes missing from the description"
    assert described - routes == set(), "described paths that do not exist"


def test_no_input_breaks_the_api(monitor: MonitorProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{monitor.url}/api/openapi.json", headers=AUTH,
                                           timeout=REQUEST_TIMEOUT)
    schema.config.update(base_url=monitor.url)
    failures: list[str] = []
    ran: dict[str, int] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 25
    only = os.environ.get("CELERIAC_TEST_FUZZ_ONLY")  # a path's part, to hunt one operation
    if only:
        operations = [op for op in operations if only in op.path]
    share = BUDGET / len(operations) / 2
    deadline = 0.0

    def check(case: Any) -> None:
        label = f"{case.operation.method.upper()} {case.operation.path}"
        if time.monotonic() > deadline and ran.get(label):
            return
        ran[label] = ran.get(label, 0) + 1
        try:
            # Clamped values (a negative offset counts as 0, as in Flower) are valid answers
            # to "negative" data: the checks are on status and shape.
            case.call_and_validate(
                headers=AUTH, timeout=REQUEST_TIMEOUT,
                excluded_checks=[negative_data_rejection, positive_data_acceptance])
        except AssertionError:
            raise
        except Exception as exc:  # a transport error (a hang, a reset) is a failure too
            raise AssertionError(f"{type(exc).__name__}: {exc}") from exc

    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            deadline = time.monotonic() + share
            run = settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None,
                           database=None, phases=[Phase.explicit, Phase.generate],
                           suppress_health_check=list(HealthCheck))(
                given(case=operation.as_strategy(generation_mode=mode))(check))
            if SEED is not None:
                run = seed(int(SEED))(run)
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                continue
            except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                failures.append(f"{label} ({mode.value}): {_describe(exc)}")
    assert not failures, "\n\n".join(failures)
    assert len(ran) == len(operations), "operations never called"
    if only:
        return
    # celeriac is still whole, and still sees the worker.
    assert monitor.client.get("/healthcheck").status_code == 200
    assert monitor.alive()


def _describe(exc: BaseException) -> str:
    """The failure and what is inside it (a flaky failure only says that it was flaky)."""
    text = str(exc)[:2000]
    cause = exc.__cause__ or exc.__context__
    if not text.strip() and cause is not None:  # hypothesis' wrapper of a BaseException
        return f"{type(cause).__name__}: {_describe(cause)}"
    for inner in getattr(exc, "exceptions", ()):
        text += (f"\n  - {type(inner).__name__}: "
                 + _describe(inner).replace("\n", "\n    "))
    return text


@pytest.mark.parametrize("params", [
    {"limit": str(10**30)}, {"offset": str(10**30)}, {"limit": "1e9"}, {"offset": "-5"},
    {"limit": "-1"}, {"limit": "9223372036854775808", "offset": "9223372036854775807"},
])
def test_absurd_limits_and_offsets(monitor: MonitorProcess, params: dict[str, str]) -> None:
    r = monitor.client.get("/api/tasks", params=params)
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert r.text.startswith("Invalid argument")
    else:
        assert isinstance(r.json(), dict)


def test_endless_result_timeouts_are_cut_to_max_wait(
    monitor: MonitorProcess, redis_broker: BrokerInfo
) -> None:
    """?timeout=1e9 waits --max-wait, then answers with the state so far."""
    for timeout in ("1e9", "1e308", "3600"):
        started = time.monotonic()
        r = monitor.client.get("/api/task/result/never-sent-id", params={"timeout": timeout})
        waited = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.json() == {"task-id": "never-sent-id", "state": "PENDING"}
        assert waited < REQUEST_TIMEOUT  # a hang guard, not a timing claim
    for bad in ("inf", "nan", "1e999", "soon"):
        r = monitor.client.get("/api/task/result/x", params={"timeout": bad})
        assert r.status_code == 400, (bad, r.text)
    # A task that takes longer than --max-wait: apply answers with its state, without a result.
    r = monitor.client.post("/api/task/apply/tests.sleep", json={"args": [MAX_WAIT + 3]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] in ("PENDING", "STARTED") and "result" not in body, body
    r = monitor.client.post("/api/task/apply/tests.sleep",
                            json={"args": [MAX_WAIT + 3], "timeout": 1e12})
    assert r.status_code == 200 and "result" not in r.json(), r.text


def test_oversized_bodies_are_refused(monitor: MonitorProcess) -> None:
    big = b"x" * (MAX_BODY_BYTES + 1)
    r = monitor.client.post("/api/task/send-task/tests.add", content=big,
                            headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"y" * 65536

    with httpx.Client(base_url=monitor.url, headers=AUTH, timeout=30) as c:
        r = c.post("/api/task/send-task/tests.add", content=chunks(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert monitor.client.get("/healthcheck").status_code == 200


@pytest.mark.parametrize("options", [
    {"countdown": -2e16}, {"countdown": 1e300}, {"expires": 1e300}, {"serializer": "nope"},
    {"headers": 5}, {"compression": "nope"}, {"retry_policy": "x"}, {"serializer": [1]},
    {"compression": {}},
])
def test_options_celery_cannot_use_are_a_400(
    monitor: MonitorProcess, options: dict[str, Any]
) -> None:
    for action in ("send-task", "async-apply", "apply"):
        r = monitor.client.post(f"/api/task/{action}/tests.add",
                                json={"args": [1, 2], **options})
        assert r.status_code == 400, (action, options, r.status_code, r.text)
        assert r.text == "Invalid option"


def test_a_pool_step_is_bounded(monitor: MonitorProcess, worker: CeleryWorker) -> None:
    def processes() -> int:
        r = monitor.client.get("/api/workers",
                               params={"workername": worker.hostname, "refresh": "true"})
        return len(r.json()[worker.hostname]["stats"]["pool"]["processes"])

    before = processes()
    for n in ("1001", str(10**30)):
        r = monitor.client.post(f"/api/worker/pool/grow/{worker.hostname}", params={"n": n})
        assert r.status_code == 400 and "at most 1000" in r.text, r.text
    assert processes() == before


def test_a_broker_that_is_gone_is_a_503_not_a_400() -> None:
    """Publishing to a broker nobody listens on: the client did nothing wrong."""
    import asyncio

    from celeriac.server import create_app
    from celeriac.settings import Settings

    app = create_app(Settings(broker="redis://127.0.0.1:1/0", unauthenticated_api=True,
                              db=":memory:"))
    app.state.cluster.app.conf.broker_transport_options = {"max_retries": 0}
    app.state.cluster.app.conf.task_publish_retry = False

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t", timeout=60) as c:
            return await c.post("/api/task/send-task/tests.add", json={"args": [1, 2]})

    r = asyncio.run(send())
    assert r.status_code == 503, r.text
    assert r.text == "The broker is unavailable"


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/task/result/"), ("GET", "/api/task/result/%0A?timeout=1"),
    ("POST", "/api/task/revoke/%0A"), ("POST", "/api/task/abort/"),
    ("POST", "/api/task/send-task/%0A"), ("GET", "/api/task/info/%0A"),
])
def test_an_empty_task_id_or_name_is_unknown(
    monitor: MonitorProcess, method: str, path: str
) -> None:
    """Starlette lets an empty path parameter through, and a line break at the end of a path
    too; Celery refuses an empty id (a ValueError, once a 500)."""
    r = monitor.client.request(method, path)
    assert r.status_code == 404, r.text
    assert r.text == "Unknown task ''"
