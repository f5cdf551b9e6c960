"""OpenID Connect sign-in against a real provider started here (oidc-provider-mock, built on
Authlib's server), with celeriac as a real process: the browser's part is played by httpx,
following every redirect by hand so each hop can be checked.

The client is registered with the provider (dynamic registration), so the provider checks the
client secret at its token endpoint and the callback URL against the one registered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx
import itsdangerous
import oidc_provider_mock
import pytest

from celeriac.oidc import SESSION_COOKIE
from celeriac.oidc import routes as oidc_routes
from celeriac.server import create_app, routes
from celeriac.settings import Settings, SettingsError
from tests.fixtures import BrokerInfo, MonitorFactory, MonitorProcess, free_port, wait_for

COOKIE_SECRET = "c00kie-S3cret-5b7d1e9f0a2c4e6b"
HTML = {"Accept": "text/html,application/xhtml+xml"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@dataclass
class Provider:
    url: str

    def register(self, *redirect_uris: str) -> tuple[str, str]:
        r = httpx.post(f"{self.url}/oauth2/clients", json={"redirect_uris": list(redirect_uris)})
        assert r.status_code == 201, r.text
        return r.json()["client_id"], r.json()["client_secret"]

    def add_user(self, email: str, **claims: object) -> None:
        r = httpx.put(f"{self.url}/users/{quote(email)}", json={"email": email, **claims})
        assert r.status_code == 204, r.text


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider_mock.run_server_in_thread(require_client_registration=True,
                                                 require_nonce=True) as server:
        yield Provider(f"http://localhost:{server.server_port}")


@dataclass
class Celeriac:
    monitor: MonitorProcess
    client_secret: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return self.monitor.url + self.prefix

    def browser(self) -> httpx.Client:
        return httpx.Client(timeout=30, headers=HTML)


def start(
    factory: MonitorFactory, broker: BrokerInfo, provider: Provider, tmp_path: Path,
    *extra: str, prefix: str = "",
) -> Celeriac:
    port = free_port()
    client_id, client_secret = provider.register(
        f"http://127.0.0.1:{port}{prefix}/oauth2/callback")
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(client_secret + "\n")
    args = ["--oidc-issuer", provider.url, "--oidc-client-id", client_id,
            "--oidc-client-secret-file", str(secret_file), "--log-level", "debug", *extra]
    if prefix:
        args += ["--url-prefix", prefix]
    monitor = factory(broker, *args, port=port, env={"CELERIAC_COOKIE_SECRET": COOKIE_SECRET},
                      wait=False)

    def healthy() -> bool:
        if not monitor.alive():
            pytest.fail(monitor.process.describe_death())
        return monitor.client.get(f"{prefix}/healthcheck", timeout=2).text == "OK"

    wait_for(healthy, 30, 0.05, "celeriac to answer", ignore=(httpx.TransportError,))
    return Celeriac(monitor, client_secret, prefix)


def sign_in(browser: httpx.Client, celeriac: Celeriac, provider: Provider, email: str,
            page: str = "/", seen: list[str] | None = None) -> httpx.Response:
    """Ask for ``page``, get sent to the provider, sign in there as ``email``, and follow the
    redirects back; every hop is checked and recorded in ``seen``."""
    seen = seen if seen is not None else []

    def get(url: str) -> httpx.Response:
        r = browser.get(url)
        seen.append(f"{r.status_code} {r.url} {r.headers.multi_items()} {r.text}")
        return r

    r = get(celeriac.url + page)
    assert r.status_code == 302, r.text
    login = urljoin(str(r.url), r.headers["location"])
    assert login == f"{celeriac.url}/login?next={quote(page, safe='/')}"
    r = get(login)
    assert r.status_code == 302
    authorize = r.headers["location"]
    assert authorize.startswith(f"{provider.url}/oauth2/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["redirect_uri"] == [f"{celeriac.url}/oauth2/callback"]
    assert query["code_challenge_method"] == ["S256"]  # PKCE
    assert query["nonce"] and query["state"]
    assert "openid" in query["scope"][0].split()
    form = get(authorize)
    assert form.status_code == 200, form.text
    r = browser.post(authorize, data={"sub": email})
    assert r.status_code == 302, r.text
    callback = r.headers["location"]
    assert callback.startswith(f"{celeriac.url}/oauth2/callback?code=")
    r = get(callback)
    if r.status_code == 303:
        assert r.headers["location"] == celeriac.prefix + page
        r = get(urljoin(str(r.url), r.headers["location"]))
    return r


def set_cookies(seen: list[str]) -> list[str]:
    """The Set-Cookie values among the recorded responses."""
    return re.findall(r"\('set-cookie', '([^']*)'\)", "\n".join(seen))


def session_cookie(browser: httpx.Client) -> str | None:
    return browser.cookies.get(SESSION_COOKIE)


def forge(payload: dict[str, object], secret: str = COOKIE_SECRET,
          signed_at: float | None = None) -> str:
    """A session cookie as Starlette's SessionMiddleware writes it (itsdangerous, timestamped)."""

    class At(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(signed_at if signed_at is not None else time.time())

    data = base64.b64encode(json.dumps(payload).encode())
    return At(secret).sign(data).decode()


# In-process: the rules, without a broker (the lifespan does not run) -----------------------


def in_process(base_url: str = "http://t", **settings: object) -> httpx.AsyncClient:
    flags = {"broker": "redis://127.0.0.1:1/0", "oidc_issuer": "http://localhost:1",
             "oidc_client_id": "c", "oidc_client_secret": "cl1ent-S3cret",
             "auth": r".*@example\.com", "cookie_secret": COOKIE_SECRET, **settings}
    app = create_app(Settings(**flags))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def every_path() -> list[tuple[str, str]]:
    """(method, path) of every route served, path parameters filled in."""
    found = []
    for route in [*routes(), *oidc_routes]:
        path = getattr(route, "path", "")
        path = path.replace("{name:path}", "w@h").replace("{task_id:path}", "x-1")
        path = re.sub(r"\{[^}]*\}", "x", path) or "/static/app.js"
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            found.append((method, path))
    return found


def test_without_a_session_pages_redirect_and_everything_else_is_401() -> None:
    async def go() -> None:
        async with in_process() as c:
            for method, path in every_path():
                if path.lstrip("/") in ("healthcheck", "login", "logout", "oauth2/callback"):
                    continue
                for accept in (HTML["Accept"], "*/*", "application/json"):
                    r = await c.request(method, path, headers={"Accept": accept})
                    page = (method in ("GET", "HEAD") and "html" in accept
                            and not path.startswith(("/api/", "/metrics")))
                    assert r.status_code == (302 if page else 401), (method, path, accept)
                    assert r.text in ("Sign-in required", "Authentication required", ""), path
                    if page:
                        assert r.headers["location"].startswith("/login?next=/")
                    assert "set-cookie" not in r.headers
            # A stray Authorization header is refused, not redirected.
            r = await c.get("/", headers={**HTML, "Authorization": "Basic eDp5"})
            assert r.status_code == 401

    asyncio.run(go())


def test_the_cookie_is_secure_on_https_and_only_there(provider: Provider) -> None:
    async def go() -> None:
        for scheme in ("https", "http"):
            async with in_process(f"{scheme}://t", oidc_issuer=provider.url) as c:
                r = await c.get("/login?next=/tasks")
                assert r.status_code == 302, r.text
                query = parse_qs(urlsplit(r.headers["location"]).query)
                assert query["redirect_uri"] == [f"{scheme}://t/oauth2/callback"]
                cookie = r.headers["set-cookie"].lower()
                assert cookie.startswith(f"{SESSION_COOKIE}=")
                assert "httponly" in cookie and "samesite=lax" in cookie
                assert ("; secure" in cookie) is (scheme == "https")

    asyncio.run(go())


# The flow ----------------------------------------------------------------------------------


def test_sign_in_gets_the_ui_and_the_api_it_uses(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, provider: Provider,
    tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--auth", r".*@example\.com", "--oidc-domains", "example.org")
    provider.add_user("alice@example.com", name="Alice", email_verified=True)
    seen: list[str] = []
    with celeriac.browser() as browser:
        r = sign_in(browser, celeriac, provider, "alice@example.com", "/tasks", seen)
        assert r.status_code == 200, r.text
        assert "<title>Tasks" in r.text
        assert 'alice@example.com · <a href="/logout">Sign out</a>' in r.text
        flags = next(c for c in set_cookies(seen) if c.startswith(SESSION_COOKIE)).lower()
        assert "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
        assert "secure" not in flags  # plain http on this machine: Secure would lose it
        # The pages' own API calls are authenticated by the session.
        for path in ("/", "/workers", "/broker", "/api/workers", "/api/tasks", "/metrics"):
            r = browser.get(celeriac.url + path)
            seen.append(r.text)
            assert r.status_code == 200, (path, r.text)
        # An admin by default: acts, from this origin; not when another site asks (CSRF).
        r = browser.post(f"{celeriac.url}/api/task/revoke/nope-1", headers=SAME_ORIGIN)
        assert r.status_code == 200, r.text
        r = browser.post(f"{celeriac.url}/api/task/revoke/nope-1",
                         headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403
        # A domain listed in --oidc-domains gets in too.
        provider.add_user("carol@Example.ORG")
    with celeriac.browser() as browser:
        r = sign_in(browser, celeriac, provider, "carol@Example.ORG", "/", seen)
        assert r.status_code == 200 and "<title>Dashboard" in r.text

    # Without the session: pages send browsers to sign in; the API and scripts get 401.
    with httpx.Client(timeout=10) as anonymous:
        for path in ("/", "/tasks", "/task/x-1", "/worker/w@h", "/broker", "/static/app.js"):
            r = anonymous.get(celeriac.url + path, headers=HTML)
            assert r.status_code == 302, path
            assert r.headers["location"].startswith("/login?next=")
            assert "celeriac" not in r.text
        for path in ("/api/workers", "/api/tasks", "/api/openapi.json", "/metrics",
                     "/ui/stream", "/static/app.js"):
            r = anonymous.get(celeriac.url + path)
            assert r.status_code == 401, path
            assert "location" not in r.headers
        assert anonymous.post(f"{celeriac.url}/api/task/revoke/nope-1").status_code == 401
        assert anonymous.get(celeriac.url + "/healthcheck").status_code == 200

    log = celeriac.monitor.log_text()
    assert "alice@example.com signed in (admin)" in log
    assert f"OpenID Connect sign-in via {provider.url}" in log
    for secret in (celeriac.client_secret, COOKIE_SECRET):
        assert secret not in log
        for text in seen:
            assert secret not in text


def test_an_address_not_allowed_gets_a_clear_403(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, provider: Provider,
    tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--auth", r"alice@example\.com|bob@example\.com")
    # A look-alike domain does not match: the whole address must match the pattern.
    for email in ("mallory@other.org", "alice@example.com.evil.org", "xalice@example.com"):
        provider.add_user(email)
        with celeriac.browser() as browser:
            r = sign_in(browser, celeriac, provider, email)
            assert r.status_code == 403
            assert "Access denied" in r.text and email in r.text
            assert session_cookie(browser) is None
            assert browser.get(celeriac.url + "/").status_code == 302
            assert browser.get(celeriac.url + "/api/workers").status_code == 401
    provider.add_user("bob@example.com", email_verified=False)
    with celeriac.browser() as browser:
        r = sign_in(browser, celeriac, provider, "bob@example.com")
        assert r.status_code == 403 and "not verified" in r.text
    assert "refused a sign-in of mallory@other.org" in celeriac.monitor.log_text()


def test_tampered_expired_and_signed_out_sessions_are_refused(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, provider: Provider,
    tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--oidc-domains", "example.com", "--session-max-age", "1h")
    provider.add_user("dave@example.com")

    def refused(cookie: str) -> bool:
        with httpx.Client(timeout=10, cookies={SESSION_COOKIE: cookie}) as c:
            page = c.get(celeriac.url + "/", headers=HTML)
            api = c.get(celeriac.url + "/api/workers")
            return page.status_code == 302 and api.status_code == 401

    now = time.time()
    user = {"email": "dave@example.com", "exp": int(now + 600), "sid": "forged-1"}
    # The forging is right: a cookie signed with the secret, still valid, gets in ...
    assert not refused(forge({"user": user}))
    # ... and each of these does not.
    assert refused(forge({"user": user}, secret="another-secret-of-32-characters!"))
    assert refused(forge({"user": user}, signed_at=now - 3601))  # the cookie's age
    assert refused(forge({"user": {**user, "exp": int(now - 1)}}))  # the sign-in's end
    assert refused(forge({"user": {**user, "email": "eve@evil.org"}}))  # not allowed
    assert refused(forge({"user": {k: v for k, v in user.items() if k != "sid"}}))
    assert refused(forge({"user": "dave@example.com"}))
    assert refused("not a cookie")

    with celeriac.browser() as browser:
        assert sign_in(browser, celeriac, provider, "dave@example.com").status_code == 200
        cookie = session_cookie(browser)
        assert cookie is not None and not refused(cookie)
        # Any change to the signed value is refused.
        value, _, signature = cookie.rpartition(".")
        flipped = ("A" if signature[0] != "A" else "B") + signature[1:]  # (not the last:
        # its low bits are base64 padding)
        assert refused(f"{value}.{flipped}")
        payload = json.loads(base64.b64decode(cookie.split(".")[0]))
        payload["user"]["email"] = "dave@example.com "
        assert refused(base64.b64encode(json.dumps(payload).encode()).decode()
                       + cookie[cookie.index("."):])
        # Signing out ends it in this browser, and for a copy of the cookie taken before.
        r = browser.get(celeriac.url + "/logout")
        assert r.status_code == 200 and "Signed out" in r.text
        assert session_cookie(browser) is None
        assert browser.get(celeriac.url + "/").status_code == 302
        assert refused(cookie)
    assert "dave@example.com signed out" in celeriac.monitor.log_text()


def test_read_only_users_and_provider_refusals(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, provider: Provider,
    tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--oidc-domains", "example.net", "--oidc-admins", r"boss@example\.net")
    provider.add_user("boss@example.net")
    provider.add_user("intern@example.net")
    with celeriac.browser() as boss, celeriac.browser() as intern:
        assert sign_in(boss, celeriac, provider, "boss@example.net").status_code == 200
        assert sign_in(intern, celeriac, provider, "intern@example.net").status_code == 200
        assert intern.get(celeriac.url + "/api/tasks").status_code == 200
        assert "intern@example.net (read-only)" in intern.get(celeriac.url + "/").text
        revoke = f"{celeriac.url}/api/task/revoke/nope-2"
        r = intern.post(revoke, headers=SAME_ORIGIN)
        assert r.status_code == 403 and "intern@example.net" in r.text
        assert boss.post(revoke, headers=SAME_ORIGIN).status_code == 200
    log = celeriac.monitor.log_text()
    assert "intern@example.net signed in (read-only)" in log
    assert "boss@example.net signed in (admin)" in log

    with celeriac.browser() as browser:
        # The user says no at the provider.
        r = browser.get(celeriac.url + "/login")
        authorize = r.headers["location"]
        r = browser.post(authorize, data={"action": "deny"})
        assert r.status_code == 302
        r = browser.get(r.headers["location"])
        assert r.status_code == 403 and "did not sign you in" in r.text
        # A callback this browser did not start (forged or replayed) is refused.
        r = browser.get(celeriac.url + "/oauth2/callback?code=abc&state=xyz")
        assert r.status_code == 400 and "Sign-in failed" in r.text
        assert browser.get(celeriac.url + "/api/workers").status_code == 401
        # ``next`` never leads to another site.
        r = browser.get(celeriac.url + "/login?next=//evil.example/x")
        assert r.status_code == 302
        provider.add_user("boss@example.net")
        r = browser.post(r.headers["location"], data={"sub": "boss@example.net"})
        r = browser.get(r.headers["location"])
        assert (r.status_code, r.headers["location"]) == (303, "/")


def test_under_a_url_prefix(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, provider: Provider,
    tmp_path: Path,
) -> None:
    celeriac = start(celeriac_server, redis_broker, provider, tmp_path,
                     "--auth", r".*@example\.com", prefix="/flower")
    provider.add_user("erin@example.com")
    seen: list[str] = []
    with celeriac.browser() as browser:
        r = sign_in(browser, celeriac, provider, "erin@example.com", "/workers", seen)
        assert r.status_code == 200 and "<title>Workers" in r.text
        assert any(c.startswith(SESSION_COOKIE) and "path=/flower;" in c.lower()
                   for c in set_cookies(seen))
        assert browser.get(celeriac.url + "/api/workers").status_code == 200
        r = browser.get(celeriac.url + "/logout")
        assert 'href="/flower/login"' in r.text
    with httpx.Client(timeout=10) as anonymous:
        r = anonymous.get(celeriac.url + "/tasks?state=FAILURE", headers=HTML)
        assert r.headers["location"] == "/flower/login?next=/tasks%3Fstate%3DFAILURE"
        # Behind a TLS proxy on this machine: an https callback URL and a Secure cookie.
        r = anonymous.get(celeriac.url + "/login", headers={"X-Forwarded-Proto": "https"})
        query = parse_qs(urlsplit(r.headers["location"]).query)
        assert query["redirect_uri"] == [
            f"https://127.0.0.1:{celeriac.monitor.port}/flower/oauth2/callback"]
        assert "; secure" in r.headers["set-cookie"].lower()


def test_a_provider_that_is_down_gets_a_clear_page(
    redis_broker: BrokerInfo, celeriac_server: MonitorFactory, tmp_path: Path,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    monitor = celeriac_server(redis_broker, "--oidc-issuer", nobody, "--oidc-client-id", "c",
                              "--auth", ".*", env={"CELERIAC_OIDC_CLIENT_SECRET": "s3cret-x1"})
    r = monitor.client.get("/login")
    assert r.status_code == 502 and "cannot be reached" in r.text
    assert "s3cret-x1" not in monitor.log_text()


def test_a_configured_redirect_uri_wins_over_the_host(provider: Provider) -> None:
    public = "https://celeriac.example.com/monitor/oauth2/callback"

    async def go() -> None:
        async with in_process(oidc_issuer=provider.url, oidc_redirect_uri=public) as c:
            r = await c.get("/login", headers={"Host": "127.0.0.1:5555"})
            query = parse_qs(urlsplit(r.headers["location"]).query)
            assert query["redirect_uri"] == [public]

    asyncio.run(go())


def test_repeated_sign_in_attempts_keep_one_pending(provider: Provider) -> None:
    async def go() -> None:
        async with in_process(oidc_issuer=provider.url) as c:
            for _ in range(20):
                r = await c.get("/login")
                assert r.status_code == 302
            cookie = c.cookies[SESSION_COOKIE]
            pending = json.loads(base64.b64decode(cookie.split(".")[0]))
            assert len([k for k in pending if k.startswith("_state_")]) == 1
            assert len(cookie) < 2000

    asyncio.run(go())


def test_oidc_alone_lets_celeriac_listen_beyond_this_machine(tmp_path: Path) -> None:
    from tests.test_auth import run_celeriac

    base = ["--broker", "redis://127.0.0.1:1/0", "--address", "0.0.0.0",
            "--oidc-issuer", "https://id.example.com", "--oidc-client-id", "c"]
    env = {"CELERIAC_OIDC_CLIENT_SECRET": "cl1ent-S3cret"}
    done = run_celeriac(*base, "--oidc-domains", "example.com", env=env)
    assert done.returncode == 1 and "cannot connect to broker" in done.stderr
    done = run_celeriac(*base, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("celeriac: invalid setting: oidc_issuer: say who")
    for d in (run_celeriac(*base, "--auth", "(", env=env),
              run_celeriac(*base, "--auth", ".*", "--cookie-secret", "sh0rt-k3y", env=env)):
        assert d.returncode == 2 and len(d.stderr.strip().splitlines()) == 1
        assert "cl1ent-S3cret" not in d.stderr + d.stdout and "sh0rt-k3y" not in d.stderr


# Settings -----------------------------------------------------------------------------------


def oidc(**kw: object) -> dict[str, object]:
    return {"oidc_issuer": "https://id.example.com", "oidc_client_id": "celeriac",
            "oidc_client_secret": "cl1ent-S3cret", "auth": r".*@example\.com", **kw}


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"auth": ".*"}, "auth: needs oidc_issuer"),
        ({"cookie_secret": "x" * 32}, "cookie_secret: needs oidc_issuer"),
        (oidc(auth=None), "say who may sign in"),
        (oidc(oidc_client_secret=None), "needs oidc_client_id and oidc_client_secret"),
        (oidc(oidc_issuer="http://id.example.com"), "must be https"),
        (oidc(oidc_issuer="id.example.com"), "expected an https:// URL"),
        (oidc(auth="(unclosed"), "auth: not a regular expression"),
        (oidc(oidc_scopes="email"), "must include openid"),
        (oidc(cookie_secret="short"), "cookie_secret: too short"),
        (oidc(oidc_domains="a@b.com"), "not an e-mail domain"),
        (oidc(session_max_age="soon"), "expected a duration"),
        (oidc(oidc_redirect_uri="https://h/callback"), "oidc_redirect_uri: expected the public"),
        ({"oidc_redirect_uri": "https://h/oauth2/callback"}, "needs oidc_issuer"),
    ],
)
def test_settings_refuse_incomplete_or_unsafe_oidc(flags: dict[str, object], needle: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(needle)) as info:
        Settings.build(flags, environ={})
    assert "cl1ent-S3cret" not in str(info.value)


def test_settings_from_environment_and_file(tmp_path: Path) -> None:
    env = {"CELERIAC_OIDC_ISSUER": "http://localhost:9400", "CELERIAC_OIDC_CLIENT_ID": "c",
           "CELERIAC_OIDC_CLIENT_SECRET": "cl1ent-S3cret", "CELERIAC_AUTH": ".*",
           "CELERIAC_COOKIE_SECRET": COOKIE_SECRET, "CELERIAC_OIDC_READ_ONLY": "true",
           "CELERIAC_OIDC_DOMAINS": "@Example.com, example.org"}
    s = Settings.build({}, environ=env)
    assert s.oidc_read_only and s.oidc_domains == ("example.com", "example.org")
    assert s.has_credentials and not s.replace(address="0.0.0.0").exposed_without_auth
    assert "cl1ent-S3cret" not in repr(s) and COOKIE_SECRET not in repr(s)
    secret = tmp_path / "secret"
    secret.write_text("fr0m-a-F1le\n")
    s = Settings.build({"oidc_client_secret_file": str(secret)},
                       environ={**env, "CELERIAC_OIDC_CLIENT_SECRET": ""})
    assert s.oidc_client_secret == "fr0m-a-F1le"
    with pytest.raises(SettingsError, match="given twice"):
        Settings.build({"oidc_client_secret_file": str(secret)}, environ=env)
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.build({"oidc_client_secret_file": str(tmp_path / "none")},
                       environ={**env, "CELERIAC_OIDC_CLIENT_SECRET": ""})
