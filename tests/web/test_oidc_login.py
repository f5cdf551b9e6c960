"""Signing in to the UI with OpenID Connect in a real Chromium: the provider's form, back to the
page asked for, live updates over the session, the cookie's flags, and signing out.

The provider (oidc-provider-mock) is started here; its form links a stylesheet on a CDN, so
every request that is not for this machine is aborted before it leaves the browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import oidc_provider_mock
import pytest

from celeriac.oidc import SESSION_COOKIE
from tests.fixtures import BrokerInfo, MonitorFactory
from tests.test_oidc import Provider, start


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider_mock.run_server_in_thread(require_client_registration=True,
                                                 require_nonce=True) as server:
        yield Provider(f"http://localhost:{server.server_port}")


def local_only(route: Any) -> None:
    host = urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        route.abort()


def test_sign_in_and_out_in_a_browser(
    browser: Any, redis_broker: BrokerInfo, celeriac_server: MonitorFactory,
    provider: Provider, tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--auth", r".*@example\.com", prefix="/monitor")
    provider.add_user("frank@example.com", name="Frank")
    context = browser.new_context()
    context.route("**/*", local_only)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(celeriac.url + "/tasks")
        assert page.url.startswith(f"{provider.url}/oauth2/authorize?")
        page.fill("input[name=sub]", "frank@example.com")
        with page.expect_response(lambda r: "/monitor/api/tasks" in r.url) as api:
            page.click("button[type=submit]:has-text('Authorize')")
            page.wait_for_url(celeriac.url + "/tasks")
        assert api.value.status == 200  # the page's own API calls carry the session
        assert page.title().startswith("Tasks")
        assert "frank@example.com" in page.inner_text("header .user")
        page.wait_for_selector("#live.on")  # the live stream runs on the session too
        cookie = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert cookie["path"] == "/monitor" and not cookie["secure"]
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it

        page.click("header .user a")
        page.wait_for_url(celeriac.url + "/logout")
        assert "Signed out" in page.inner_text("h1")
        assert not [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
        page.goto(celeriac.url + "/workers")
        assert page.url.startswith(f"{provider.url}/oauth2/authorize?")
    finally:
        context.close()
    assert not errors, errors
