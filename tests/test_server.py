"""The HTTP layer on its own: auth rules, unknown paths, the OpenAPI description, the prefix.

These run the ASGI app in-process without starting the cluster (no lifespan), which is enough
for everything that does not touch the broker; endpoint behaviour is tested over real HTTP
against a running celeriac in tests/api/.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.routing import Mount, Route

from celeriac.api.openapi import spec
from celeriac.server import MAX_BODY_BYTES, create_app, routes
from celeriac.settings import Settings

BROKER = "redis://127.0.0.1:1/0"  # never connected to: the lifespan does not run here


class InProcess:
    """Requests straight into the ASGI app; no lifespan, so the cluster never starts."""

    def __init__(self, **settings: object) -> None:
        self.app = create_app(Settings(broker=BROKER, **settings))  # type: ignore[arg-type]

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.get(path, headers=headers)

        return asyncio.run(go())


client = InProcess


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_secure_by_default_refuses_api_and_pages_but_not_healthcheck() -> None:
    c = client()
    r = c.get("/api/openapi.json")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("text/plain")
    assert "--unauthenticated-api" in r.text
    assert (c.get("/")).status_code == 401
    r = c.get("/healthcheck")
    assert (r.status_code, r.text) == (200, "OK")


def test_unauthenticated_api_opens_it() -> None:
    c = client(unauthenticated_api=True)
    assert (c.get("/api/openapi.json")).status_code == 200


def test_basic_auth() -> None:
    c = client(basic_auth=(("ann", "s3cret"),))
    r = c.get("/api/openapi.json")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    assert "s3cret" not in r.text
    assert (c.get("/api/openapi.json", headers=basic("ann", "wrong"))).status_code == 401
    assert (c.get("/api/openapi.json", headers=basic("bob", "s3cret"))).status_code == 401
    bad = {"Authorization": "Basic %%%not-base64"}
    assert (c.get("/api/openapi.json", headers=bad)).status_code == 401
    r = c.get("/api/openapi.json", headers=basic("ann", "s3cret"))
    assert r.status_code == 200


def test_unknown_path_is_an_empty_plain_404() -> None:
    c = client(unauthenticated_api=True)
    r = c.get("/api/nope")
    assert (r.status_code, r.text) == (404, "")


def test_wrong_method_is_405_not_500() -> None:
    c = client(unauthenticated_api=True)
    r = c.get("/api/task/apply/tasks.add")
    assert r.status_code == 405


@pytest.mark.parametrize("prefix", ["/flower", "flower/"])
def test_url_prefix(prefix: str) -> None:
    c = client(unauthenticated_api=True, url_prefix=prefix)
    assert (c.get("/flower/healthcheck")).text == "OK"
    r = c.get("/flower/api/openapi.json")
    assert r.status_code == 200
    assert r.json()["servers"] == [{"url": "/flower"}]
    assert (c.get("/api/openapi.json")).status_code == 404


def _paths(route_list: list, prefix: str = "") -> set[str]:
    found: set[str] = set()
    for route in route_list:
        if isinstance(route, Mount):
            found |= _paths(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            found.add(prefix + route.path.replace(":path}", "}"))
    return found


def test_openapi_describes_every_api_route() -> None:
    described = set(spec()["paths"])
    served = {
        p for p in _paths(routes()) if p.startswith("/api") or p in ("/healthcheck", "/metrics")
    }
    # /api/task/info without an id only exists to answer Flower's "Unknown task ''".
    served.discard("/api/task/info")
    missing = served - described
    assert not missing, f"routes missing from the OpenAPI description: {sorted(missing)}"
    assert not described - served, "described paths that are not served"


def test_request_bodies_are_capped() -> None:
    app = create_app(Settings(broker=BROKER, unauthenticated_api=True))

    async def post(content: object, headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/api/task/send-task/tests.add", content=content,  # type: ignore[arg-type]
                                headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2048):  # 2 MiB in 1 KiB chunks, without a Content-Length
            yield b" " * 1024

    json_type = {"content-type": "application/json"}
    r = asyncio.run(post(b" " * (MAX_BODY_BYTES + 1), json_type))
    assert (r.status_code, r.text) == (413, f"Request body larger than {MAX_BODY_BYTES} bytes")
    r = asyncio.run(post(chunks(), json_type))
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("text/plain")
    r = asyncio.run(post(b"{}", {**json_type, "content-length": "-5"}))
    assert r.status_code == 400
