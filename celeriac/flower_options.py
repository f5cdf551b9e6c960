"""Flower 2.2's command-line options, ``FLOWER_*`` variables and ``flowerconfig.py``, in celeriac.

A deployment switches by changing the program name, so every Flower option is accepted under
Flower's spelling. Those with a celeriac equivalent become a :class:`~celeriac.settings.Settings`
field; those that mean nothing here are accepted with a warning saying why; none is dropped
silently and none stops celeriac except where going on would be wrong (a GitHub login, which is
not OpenID Connect, or a read-only mode anonymous callers would escape).

Precedence, as for celeriac's own settings: a flag, then ``CELERIAC_<NAME>``, then
``FLOWER_<NAME>``, then the ``--conf`` file's assignment, then the default.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping
from typing import Any

from celeriac.settings import SettingsError, parse_bool

#: Flower options that are celeriac settings of the same meaning: Flower's name -> field.
SHARED = {
    "port": "port",
    "address": "address",
    "inspect_timeout": "inspect_timeout",
    "auth": "auth",
    "basic_auth": "basic_auth",
    "max_tasks": "max_tasks",
    "db": "db",
    "certfile": "certfile",
    "keyfile": "keyfile",
    "ca_certs": "ca_certs",
    "purge_offline_workers": "purge_offline_workers",
    "url_prefix": "url_prefix",
    "enable_events": "enable_events",
    "xheaders": "xheaders",
    "unix_socket": "unix_socket",
    "oauth2_redirect_uri": "oidc_redirect_uri",
    "task_runtime_metric_buckets": "task_runtime_metric_buckets",
}

#: Flower options with no field of their own: name -> (takes true/false, help).
FLOWER_ONLY: dict[str, tuple[bool, str]] = {
    "persistent": (True, "Flower's: celeriac always keeps its task history (see --db)."),
    "state_save_interval": (False, "Flower's: celeriac writes as it goes; ignored."),
    "debug": (True, "Flower's: the same as --log-level debug."),
    "max_workers": (False, "Flower's: celeriac keeps every worker (see "
                           "--purge-offline-workers); ignored."),
    "broker_api": (False, "Flower's RabbitMQ management URL: celeriac asks the broker for "
                          "queue lengths itself; ignored."),
    "auto_refresh": (True, "Flower's: celeriac's pages are always live; ignored."),
    "natural_time": (True, "Flower's UI preference; ignored."),
    "tasks_columns": (False, "Flower's UI preference; ignored."),
    "format_task": (False, "Flower's Python hook (flowerconfig.py only); ignored."),
    "oauth2_key": (False, "Flower's: the OpenID Connect client id (--oidc-client-id)."),
    "oauth2_secret": (False, "Flower's: the client secret (better: FLOWER_OAUTH2_SECRET)."),
    "auth_provider": (False, "Flower's login handler class: Google, GitLab and Okta map to "
                             "--oidc-issuer; GitHub is not OpenID Connect."),
    "read_only": (True, "Flower's: every user can look but not act."),
    "cookie_secret": (False, "Flower's: signs OpenID Connect sessions (--cookie-secret); "
                             "without a sign-in, ignored."),
    # Tornado's logging options, which Flower's command line has too.
    "logging": (False, "Tornado's log level (debug, info, warning, error): --log-level."),
    "log_to_stderr": (True, "Tornado's: celeriac always logs to stderr; ignored."),
    **{name: (False, "Tornado's log file option: celeriac logs to stderr; ignored.")
       for name in ("log_file_prefix", "log_file_max_size", "log_file_num_backups",
                    "log_rotate_mode", "log_rotate_when", "log_rotate_interval")},
}

#: Why an option is accepted and does nothing (a warning at start).
IGNORED = {
    "max_workers": "celeriac keeps every worker it has seen; --purge-offline-workers forgets "
                   "offline ones",
    "broker_api": "celeriac asks the broker for queue lengths itself (no management plugin "
                  "needed)",
    "auto_refresh": "celeriac's pages update live",
    "natural_time": "a UI preference of Flower's",
    "tasks_columns": "a UI preference of Flower's; celeriac's task list chooses columns "
                     "in the page",
    "format_task": "a Python function of Flower's; celeriac shows tasks as the workers sent "
                   "them",
    "state_save_interval": "celeriac writes its task history as events arrive",
    "log_to_stderr": "celeriac always logs to stderr",
    **{name: "celeriac logs to stderr, for systemd's journal or docker logs to keep (or a "
             "shell redirect)"
       for name in ("log_file_prefix", "log_file_max_size", "log_file_num_backups",
                    "log_rotate_mode", "log_rotate_when", "log_rotate_interval")},
}

GOOGLE_ISSUER = "https://accounts.google.com"
#: Tornado's ``--logging`` levels -> celeriac's ``--log-level``.
LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error",
              "none": "error"}
#: Where :func:`apply` leaves Flower's cookie secret until the sign-in settings are all known.
COOKIE = "_flower_cookie_secret"
#: Set by :func:`apply` when Flower's --persistent was given (see :func:`history_file`).
PERSISTENT = "_flower_persistent"
SQLITE_HEADER = b"SQLite format 3\x00"

Notice = tuple[str, str]  # (level, message)


def read_conf(path: str) -> tuple[dict[str, Any], list[Notice]]:
    """The ``name = literal`` assignments of a ``flowerconfig.py``; anything else is reported,
    never executed (a config file is not a reason to run code)."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source, path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise SettingsError(f"conf: cannot read {path}: {reason}") from None
    except SyntaxError as exc:
        raise SettingsError(f"conf: {path} line {exc.lineno}: not valid Python") from None
    found: dict[str, Any] = {}
    notices: list[Notice] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue  # imports and docstrings: nothing to set
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 \
            else None
        if not isinstance(target, ast.Name):
            notices.append(("warning", f"conf: {path} line {node.lineno}: only simple "
                                       "'name = value' assignments are read; ignored"))
            continue
        name = target.id
        if name not in SHARED and name not in FLOWER_ONLY:
            notices.append(("warning", f"conf: {path}: {name!r} is not a Flower option; "
                                       "ignored"))
            continue
        try:
            found[name] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
        except ValueError:
            notices.append(("warning", f"conf: {path}: {name} is not a plain value "
                                       "(a function or an expression); ignored"))
    return found, notices


def as_text(value: Any) -> str:
    """A flowerconfig.py value as the command line would give it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def apply(
    values: dict[str, Any],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    convert: Callable[[str, str], Any],
) -> list[Notice]:
    """Fold the Flower options into ``values`` (celeriac's flags are applied after, over
    them). ``flags`` holds the Flower-only flags by Flower name; returns the notices to log."""
    notices: list[Notice] = []
    conf = env.get("CELERIAC_CONF") or env.get("FLOWER_CONF")
    conf = flags.get("conf") or conf
    from_conf: dict[str, Any] = {}
    if conf:
        if not os.path.isfile(conf):
            raise SettingsError(f"conf: no such file {conf}")
        from_conf, notices = read_conf(conf)
    elif os.path.isfile("flowerconfig.py"):
        notices.append(("warning", "flowerconfig.py is here but not read: give "
                                   "--conf=flowerconfig.py to read its settings"))
    # Shared options: FLOWER_<NAME> then the conf file, under CELERIAC_<NAME> (and the flags).
    for name, field_name in SHARED.items():
        if field_name in values:
            continue
        raw = env.get(f"FLOWER_{name.upper()}")
        if raw is None and name in from_conf:
            raw = as_text(from_conf[name])
        if raw is not None:
            values[field_name] = convert(field_name, raw)
    # Flower-only options: a flag, else FLOWER_<NAME>, else the conf file.
    given: dict[str, tuple[str, bool]] = {}  # name -> (raw value, from a flag)
    for name in FLOWER_ONLY:
        if flags.get(name) is not None:
            given[name] = (str(flags[name]), True)
        elif env.get(f"FLOWER_{name.upper()}") is not None:
            given[name] = (env[f"FLOWER_{name.upper()}"], False)
        elif name in from_conf:
            given[name] = (as_text(from_conf[name]), False)

    def put(field_name: str, value: Any, flag: bool) -> None:
        if flag or field_name not in values:
            values[field_name] = value

    for name, (raw, flag) in given.items():
        is_bool = FLOWER_ONLY[name][0]
        on = parse_bool(raw, name) if is_bool else bool(raw.strip())
        if name in IGNORED:
            notices.append(("warning", f"--{name} is ignored: {IGNORED[name]}"))
        elif name == "persistent":
            values[PERSISTENT] = on
            notices.append(("info", "--persistent: celeriac always keeps its task history "
                                    "(--db, a SQLite file by default); Flower's state file "
                                    "is not read"))
        elif name == "debug" and on:
            put("log_level", "debug", flag)
        elif name == "logging":
            level = raw.strip().lower()
            if level not in LOG_LEVELS:
                raise SettingsError(f"logging: expected one of {', '.join(LOG_LEVELS)}, "
                                    f"got {raw!r}")
            if level == "none":
                notices.append(("warning", "--logging=none: celeriac still logs errors"))
            put("log_level", LOG_LEVELS[level], flag)
        elif name == "oauth2_key":
            put("oidc_client_id", raw, flag)
        elif name == "oauth2_secret":
            put("oidc_client_secret", raw, flag)
        elif name == "auth_provider":
            put("oidc_issuer", issuer_for(raw, env), flag)
        elif name == "cookie_secret":
            values[COOKIE] = (raw, flag)  # used if there is a sign-in: see settings.build
        elif name == "read_only" and on:
            values["read_only"] = True
    return notices


def issuer_for(provider: str, env: Mapping[str, str]) -> str:
    """Flower's ``--auth_provider`` class -> the OpenID Connect issuer of that provider."""
    short = provider.strip().rsplit(".", 1)[-1].lower()
    if short.startswith("google"):
        return GOOGLE_ISSUER
    if short.startswith("gitlab"):
        domain = env.get("FLOWER_GITLAB_OAUTH_DOMAIN", "gitlab.com").strip().rstrip("/")
        return domain if "://" in domain else f"https://{domain}"
    if short.startswith("okta"):
        base = env.get("FLOWER_OAUTH2_OKTA_BASE_URL", "").strip().rstrip("/")
        if not base:
            raise SettingsError("auth_provider: Okta needs FLOWER_OAUTH2_OKTA_BASE_URL (the "
                                "issuer, e.g. https://example.okta.com/oauth2/default)")
        return base
    if short.startswith("github"):
        raise SettingsError("auth_provider: GitHub sign-in is OAuth 2 without OpenID Connect, "
                            "which celeriac does not support; use basic auth, API tokens or "
                            "an OpenID Connect provider (--oidc-issuer)")
    raise SettingsError(f"auth_provider: unknown provider {provider!r} (Flower's Google, "
                        "GitLab and Okta handlers map to --oidc-issuer)")


def history_file(db: str | None) -> tuple[str | None, Notice | None]:
    """With Flower's ``--persistent``, ``--db`` may name Flower's own state file (a dbm
    shelve): celeriac's history then goes next to it rather than failing to open it."""
    if not db or "://" in db or not os.path.isfile(db):
        return db, None
    try:
        with open(db, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError:
        return db, None  # the store says why it cannot open it
    if not header or header == SQLITE_HEADER:
        return db, None
    moved = f"{db}.celeriac.sqlite3"
    return moved, ("warning", f"--db {db} is Flower's state file (not read): celeriac keeps "
                              f"its history in {moved}")


def redirect_uri(value: str) -> tuple[str, Notice | None]:
    """Flower's callback is ``/login``, celeriac's ``/oauth2/callback``."""
    base, sep, _ = value.rstrip("/").rpartition("/login")
    if sep and not _:
        fixed = f"{base}/oauth2/callback"
        return fixed, ("warning", f"oauth2_redirect_uri: celeriac's callback is {fixed}: "
                                  "register it with the provider (Flower's was /login)")
    return value, None
