"""Auth: basic auth and API tokens, the read-only role, CSRF, TLS, and secrets kept secret.

The rules are checked in-process first (no broker needed), then against a real celeriac with a
real worker: a read-only token reads everything and cannot act, an admin token acts, and no
secret shows in any response or in celeriac's log.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from celeriac.api.openapi import spec
from celeriac.auth import Credentials, describe
from celeriac.server import create_app, routes
from celeriac.settings import ApiToken, Settings
from tests.fixtures import BrokerInfo, MonitorFactory, WorkerFactory, free_port, wait_for

BROKER = "redis://127.0.0.1:1/0"  # never connected to: the lifespan does not run in-process

ADMIN_TOKEN = "adm1n-T0ken-4f9c2e7a"
READER_TOKEN = "r3ader-T0ken-8d1b6c3f"
FILE_TOKEN = "f1le-T0ken-0a5e9d2b"
OPS_PASSWORD = "0ps-Passw0rd-77e1"
VIEWER_PASSWORD = "v1ewer-Passw0rd-19c4"
SECRETS = (ADMIN_TOKEN, READER_TOKEN, FILE_TOKEN, OPS_PASSWORD, VIEWER_PASSWORD)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class InProcess:
    """Requests straight into the ASGI app; no lifespan, so the cluster never starts."""

    def __init__(self, **settings: object) -> None:
        self.app = create_app(Settings(broker=BROKER, **settings))  # type: ignore[arg-type]

    def request(self, method: str, path: str, headers: dict[str, Any] | None = None,
                content: bytes | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.request(method, path, headers=headers, content=content)

        return asyncio.run(go())


def configured() -> InProcess:
    return InProcess(
        basic_auth=(("ops", OPS_PASSWORD),),
        basic_auth_read_only=(("viewer", VIEWER_PASSWORD),),
        api_tokens=(ApiToken("ci", ADMIN_TOKEN), ApiToken("grafana", READER_TOKEN, True)),
    )


def post_paths() -> list[str]:
    """Every route served that takes POST, with its path parameters filled in."""
    found = []
    for route in routes():
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            path = route.path.replace("{name:path}", "tests.add")
            found.append(path.replace("{task_id:path}", "x-1"))
    return found


# In-process ---------------------------------------------------------------------------------


def test_tokens_and_users_get_in_and_wrong_ones_do_not() -> None:
    c = configured()
    for headers in (bearer(ADMIN_TOKEN), bearer(READER_TOKEN), basic("ops", OPS_PASSWORD),
                    basic("viewer", VIEWER_PASSWORD), {"authorization": f"bearer {ADMIN_TOKEN}"}):
        assert c.request("GET", "/api/openapi.json", headers).status_code == 200, headers
    for headers in (bearer(ADMIN_TOKEN + "x"), bearer(ADMIN_TOKEN[:-1]), bearer(""),
                    basic("ops", VIEWER_PASSWORD), basic("viewer", OPS_PASSWORD),
                    basic("ci", ADMIN_TOKEN), {"Authorization": ADMIN_TOKEN},
                    {"Authorization": "Basic %%%"}, {"Authorization": b"Bearer \xe9"}):
        r = c.request("GET", "/api/openapi.json", headers)
        assert r.status_code == 401, headers
        assert r.text == "Invalid credentials"
    r = c.request("GET", "/api/openapi.json")
    assert (r.status_code, r.text) == (401, "Authentication required")
    challenges = r.headers.get_list("www-authenticate")
    assert [h.split()[0] for h in challenges] == ["Basic", "Bearer"]
    assert c.request("GET", "/healthcheck").text == "OK"


def test_read_only_reads_everything_and_cannot_act() -> None:
    c = configured()
    paths = post_paths()
    assert len(paths) == sum("post" in ops for ops in spec()["paths"].values()) >= 14
    for who in (bearer(READER_TOKEN), basic("viewer", VIEWER_PASSWORD)):
        assert c.request("GET", "/api/openapi.json", who).status_code == 200
        assert c.request("HEAD", "/healthcheck", who).status_code == 200
        for path in paths:
            r = c.request("POST", path, who)
            assert r.status_code == 403, path
            assert "Read-only access" in r.text
            assert r.headers["content-type"].startswith("text/plain")
        # Any other method that could change something is refused as well.
        for method in ("PUT", "DELETE", "PATCH"):
            assert c.request(method, "/api/tasks", who).status_code == 403
    # Read-only mode comes first: before unknown paths, methods and arguments.
    assert c.request("POST", "/api/nope", bearer(READER_TOKEN)).status_code == 403
    # An admin gets through to the routing (405: openapi.json is GET only).
    assert c.request("POST", "/api/openapi.json", bearer(ADMIN_TOKEN)).status_code == 405


def test_cross_site_posts_are_refused_for_browser_credentials_only() -> None:
    c = configured()
    admin = basic("ops", OPS_PASSWORD)
    for extra in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                  {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        r = c.request("POST", "/api/openapi.json", {**admin, **extra})
        assert (r.status_code, r.text) == (403, "Cross-site request refused"), extra
    for extra in ({"Origin": "http://t"}, {"Sec-Fetch-Site": "same-origin"}, {}):
        assert c.request("POST", "/api/openapi.json", {**admin, **extra}).status_code == 405
    # Reads are never refused for their origin, and a bearer token is not sent by browsers.
    assert c.request("GET", "/api/openapi.json",
                     {**admin, "Origin": "http://evil.example"}).status_code == 200
    assert c.request("POST", "/api/openapi.json",
                     {**bearer(ADMIN_TOKEN), "Origin": "http://evil.example"}).status_code == 405
    # An open celeriac on loopback is a target too: any page the operator visits could post.
    open_c = InProcess(unauthenticated_api=True)
    assert open_c.request("POST", "/api/task/revoke/x",
                          {"Origin": "http://evil.example"}).status_code == 403


def test_metrics_need_credentials_unless_public() -> None:
    closed = configured()
    assert closed.request("GET", "/metrics").status_code == 401
    public = InProcess(api_tokens=(ApiToken("ci", ADMIN_TOKEN),), metrics_public=True)
    assert public.request("GET", "/metrics").status_code != 401
    assert public.request("GET", "/api/openapi.json").status_code == 401


def test_no_secret_in_refusals_or_descriptions() -> None:
    c = configured()
    texts = []
    for headers in (bearer(ADMIN_TOKEN + "x"), basic("ops", OPS_PASSWORD + "x"), {}):
        r = c.request("GET", "/api/openapi.json", headers)
        texts.append(r.text + str(r.headers))
    s = Settings(basic_auth=(("ops", OPS_PASSWORD),),
                 api_tokens=(ApiToken("ci", ADMIN_TOKEN), ApiToken("grafana", READER_TOKEN, True)))
    texts += [repr(s), describe(s), repr(Credentials(s).tokens)]
    assert "ci" in describe(s) and "grafana" in describe(s)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_credentials_check_every_entry() -> None:
    creds = Credentials(Settings(api_tokens=(ApiToken("a", "t1"), ApiToken("b", "t2", True))))
    assert creds.bearer("t2") is not None and creds.bearer("t2").read_only  # type: ignore[union-attr]
    assert creds.bearer("t1") is not None and not creds.bearer("t1").read_only  # type: ignore[union-attr]
    assert creds.bearer("t3") is None
    assert creds.basic("a", "t1") is None


def test_oversized_body_is_413_before_auth_is_even_needed_to_read_it() -> None:
    c = configured()
    big = b"x" * (1024 * 1024 + 1)
    # Without credentials: refused, never read.
    assert c.request("POST", "/api/task/send-task/tests.add", content=big).status_code == 401
    r = c.request("POST", "/api/task/send-task/tests.add", bearer(ADMIN_TOKEN), content=big)
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("text/plain")


# Real processes -----------------------------------------------------------------------------


def test_a_real_celeriac_with_tokens_users_and_a_worker(
    redis_broker: BrokerInfo,
    celery_worker: WorkerFactory,
    celeriac_server: MonitorFactory,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# deploy tokens\n\nfiler:{FILE_TOKEN}:read-only\n")
    worker = celery_worker(redis_broker)
    monitor = celeriac_server(
        redis_broker,
        "--api-token", f"ci:{ADMIN_TOKEN}",
        "--api-token-file", str(token_file),
        "--basic-auth", f"ops:{OPS_PASSWORD}",
        "--basic-auth-read-only", f"viewer:{VIEWER_PASSWORD}",
        "--log-level", "debug",
        env={"CELERIAC_API_TOKENS": f"grafana:{READER_TOKEN}:read-only"},
    )
    seen: list[str] = []

    def call(method: str, path: str, headers: dict[str, str], **kw: object) -> httpx.Response:
        r = monitor.client.request(method, path, headers=headers, **kw)  # type: ignore[arg-type]
        seen.append(f"{r.status_code} {r.headers} {r.text}")
        return r

    admin, reader, filer = bearer(ADMIN_TOKEN), bearer(READER_TOKEN), bearer(FILE_TOKEN)
    viewer = basic("viewer", VIEWER_PASSWORD)

    def online() -> bool:
        return call("GET", "/api/workers?status=true", reader).json().get(worker.hostname) is True

    wait_for(online, 30, 0.2, "the worker to show online")
    for who in (reader, filer, viewer, admin):
        assert call("GET", f"/api/workers?workername={worker.hostname}", who).status_code == 200
        assert call("GET", "/api/tasks", who).status_code == 200
        assert call("GET", "/", who).status_code == 200
        assert call("GET", "/api/celeriac/status", who).status_code == 200
    for who in (reader, filer, viewer):
        for method, path in (
            ("POST", f"/api/worker/pool/grow/{worker.hostname}?n=1"),
            ("POST", f"/api/worker/shutdown/{worker.hostname}"),
            ("POST", "/api/task/async-apply/tests.add"),
            ("POST", "/api/task/revoke/some-id"),
        ):
            r = call(method, path, who, json={"args": [1, 2]})
            assert r.status_code == 403, (path, r.text)
    assert call("GET", "/api/openapi.json", {}).status_code == 401
    assert call("GET", "/api/tasks", bearer(READER_TOKEN[::-1])).status_code == 401

    r = call("POST", "/api/task/async-apply/tests.add", admin, json={"args": [20, 22]})
    assert r.status_code == 200, r.text
    task_id = r.json()["task-id"]
    r = call("GET", f"/api/task/result/{task_id}?timeout=20", reader)
    assert r.json()["result"] == 42
    r = call("POST", "/api/task/apply/tests.add", basic("ops", OPS_PASSWORD), json={"args": [1, 1]})
    assert (r.status_code, r.json()["result"]) == (200, 2)

    log = monitor.log_text()
    assert "auth: basic auth (admin): ops" in log
    assert "API tokens (read-only): grafana, filer" in log
    for secret in SECRETS:
        assert secret not in log
        for text in seen:
            assert secret not in text


def run_celeriac(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    from tests.fixtures.monitors import clean_environ

    return subprocess.run([sys.executable, "-m", "celeriac", *args], capture_output=True,
                          text=True, timeout=60, env={**clean_environ(), **(env or {})})


def test_refuses_to_start_exposed_without_credentials() -> None:
    done = run_celeriac("--broker", BROKER, "--address", "0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "celeriac: refusing to listen on 0.0.0.0 without credentials: give --basic-auth or "
        "--api-token, or --unauthenticated-api to let anyone in"
    )
    # Any way of saying who may get in passes that gate (and then meets the closed broker).
    for extra, env in ((["--unauthenticated-api"], None),
                       ([], {"FLOWER_UNAUTHENTICATED_API": "true"}),
                       (["--api-token", f"ci:{ADMIN_TOKEN}"], None),
                       ([], {"CELERIAC_API_TOKENS": f"ci:{ADMIN_TOKEN}"}),
                       (["--basic-auth", f"ops:{OPS_PASSWORD}"], None)):
        done = run_celeriac("--broker", BROKER, "--address", "0.0.0.0", *extra, env=env)
        assert done.returncode == 1, (extra, done.stderr)
        assert "cannot connect to broker" in done.stderr
        for secret in SECRETS:
            assert secret not in done.stderr + done.stdout


def test_bad_token_settings_are_one_line_without_the_secret(tmp_path: Path) -> None:
    done = run_celeriac("--broker", BROKER, "--api-token", ADMIN_TOKEN)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "celeriac: invalid setting: api_tokens: expected NAME:TOKEN or NAME:TOKEN:read-only"
    )
    done = run_celeriac("--broker", BROKER, "--api-token-file", str(tmp_path / "none"))
    assert done.returncode == 2
    assert "api_token_file: cannot read" in done.stderr
    assert "No such file" in done.stderr


# TLS ----------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return certfile, keyfile


def test_tls(redis_broker: BrokerInfo, celeriac_server: MonitorFactory, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    port = free_port()
    celeriac_server(redis_broker, "--certfile", str(certfile), "--keyfile", str(keyfile),
                    "--api-token", f"ci:{ADMIN_TOKEN}", port=port, wait=False)
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False, timeout=10) as c:
        wait_for(lambda: c.get("/healthcheck").text == "OK", 30, 0.1, "https /healthcheck",
                 ignore=(httpx.TransportError,))
        assert c.get("/api/tasks").status_code == 401
        assert c.get("/api/tasks", headers=bearer(ADMIN_TOKEN)).status_code == 200
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as plain, \
            pytest.raises(httpx.TransportError):
        plain.get("/healthcheck")


def test_bad_certificate_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    done = run_celeriac("--broker", BROKER, "--certfile", str(junk))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("celeriac: invalid setting: certfile:"), lines
    certfile, _ = self_signed(tmp_path)
    done = run_celeriac("--broker", BROKER, "--keyfile", str(certfile))
    assert done.stderr.strip() == "celeriac: invalid setting: keyfile: given without certfile"
