"""The command line: parse flags, build settings, hand over. ``celeriac`` serves by default.

Flower's option names are kept (``--max_tasks`` spelled with ``_`` works too), so a Flower
command line can be switched to celeriac by changing the program name.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click

from celeriac import __version__
from celeriac.flower_options import FLOWER_ONLY
from celeriac.settings import FLOWER_FLAG_PREFIX, Settings, SettingsError


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The serve options, shared by ``celeriac`` and ``celery celeriac``."""
    opts = [
        click.option("--broker", "-b", help="Broker URL (CELERIAC_BROKER)."),
        click.option("--result-backend", "--result_backend", "result_backend",
                     help="Result backend URL, for task results and apply."),
        click.option("--cluster", "clusters", multiple=True, metavar="NAME=BROKER_URL",
                     help="Watch another cluster too, served under /clusters/NAME/ (repeatable; "
                          "CELERIAC_CLUSTERS: NAME=URL items, one a line or ',' separated)."),
        click.option("--cluster-app", "cluster_apps", multiple=True, metavar="NAME=MODULE",
                     help="The Celery app of cluster NAME, as in celery -A (repeatable)."),
        click.option("--cluster-result-backend", "cluster_result_backends", multiple=True,
                     metavar="NAME=URL", help="The result backend of cluster NAME (repeatable)."),
        click.option("--default-cluster", "default_cluster", metavar="NAME",
                     help="The cluster at Flower's paths: the name of --broker's (or -A's) "
                          "cluster [default], or without either one of the --cluster names "
                          "[the first]."),
        click.option("--address", help="Address to listen on [127.0.0.1]."),
        click.option("--port", type=int, help="Port to listen on [5555]."),
        click.option("--url-prefix", "--url_prefix", "url_prefix",
                     help="Serve under this path, behind a reverse proxy."),
        click.option("--basic-auth", "--basic_auth", "basic_auth",
                     help="user:password[,user:password...] for HTTP basic auth."),
        click.option("--basic-auth-read-only", "--basic_auth_read_only", "basic_auth_read_only",
                     help="user:password[,...]: basic-auth users who can read but not act."),
        click.option("--api-token", "--api_token", "api_tokens", multiple=True,
                     metavar="NAME:TOKEN[:read-only]",
                     help="A bearer token for the API (repeatable; also CELERIAC_API_TOKENS, "
                          "comma-separated). Admin unless marked read-only."),
        click.option("--api-token-file", "--api_token_file", "api_token_file",
                     type=click.Path(dir_okay=False),
                     help="A file of API tokens, NAME:TOKEN[:read-only] one a line."),
        click.option("--unauthenticated-api", "--unauthenticated_api", "unauthenticated_api",
                     is_flag=True, default=None,
                     help="Allow the API without credentials (FLOWER_UNAUTHENTICATED_API)."),
        click.option("--metrics-public", "--metrics_public", "metrics_public",
                     is_flag=True, default=None,
                     help="Serve /metrics without credentials."),
        click.option("--certfile", help="TLS: PEM certificate (chain), to serve https."),
        click.option("--keyfile", help="TLS: PEM private key, unless it is in --certfile."),
        click.option("--oidc-issuer", "oidc_issuer", metavar="URL",
                     help="OpenID Connect provider: sign in to the UI there."),
        click.option("--oidc-client-id", "oidc_client_id", help="OIDC client id."),
        click.option("--oidc-client-secret", "oidc_client_secret",
                     help="OIDC client secret (better: CELERIAC_OIDC_CLIENT_SECRET or a file)."),
        click.option("--oidc-client-secret-file", "oidc_client_secret_file",
                     type=click.Path(dir_okay=False), help="A file holding the client secret."),
        click.option("--auth", metavar="REGEX",
                     help="E-mail addresses allowed to sign in, as Flower's --auth "
                          r"(.*@example\.com, a@x\.org|b@x\.org)."),
        click.option("--oidc-domains", "oidc_domains", metavar="DOMAIN[,DOMAIN...]",
                     help="E-mail domains allowed to sign in (with or instead of --auth)."),
        click.option("--oidc-admins", "oidc_admins", metavar="REGEX",
                     help="Only these signed-in e-mails are admins; the others read-only."),
        click.option("--oidc-read-only", "oidc_read_only", is_flag=True, default=None,
                     help="Signed-in users can look but not act."),
        click.option("--oidc-scopes", "oidc_scopes", help="Scopes [openid email profile]."),
        click.option("--oidc-redirect-uri", "--oauth2_redirect_uri", "oidc_redirect_uri",
                     metavar="URL", help="The public URL of /oauth2/callback, when a proxy "
                     "does not pass on the Host [from the request]."),
        click.option("--cookie-secret", "cookie_secret",
                     help="Key signing session cookies [random: sign-ins end on restart]."),
        click.option("--session-max-age", "session_max_age",
                     help="How long a sign-in lasts (12h, 7d) [12h]."),
        click.option("--max-tasks", "--max_tasks", "max_tasks", type=int,
                     help="How many tasks to keep [100000]."),
        click.option("--inspect-timeout", "--inspect_timeout", "inspect_timeout", type=float,
                     help="Inspect timeout in milliseconds [1000]."),
        click.option("--purge-offline-workers", "--purge_offline_workers",
                     "purge_offline_workers", type=float,
                     help="Forget workers offline for this many seconds."),
        click.option("--db", help="Task history: a SQLite file, a postgresql:// URL (shared "
                     "by several instances), or 'memory' to keep nothing on disk [a SQLite "
                     "file per cluster in the user data directory] (CELERIAC_DB)."),
        click.option("--max-age", "--max_age", "max_age",
                     help="Prune finished tasks older than this (90s, 15m, 12h, 7d)."),
        click.option("--max-wait", "--max_wait", "max_wait",
                     help="The longest apply and result?timeout wait for a result (30s, 5m) "
                          "[5m]; longer timeouts are cut to it."),
        click.option("--bulk-max", "bulk_max", type=int,
                     help="The most tasks one bulk re-run or revoke acts on [1000]."),
        click.option("--event-queue", "--event_queue", "event_queue",
                     help="RabbitMQ: a stable event queue name, kept across restarts."),
        click.option("--alerts", metavar="FILE",
                     help="Alert rules and their webhooks, a TOML file (CELERIAC_ALERTS)."),
        click.option("--log-level", "--log_level", "log_level",
                     type=click.Choice(["debug", "info", "warning", "error"]),
                     help="Log level [info]."),
        click.option("--enable-events", "--enable_events", "enable_events", metavar="[BOOL]",
                     is_flag=False, flag_value="true",
                     help="Broadcast enable_events every 5 s, so workers started without -E "
                          "send task events, as Flower [on] (CELERIAC_ENABLE_EVENTS)."),
        click.option("--no-enable-events", "no_enable_events", is_flag=True, default=None,
                     help="Leave the workers' event setting alone."),
        click.option("--writer-process", "writer_process", metavar="[BOOL]", is_flag=False,
                     flag_value="true",
                     help="SQLite: write the task history from a process of its own, so that "
                          "writing never slows the event reader [on] (CELERIAC_WRITER_PROCESS)."),
        click.option("--xheaders", metavar="[BOOL]", is_flag=False, flag_value="true",
                     help="Behind a proxy: trust X-Forwarded-For/-Proto from any address."),
        click.option("--unix-socket", "--unix_socket", "unix_socket", metavar="PATH",
                     help="Listen on this Unix socket instead of --address/--port."),
        click.option("--ca-certs", "--ca_certs", "ca_certs", metavar="FILE",
                     help="TLS: CA certificates to load, with --certfile."),
        click.option("--read-only", "--read_only", "read_only", metavar="[BOOL]",
                     is_flag=False, flag_value="true",
                     help="Every user can look but not act (Flower's --read_only)."),
        click.option("--task-runtime-metric-buckets", "--task_runtime_metric_buckets",
                     "task_runtime_metric_buckets", metavar="S[,S...]",
                     help="Upper bounds of /metrics' task runtime histogram, in seconds "
                          "[Flower's: 0.005 ... 10]."),
        click.option("--conf", metavar="FILE",
                     help="A Flower flowerconfig.py: its 'name = value' lines are read."),
        *(click.option(f"--{name}", f"{FLOWER_FLAG_PREFIX}{name}", is_flag=False,
                       metavar="[BOOL]" if is_bool else "VALUE",
                       flag_value="true" if is_bool else None, help=text)
          for name, (is_bool, text) in FLOWER_ONLY.items() if name != "read_only"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _serve(flags: dict[str, Any], app: Any = None) -> None:
    from celeriac.cluster import BrokerUnreachable
    from celeriac.clusters import Clusters
    from celeriac.server import serve
    from celeriac.store.base import StoreError

    try:
        settings = Settings.build(flags)
        if settings.exposed_without_auth:
            _fail(f"refusing to listen on {settings.address} without credentials: give "
                  "--basic-auth or --api-token, or --unauthenticated-api to let anyone in",
                  code=2)
        _check_tls(settings)
        _setup_logging(settings.log_level)
        for level, message in settings.notices:
            logging.getLogger("celeriac").log(logging.getLevelName(level.upper()), "%s", message)
        clusters = Clusters.build(settings, app=app)
        clusters.check_brokers()
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}", code=2)
    except BrokerUnreachable as exc:
        _fail(str(exc), code=1)
    except StoreError as exc:
        _fail(str(exc), code=1)
    serve(settings, clusters=clusters)


def _check_tls(settings: Settings) -> None:
    """Load the certificate and key now, so a bad pair is one line rather than a traceback."""
    if not settings.certfile:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An encrypted key would make OpenSSL prompt on the terminal; fail instead.
        context.load_cert_chain(settings.certfile, settings.keyfile, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise SettingsError(f"certfile: cannot load the certificate and key: {reason}") from None


def _fail(message: str, code: int) -> None:
    click.echo(f"celeriac: {message}", err=True)
    sys.exit(code)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--app", "-A", "app", help="Celery app module, as in celery -A (CELERIAC_APP).")
@_options
@click.version_option(__version__, prog_name="celeriac")
@click.pass_context
def main(ctx: click.Context, **flags: Any) -> None:
    """Monitor and control a Celery cluster; serves Flower's REST API and a web UI."""
    if ctx.invoked_subcommand is None:
        _serve(flags)


@main.command()
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Demo workers to start.")
@click.option("--rate", type=float, default=2.0, show_default=True, help="Demo tasks a second.")
def demo(port: int, workers: int, rate: float) -> None:
    """Run everything on this machine: an embedded broker, real workers, a stream of tasks."""
    from celeriac.demo.runner import run_demo

    _setup_logging("info")
    run_demo(port=port, workers=workers, rate=rate)


@click.command(name="celeriac", context_settings={"help_option_names": ["-h", "--help"]})
@_options
@click.pass_context
def celery_command(ctx: click.Context, **flags: Any) -> None:
    """celeriac as a Celery subcommand: ``celery -A proj celeriac``."""
    app = ctx.obj.app if ctx.obj is not None else None
    if app is not None:
        # celery's -b and --result-backend reach the app as CELERY_BROKER_URL and
        # CELERY_RESULT_BACKEND, which every app in the process reads before its own setting
        # (each --cluster would watch -b's broker): made the -A app's flags, then dropped.
        for flag, setting, variable in (
            ("broker", "broker_url", "CELERY_BROKER_URL"),
            ("result_backend", "result_backend", "CELERY_RESULT_BACKEND"),
        ):
            if not flags.get(flag):
                flags[flag] = getattr(app.conf, setting) or None
            os.environ.pop(variable, None)
    named = ctx.find_root().params.get("app")
    if app is not None and isinstance(named, str) and named:
        # -A's app is the default cluster even if it names no broker (then that is the one
        # clear error): with --cluster it was otherwise dropped, the first --cluster served
        # at its place.
        flags["app"] = named
    _serve(flags, app=app)
