"""Flower's command line, FLOWER_* variables and flowerconfig.py, in celeriac."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from celeriac.cli import main
from celeriac.settings import Settings, SettingsError
from tests.fixtures import BrokerInfo
from tests.fixtures.monitors import clean_environ
from tests.fixtures.processes import ManagedProcess, free_port, stop_all, wait_for


def build(*argv: str, env: dict[str, str] | None = None) -> Settings:
    """Settings from a command line, parsed by celeriac's own click command."""
    ctx = main.make_context("celeriac", list(argv), resilient_parsing=False)
    return Settings.build(ctx.params, environ=env or {})


def messages(s: Settings, level: str | None = None) -> str:
    return "\n".join(m for lvl, m in s.notices if level in (None, lvl))


def test_typical_flower_command_line_maps() -> None:
    s = build("--port=5556", "--broker=redis://h:6379/0", "--basic_auth=u:p,v:q",
              "--url_prefix=flower", "--persistent=True", "--db=flower.db",
              "--max_tasks=10000", "--enable_events", "--xheaders", "--inspect_timeout=2000",
              "--purge_offline_workers=60", "--cookie_secret=" + "x" * 32)
    assert (s.port, s.broker, s.prefix, s.db, s.max_tasks) == (
        5556, "redis://h:6379/0", "/flower", "flower.db", 10000)
    assert s.basic_auth == (("u", "p"), ("v", "q"))
    assert s.enable_events and s.xheaders
    assert (s.inspect_timeout, s.purge_offline_workers) == (2000.0, 60.0)
    assert "--persistent: celeriac always keeps its task history" in messages(s, "info")
    assert messages(s, "warning") == ""


def test_enable_events_spellings() -> None:
    assert build().enable_events  # on by default, as Flower
    assert not build("--no-enable-events").enable_events
    assert not build("--enable_events=False").enable_events
    assert build("--enable-events=true").enable_events
    assert not Settings.build({}, environ={"CELERIAC_ENABLE_EVENTS": "0"}).enable_events
    assert not Settings.build({}, environ={"FLOWER_ENABLE_EVENTS": "false"}).enable_events
    with pytest.raises(SettingsError, match="enable_events"):
        build("--enable_events=maybe")


def test_precedence_flag_celeriac_flower_conf_default(tmp_path: Path) -> None:
    conf = tmp_path / "flowerconfig.py"
    conf.write_text("port = 5001\nmax_tasks = 11\nxheaders = True\nbasic_auth = ['a:b']\n")
    env = {"FLOWER_PORT": "5002", "FLOWER_MAX_TASKS": "12", "CELERIAC_PORT": "5003"}
    s = build(f"--conf={conf}", env=env)
    assert (s.port, s.max_tasks, s.xheaders) == (5003, 12, True)  # CELERIAC, FLOWER, conf
    assert s.basic_auth == (("a", "b"),)
    assert build(f"--conf={conf}", "--port=5004", env=env).port == 5004  # the flag
    assert Settings.build({}, environ={}).port == 5555  # the default


def test_conf_reads_plain_assignments_only(tmp_path: Path) -> None:
    conf = tmp_path / "flowerconfig.py"
    conf.write_text(
        '"""Flower settings."""\nimport os\n'
        "port = 5600\n"
        "broker_api = 'http://guest:guest@localhost:15672/api/'\n"
        "address = os.environ.get('HOST', '0.0.0.0')\n"
        "def format_task(task):\n    return task\n"
        "colour = 'blue'\n"
    )
    s = build(f"--conf={conf}")
    assert s.port == 5600 and s.address == "127.0.0.1"  # the expression is not evaluated
    text = messages(s, "warning")
    assert "--broker_api is ignored" in text
    assert "address is not a plain value" in text
    assert "only simple 'name = value' assignments are read" in text  # the def
    assert "'colour' is not a Flower option" in text
    with pytest.raises(SettingsError, match="conf: no such file"):
        build(f"--conf={tmp_path / 'missing.py'}")
    (tmp_path / "bad.py").write_text("port = = 1\n")
    with pytest.raises(SettingsError, match="line 1: not valid Python"):
        build(f"--conf={tmp_path / 'bad.py'}")


@pytest.mark.parametrize("option", ["--max_workers=100", "--broker_api=http://x/api/",
                                    "--auto_refresh=False", "--natural_time",
                                    "--tasks_columns=name",
                                    "--state_save_interval=1000"])
def test_options_without_meaning_warn_and_say_why(option: str) -> None:
    s = build(option)
    name = option.split("=")[0]
    warnings = [m for lvl, m in s.notices if lvl == "warning"]
    assert len(warnings) == 1 and warnings[0].startswith(f"{name} is ignored: "), warnings


def test_flower_variables_for_flower_only_options() -> None:
    s = Settings.build({}, environ={"FLOWER_MAX_WORKERS": "5", "FLOWER_DEBUG": "true"})
    assert s.log_level == "debug"
    assert "--max_workers is ignored" in messages(s)
    # An explicit celeriac setting wins over Flower's variable, and Flower's flag over both.
    s = Settings.build({}, environ={"FLOWER_DEBUG": "true", "CELERIAC_LOG_LEVEL": "warning"})
    assert s.log_level == "warning"
    assert build("--debug", env={"CELERIAC_LOG_LEVEL": "warning"}).log_level == "debug"


def oauth(*extra: str, env: dict[str, str] | None = None) -> Settings:
    return build("--auth=.*@example\\.com", "--oauth2_key=client", "--oauth2_secret=shh",
                 *extra, env=env)


def test_oauth_maps_to_openid_connect() -> None:
    s = oauth("--auth_provider=flower.views.auth.GoogleAuth2LoginHandler")
    assert (s.oidc_issuer, s.oidc_client_id, s.oidc_client_secret) == (
        "https://accounts.google.com", "client", "shh")
    with pytest.raises(SettingsError, match="oidc_client_id: needs oidc_issuer"):
        oauth()  # Flower has no default provider either (its login page is a 404)
    s = oauth("--auth_provider=flower.views.auth.GitLabLoginHandler",
              env={"FLOWER_GITLAB_OAUTH_DOMAIN": "gitlab.example.org"})
    assert s.oidc_issuer == "https://gitlab.example.org"
    assert oauth("--auth_provider=flower.views.auth.GitLabLoginHandler").oidc_issuer == (
        "https://gitlab.com")
    s = oauth("--auth_provider=flower.views.auth.OktaLoginHandler",
              env={"FLOWER_OAUTH2_OKTA_BASE_URL": "https://acme.okta.com/oauth2/default"})
    assert s.oidc_issuer == "https://acme.okta.com/oauth2/default"
    with pytest.raises(SettingsError, match="FLOWER_OAUTH2_OKTA_BASE_URL"):
        oauth("--auth_provider=flower.views.auth.OktaLoginHandler")
    google = "flower.views.auth.GoogleAuth2LoginHandler"
    s = Settings.build({}, environ={"FLOWER_AUTH": ".*@example\\.com", "FLOWER_OAUTH2_KEY": "k",
                                    "FLOWER_OAUTH2_SECRET": "s", "FLOWER_AUTH_PROVIDER": google})
    assert (s.oidc_issuer, s.oidc_client_id) == ("https://accounts.google.com", "k")
    assert "shh" not in repr(s)


def test_github_is_refused_in_one_line() -> None:
    with pytest.raises(SettingsError) as exc:
        oauth("--auth_provider=flower.views.auth.GithubLoginHandler")
    assert "GitHub" in str(exc.value) and "OpenID Connect" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_flower_callback_url_becomes_celeriacs() -> None:
    s = oauth("--auth_provider=flower.views.auth.GoogleAuth2LoginHandler",
              "--oauth2_redirect_uri=https://flower.example.com/login")
    assert s.oidc_redirect_uri == "https://flower.example.com/oauth2/callback"
    assert "register it with the provider" in messages(s, "warning")


def test_read_only_makes_every_credential_read_only() -> None:
    s = build("--basic_auth=u:p", "--api-token=ci:tok", "--read_only")
    assert s.basic_auth == () and s.basic_auth_read_only == (("u", "p"),)
    assert all(t.read_only for t in s.api_tokens)
    with pytest.raises(SettingsError, match="read_only"):
        build("--read_only", "--unauthenticated-api")


def test_listening_options(tmp_path: Path) -> None:
    s = build("--unix_socket=/tmp/celeriac.sock", "--xheaders=False")
    assert s.unix_socket == "/tmp/celeriac.sock" and not s.xheaders
    with pytest.raises(SettingsError, match="ca_certs: given without certfile"):
        build(f"--ca_certs={tmp_path}")


# A real start with a typical Flower command line ------------------------------------------------


@pytest.fixture(scope="module")
def flower_style(redis_broker: BrokerInfo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """celeriac started as a systemd unit would have started Flower, in a directory of its own
    (``--db=flower.db`` is relative)."""
    workdir = tmp_path_factory.mktemp("flower-style")
    port = free_port()
    argv = [sys.executable, "-m", "celeriac", f"--port={port}", f"--broker={redis_broker.url}",
            "--basic_auth=u:p", "--url_prefix=flower", "--persistent=True", "--db=flower.db",
            "--max_tasks=10000", "--enable_events", "--xheaders", "--max_workers=500"]
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1"}
    proc = ManagedProcess(argv, workdir / "celeriac.log", env=env, cwd=workdir,
                          name=f"celeriac :{port}")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/flower", timeout=10)

    def healthy() -> bool:
        if not proc.alive():
            pytest.fail(proc.describe_death())
        return client.get("/healthcheck").status_code == 200

    wait_for(healthy, 30, 0.05, "celeriac to answer", ignore=(httpx.TransportError,))
    yield client, proc, workdir
    client.close()
    stop_all([proc], wait=True)


def test_flower_command_line_serves_the_api(flower_style: Any) -> None:
    client, proc, workdir = flower_style
    assert client.get("/api/workers").status_code == 401
    r = client.get("/api/workers", auth=("u", "p"))
    assert r.status_code == 200 and isinstance(r.json(), dict)
    assert client.get("/api/tasks", auth=("u", "p")).status_code == 200
    assert (workdir / "flower.db").is_file()  # the history where --db said
    log = proc.log_text()
    assert "--persistent: celeriac always keeps its task history" in log
    assert "--max_workers is ignored" in log
    assert "Traceback" not in log



def test_runtime_buckets_reach_the_metrics() -> None:
    from celeriac.server import create_app

    s = build("--task_runtime_metric_buckets=0.5,1,5")
    assert s.task_runtime_metric_buckets == (0.5, 1.0, 5.0)
    assert Settings.build({}, environ={"FLOWER_TASK_RUNTIME_METRIC_BUCKETS": "2,4"}
                          ).task_runtime_metric_buckets == (2.0, 4.0)
    for bad in ("5,1", "1,x", ","):
        with pytest.raises(SettingsError, match="task_runtime_metric_buckets"):
            build(f"--task_runtime_metric_buckets={bad}")
    app = create_app(s.replace(broker="redis://127.0.0.1:1/0", unauthenticated_api=True,
                               db=":memory:"))
    now = 1_700_000_000.0
    app.state.cluster.state.apply([
        {"type": "task-received", "uuid": "u1", "name": "t.a", "hostname": "w@h",
         "timestamp": now, "clock": 1},
        {"type": "task-succeeded", "uuid": "u1", "hostname": "w@h", "runtime": 0.7,
         "timestamp": now + 1, "clock": 2},
    ])
    body = app.state.metrics.render(None)[0].decode()
    bucket = 'flower_task_runtime_seconds_bucket{le="%s",task="t.a",worker="w@h"}'
    assert f"{bucket % '0.5'} 0.0" in body
    assert f"{bucket % '1.0'} 1.0" in body
    assert bucket % "0.005" not in body  # Flower's default buckets replaced


def test_flowers_own_state_file_is_left_alone(tmp_path: Path) -> None:
    shelf = tmp_path / "flower.db"
    shelf.write_bytes(b"GDBM\x00" + bytes(200))  # what Flower's shelve may have written
    s = build("--persistent=True", f"--db={shelf}")
    assert s.db == f"{shelf}.celeriac.sqlite3"
    assert "is Flower's state file" in messages(s, "warning")
    assert build(f"--db={shelf}").db == str(shelf)  # without --persistent: as given
    assert build("--persistent=False", f"--db={shelf}").db == str(shelf)
    assert build("--persistent", f"--db={tmp_path / 'new.db'}").db == str(tmp_path / "new.db")


@pytest.mark.parametrize("xheaders", ["--xheaders", "--xheaders=False"])
def test_unix_socket_and_xheaders(
    redis_broker: BrokerInfo, tmp_path: Path, xheaders: str
) -> None:
    """Served on a Unix socket; with --xheaders the proxy's X-Forwarded-Proto makes the
    redirects https, without it they stay as the request came (a socket is no trusted proxy)."""
    sock = tmp_path / "celeriac.sock"
    argv = [sys.executable, "-m", "celeriac", f"--broker={redis_broker.url}", "--db=memory",
            "--basic_auth=u:p", f"--unix_socket={sock}", "--url_prefix=flower", xheaders]
    env = {**clean_environ(), "PYTHONUNBUFFERED": "1"}
    proc = ManagedProcess(argv, tmp_path / "celeriac.log", env=env, cwd=tmp_path,
                          name="celeriac (unix socket)")
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                          base_url="http://celeriac", timeout=10)
    try:
        def healthy() -> bool:
            if not proc.alive():
                pytest.fail(proc.describe_death())
            return client.get("/flower/healthcheck").status_code == 200

        wait_for(healthy, 30, 0.05, "celeriac on its socket", ignore=(httpx.TransportError,))
        assert client.get("/flower/api/workers", auth=("u", "p")).status_code == 200
        r = client.get("/flower", headers={"X-Forwarded-Proto": "https"}, auth=("u", "p"))
        scheme = "https" if xheaders == "--xheaders" else "http"
        assert r.status_code == 307 and r.headers["location"] == f"{scheme}://celeriac/flower/"
    finally:
        client.close()
        stop_all([proc], wait=True)


def flower_option_names() -> set[str]:
    """Every option of the installed Flower (its list only), in Flower's spelling."""
    options = pytest.importorskip("flower.options")
    return {name.replace("-", "_") for name in options.default_options._options} - {"help"}


def test_every_flower_option_is_accepted_and_does_something_or_says_why(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text("not checked by the settings, only by the server at start\n")
    conf = tmp_path / "flowerconfig.py"
    conf.write_text("max_tasks = 7\n")
    oidc = ("--auth=.*@example\\.org", "--oauth2_key=k", "--oauth2_secret=s",
            "--auth_provider=flower.views.auth.GoogleAuth2LoginHandler")
    argv = {
        "address": ["--address=127.0.0.2"], "port": ["--port=5556"],
        "unix_socket": ["--unix_socket=/tmp/flower.sock"], "debug": ["--debug=True"],
        "inspect_timeout": ["--inspect_timeout=2500"], "auth": list(oidc),
        "basic_auth": ["--basic_auth=u:p"], "oauth2_key": list(oidc),
        "oauth2_secret": list(oidc), "auth_provider": list(oidc),
        "oauth2_redirect_uri": [*oidc, "--oauth2_redirect_uri=https://f.example.org/login"],
        "max_workers": ["--max_workers=10"], "max_tasks": ["--max_tasks=10"],
        "db": ["--db=flower"], "persistent": ["--persistent=True"],
        "state_save_interval": ["--state_save_interval=60000"],
        "broker_api": ["--broker_api=http://guest:guest@localhost:15672/api/"],
        "ca_certs": [f"--certfile={pem}", f"--ca_certs={pem}"],
        "certfile": [f"--certfile={pem}"], "keyfile": [f"--certfile={pem}", f"--keyfile={pem}"],
        "xheaders": ["--xheaders=True"], "auto_refresh": ["--auto_refresh=False"],
        "purge_offline_workers": ["--purge_offline_workers=60"],
        "cookie_secret": ["--cookie_secret=" + "s" * 40], "conf": [f"--conf={conf}"],
        "enable_events": ["--enable_events=False"], "format_task": ["--format_task=x"],
        "natural_time": ["--natural_time=True"], "tasks_columns": ["--tasks_columns=name,uuid"],
        "url_prefix": ["--url_prefix=flower"],
        "task_runtime_metric_buckets": ["--task_runtime_metric_buckets=1,10"],
        "read_only": ["--basic_auth=u:p", "--read_only=True"],
        "logging": ["--logging=debug"], "log_to_stderr": ["--log_to_stderr=True"],
        "log_file_prefix": ["--log_file_prefix=/var/log/flower.log"],
        "log_file_max_size": ["--log_file_max_size=1000"],
        "log_file_num_backups": ["--log_file_num_backups=3"],
        "log_rotate_mode": ["--log_rotate_mode=time"], "log_rotate_when": ["--log_rotate_when=D"],
        "log_rotate_interval": ["--log_rotate_interval=1"],
    }
    assert set(argv) == flower_option_names()  # a new Flower option needs a decision here
    default = Settings.build({}, environ={})
    for name, args in argv.items():
        s = build(*args)
        assert s != default or s.notices, f"--{name} did nothing and said nothing"
    assert build("--logging=warning").log_level == "warning"
    with pytest.raises(SettingsError, match="logging"):
        build("--logging=loud")
