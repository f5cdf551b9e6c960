"""One typed settings object, built once from command-line flags and ``CELERIAC_*`` variables.

Every constructor in celeriac takes what it needs from a :class:`Settings`; nothing reads the
environment anywhere else. Precedence: explicit flag, then ``CELERIAC_<NAME>``, then Flower's
``FLOWER_<NAME>`` (and ``--conf``'s flowerconfig.py), then default: see celeriac/flower_options.py,
which also maps Flower's options that have no celeriac name of their own.

Secrets (passwords, API tokens) are kept out of ``repr`` and out of every error message, so a
settings object or a refused value can be logged without leaking them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TRUE_WORDS = frozenset({"1", "true", "yes", "on", "y", "t"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", "n", "f", ""})


class SettingsError(ValueError):
    """A flag or environment variable has a value celeriac cannot use."""


def parse_bool(value: str | bool, name: str = "value") -> bool:
    if isinstance(value, bool):
        return value
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(f"{name}: expected true or false, got {value!r}")


def parse_basic_auth(value: str, name: str = "basic_auth") -> tuple[tuple[str, str], ...]:
    """Flower's format: ``user:pass,user2:pass2``."""
    pairs = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"{name}: expected user:password[,user:password...]")
        pairs.append((user, password))
    return tuple(pairs)


READ_ONLY = "read-only"


@dataclass(frozen=True)
class ApiToken:
    """A bearer token for the API. ``name`` identifies it in logs; the token never shows."""

    name: str
    token: str = field(repr=False)
    read_only: bool = False


def parse_api_token(value: str, where: str = "api_tokens") -> ApiToken:
    """``NAME:TOKEN`` (admin) or ``NAME:TOKEN:read-only``. The error never quotes the value."""
    name, sep, token = value.strip().partition(":")
    read_only = False
    if token.endswith(f":{READ_ONLY}"):
        token, read_only = token[: -len(READ_ONLY) - 1], True
    elif token.endswith(":admin"):
        token = token[: -len(":admin")]
    name, token = name.strip(), token.strip()
    if not sep or not name or not token:
        raise SettingsError(f"{where}: expected NAME:TOKEN or NAME:TOKEN:read-only")
    if any(c.isspace() or c == "," for c in token):
        raise SettingsError(f"{where}: the token of {name!r} contains a space or a comma")
    return ApiToken(name, token, read_only)


def parse_api_tokens(value: str) -> tuple[ApiToken, ...]:
    """``CELERIAC_API_TOKENS``: comma-separated ``NAME:TOKEN[:read-only]`` items."""
    return tuple(parse_api_token(item) for item in value.split(",") if item.strip())


def read_token_file(path: str) -> tuple[ApiToken, ...]:
    """One ``NAME:TOKEN[:read-only]`` a line; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise SettingsError(f"api_token_file: cannot read {path}: {reason}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            tokens.append(parse_api_token(line, f"api_token_file: {path} line {number}"))
    return tuple(tokens)


def read_secret_file(path: str, name: str) -> str:
    """A secret kept in a file (first line), so it shows in no process list or environment."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise SettingsError(f"{name}: cannot read {path}: {reason}") from None
    if not secret:
        raise SettingsError(f"{name}: {path} is empty")
    return secret


def parse_domains(value: str) -> tuple[str, ...]:
    """``example.com,example.org`` (a leading ``@`` is allowed) -> lower-case domains."""
    domains = tuple(d.strip().lstrip("@").lower() for d in value.split(",") if d.strip())
    for d in domains:
        if not d or "@" in d or any(c.isspace() for c in d):
            raise SettingsError(f"oidc_domains: {d!r} is not an e-mail domain")
    return domains


def is_loopback(address: str) -> bool:
    """Whether listening on ``address`` keeps celeriac reachable from this machine only."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise SettingsError(
            f"expected a duration like 90s, 15m, 12h or 7d, got {value!r}"
        ) from None
    if seconds <= 0 or seconds != seconds or seconds == float("inf"):
        raise SettingsError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_buckets(value: str) -> tuple[float, ...]:
    """``0.1,1,10`` -> histogram upper bounds, ascending and finite (+Inf is always added)."""
    bounds = tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    if not bounds or any(b != b or b in (float("inf"), float("-inf")) for b in bounds):
        raise SettingsError(f"task_runtime_metric_buckets: expected numbers like 0.1,1,10, "
                            f"got {value!r}")
    if list(bounds) != sorted(set(bounds)):
        raise SettingsError("task_runtime_metric_buckets: must be ascending, each once")
    return bounds


def redact_url(url: str) -> str:
    """The URL without its password, for logs and pages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: A cluster's name: one URL path segment, a file-name part and a PostgreSQL schema suffix.
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: The name of the ``--broker`` cluster unless ``--default-cluster`` names it.
DEFAULT_CLUSTER_NAME = "default"


@dataclass(frozen=True)
class ClusterSpec:
    """One watched cluster: its name, broker, and optionally its app and result backend.

    ``primary`` marks the cluster of ``--broker``/``--app``, which keeps the ``--db`` as given
    (so adding clusters later never moves its history); every ``--cluster`` gets its own file
    or PostgreSQL schema, named after it."""

    name: str
    broker: str | None = field(default=None, repr=False)
    app: str | None = None
    result_backend: str | None = field(default=None, repr=False)
    primary: bool = False

    def __repr__(self) -> str:
        broker = redact_url(self.broker) if self.broker else None
        return f"ClusterSpec({self.name!r}, broker={broker!r}, app={self.app!r})"


#: Items of ``CELERIAC_CLUSTERS`` are separated by newlines, or by a comma or semicolon that is
#: followed by the next ``NAME=`` (a failover broker list ``redis://a;redis://b`` stays whole).
_CLUSTER_ITEMS = re.compile(r"\s*\n\s*|\s*[,;]\s*(?=[a-z0-9][a-z0-9_-]*=)")


def check_cluster_name(name: str, where: str = "cluster") -> str:
    if not CLUSTER_NAME.fullmatch(name):
        raise SettingsError(
            f"{where}: {name!r} is not a cluster name (lower-case letters, digits, - and _, "
            "at most 40, starting with a letter or digit)"
        )
    return name


def parse_named(value: str, where: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value); the error quotes the name, never the value."""
    name, sep, rest = value.strip().partition("=")
    name, rest = name.strip(), rest.strip()
    if not sep or not rest:
        raise SettingsError(f"{where}: expected NAME=VALUE")
    return check_cluster_name(name, where), rest


def parse_cluster(value: str) -> ClusterSpec:
    """``NAME=BROKER_URL`` (``--cluster``)."""
    name, url = parse_named(value, "cluster")
    check_broker_url(url, f"cluster {name}")
    return ClusterSpec(name, url)


def parse_clusters(value: str) -> tuple[ClusterSpec, ...]:
    """``CELERIAC_CLUSTERS``: ``NAME=URL`` items, one a line or separated by ``,`` or ``;``."""
    return tuple(parse_cluster(i) for i in _CLUSTER_ITEMS.split(value.strip()) if i.strip())


def parse_named_list(value: str, where: str) -> tuple[tuple[str, str], ...]:
    """``CELERIAC_CLUSTER_APPS`` and the like: ``NAME=VALUE`` items separated as clusters'."""
    return tuple(parse_named(i, where) for i in _CLUSTER_ITEMS.split(value.strip()) if i.strip())


def check_broker_url(url: str, where: str) -> None:
    """A URL kombu can open: ``transport://...`` with a transport it knows (each of a
    failover list ``a;b``). The message shows the URL without its password."""
    from kombu.transport import TRANSPORT_ALIASES

    for part in url.split(";"):
        scheme, sep, _ = part.strip().partition("://")
        transport = scheme.split("+")[0].lower()
        if not sep or not scheme:
            raise SettingsError(f"{where}: {redact_url(part.strip())!r} is not a broker URL "
                                "(expected transport://host..., e.g. redis://localhost:6379/0)")
        if transport not in TRANSPORT_ALIASES:
            raise SettingsError(f"{where}: unknown broker transport {scheme!r} "
                                f"in {redact_url(part.strip())!r}")


@dataclass(frozen=True)
class Settings:
    """What celeriac was asked to do. Field names are the flag names with ``_`` for ``-``."""

    broker: str | None = None
    app: str | None = None
    result_backend: str | None = None
    address: str = "127.0.0.1"
    port: int = 5555
    url_prefix: str = ""
    basic_auth: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    basic_auth_read_only: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_tokens: tuple[ApiToken, ...] = field(default=(), repr=False)  # env, flags and file
    api_token_file: str | None = None
    unauthenticated_api: bool = False
    metrics_public: bool = False  # /metrics without credentials
    certfile: str | None = None  # TLS: PEM certificate (chain); the key too unless keyfile
    keyfile: str | None = None
    # OpenID Connect login for the UI (celeriac/oidc.py)
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = field(default=None, repr=False)
    oidc_client_secret_file: str | None = None
    oidc_scopes: str = "openid email profile"
    oidc_redirect_uri: str | None = None  # the callback URL; None: from each request's host
    auth: str | None = None  # Flower's --auth: a regex the whole e-mail address must match
    oidc_domains: tuple[str, ...] = ()  # or: e-mail domains allowed in
    oidc_admins: str | None = None  # if given, only matching e-mails are admins
    oidc_read_only: bool = False  # every OIDC user read-only
    cookie_secret: str | None = field(default=None, repr=False)  # None: random per start
    session_max_age: float = 12 * 3600  # seconds a sign-in lasts
    max_tasks: int = 100_000
    inspect_timeout: float = 1000.0  # milliseconds, as Flower's --inspect_timeout
    purge_offline_workers: float | None = None  # seconds; None keeps offline workers listed
    event_queue: str | None = None  # RabbitMQ: a stable queue name survives restarts
    # Shared PostgreSQL store: a follower hears the leader's writes (LISTEN/NOTIFY) and polls
    # the store only this often (seconds) besides; every second while it cannot listen.
    follower_poll: float = 30.0
    db: str | None = None  # SQLite path, ":memory:" for no persistence; None = the default file
    max_age: float | None = None  # seconds; finished tasks older than this are pruned
    # SQLite: write the history from a process of its own (store/sqlite_process.py), so that
    # writing never competes with reading events for the GIL; off: a thread of this process.
    writer_process: bool = True
    max_wait: float = 300.0  # seconds: the longest a request waits for a task's result
    bulk_max: int = 1000  # the most tasks one bulk re-run or revoke acts on (its ``cap``)
    log_level: str = "info"
    alerts: str | None = None  # the alert rules file (TOML, celeriac/alerts/rules.py)
    # Several clusters (celeriac/clusters.py): --cluster NAME=URL, each with its app and
    # result backend folded in (--cluster-app, --cluster-result-backend); the default one
    # answers at Flower's paths, the others under /clusters/NAME/.
    clusters: tuple[ClusterSpec, ...] = ()
    default_cluster: str | None = None
    # Flower's --enable_events: broadcast enable_events so workers without -E send task events
    enable_events: bool = True
    xheaders: bool = False  # trust X-Forwarded-For/-Proto from any proxy (Flower's --xheaders)
    unix_socket: str | None = None  # listen on this Unix socket instead of address:port
    ca_certs: str | None = None  # TLS: CA certificates to load (Flower's --ca_certs)
    read_only: bool = False  # Flower's --read_only: every user can look but not act
    conf: str | None = None  # a flowerconfig.py whose simple assignments are read
    # /metrics' task runtime histogram; None: Flower's default (prometheus_client's) buckets
    task_runtime_metric_buckets: tuple[float, ...] | None = None
    # What became of Flower-only options: (level, message) lines logged at start.
    notices: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def inspect_timeout_s(self) -> float:
        return self.inspect_timeout / 1000.0

    @property
    def auth_required(self) -> bool:
        return not self.unauthenticated_api

    @property
    def has_credentials(self) -> bool:
        return bool(
            self.basic_auth or self.basic_auth_read_only or self.api_tokens or self.oidc_issuer
        )

    @property
    def exposed_without_auth(self) -> bool:
        """Listening beyond this machine with nobody asked for credentials, and not told to."""
        return not (
            is_loopback(self.address) or self.has_credentials or self.unauthenticated_api
        )

    @property
    def prefix(self) -> str:
        """The URL prefix normalised to ``/x`` or the empty string."""
        p = self.url_prefix.strip("/")
        return f"/{p}" if p else ""

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def has_primary(self) -> bool:
        """Whether ``--broker`` or ``--app`` gave a cluster besides the ``--cluster`` ones."""
        return bool(self.broker or self.app) or not self.clusters

    def cluster_specs(self) -> list[ClusterSpec]:
        """Every cluster watched, the default one first."""
        if self.has_primary:
            name = self.default_cluster or DEFAULT_CLUSTER_NAME
            primary = ClusterSpec(name, self.broker, self.app, self.result_backend, primary=True)
            return [primary, *self.clusters]
        wanted = self.default_cluster or self.clusters[0].name
        return sorted(self.clusters, key=lambda c: c.name != wanted)

    @property
    def several_clusters(self) -> bool:
        return len(self.clusters) + self.has_primary > 1

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise SettingsError(f"port: {self.port} is not a TCP port")
        if self.max_tasks < 1:
            raise SettingsError("max_tasks: must be at least 1")
        if self.inspect_timeout <= 0:
            raise SettingsError("inspect_timeout: must be positive (milliseconds)")
        if self.purge_offline_workers is not None and self.purge_offline_workers < 0:
            raise SettingsError("purge_offline_workers: must be zero or more seconds")
        if not 0 < self.max_wait < float("inf"):
            raise SettingsError("max_wait: must be a positive duration")
        if not 1 <= self.bulk_max <= 1_000_000:
            raise SettingsError("bulk_max: must be between 1 and 1000000")
        self._validate_credentials()
        self._validate_oidc()
        if self.keyfile and not self.certfile:
            raise SettingsError("keyfile: given without certfile")
        if self.ca_certs and not self.certfile:
            raise SettingsError("ca_certs: given without certfile")
        if self.read_only and self.unauthenticated_api:
            raise SettingsError("read_only: anonymous API callers could still act; give "
                                "credentials instead of unauthenticated_api")
        for name in ("certfile", "keyfile", "ca_certs"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(f"{name}: no such file {path}")
        self._validate_clusters()
        if self.alerts:
            from celeriac.alerts.rules import load_config

            load_config(self.alerts)  # a bad rule is refused at start, not on the night
        return self

    def _validate_credentials(self) -> None:
        users = [u for u, _ in self.basic_auth + self.basic_auth_read_only]
        twice = sorted({u for u in users if users.count(u) > 1})
        if twice:
            raise SettingsError(f"basic_auth: user {twice[0]!r} given more than once")
        names = [t.name for t in self.api_tokens]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SettingsError(f"api_tokens: name {twice[0]!r} given more than once")
        if len({t.token for t in self.api_tokens}) < len(self.api_tokens):
            raise SettingsError("api_tokens: two names share one token")

    def _validate_clusters(self) -> None:
        if self.default_cluster is not None:
            check_cluster_name(self.default_cluster, "default_cluster")
        if not self.clusters:
            return
        names = [c.name for c in self.cluster_specs()]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            hint = (" (--default-cluster names the --broker cluster)"
                    if self.has_primary and twice[0] == self.default_cluster else "")
            raise SettingsError(f"cluster: name {twice[0]!r} given more than once{hint}")
        alike = [n.replace("-", "_") for n in names]
        clash = next((n for n, a in zip(names, alike, strict=True) if alike.count(a) > 1), None)
        if clash is not None:
            raise SettingsError(f"cluster: {clash!r} differs from another name only in - and _ "
                                "(they would share a file or database schema)")
        if self.default_cluster and self.default_cluster not in names:
            raise SettingsError(f"default_cluster: no cluster named {self.default_cluster!r}")
        from celeriac.store.location import cluster_identity

        seen: dict[str, str] = {}
        for spec in self.cluster_specs():
            if not spec.broker:
                continue  # the app's own broker, known once it is loaded
            try:
                identity = cluster_identity(spec.broker)
            except Exception as exc:
                raise SettingsError(f"cluster {spec.name}: cannot read the broker URL "
                                    f"{redact_url(spec.broker)!r}: {type(exc).__name__}") from None
            if identity in seen:
                raise SettingsError(f"cluster {spec.name}: same broker as cluster "
                                    f"{seen[identity]!r} ({identity})")
            seen[identity] = spec.name

    def _validate_oidc(self) -> None:
        used = [name for name in ("oidc_client_id", "oidc_client_secret", "auth", "oidc_domains",
                                  "oidc_admins", "oidc_read_only", "cookie_secret",
                                  "oidc_redirect_uri")
                if getattr(self, name)]
        if not self.oidc_issuer:
            if used:
                raise SettingsError(f"{used[0]}: needs oidc_issuer (OpenID Connect login)")
            return
        issuer = urlsplit(self.oidc_issuer)
        if issuer.scheme not in ("http", "https") or not issuer.hostname:
            raise SettingsError(f"oidc_issuer: expected an https:// URL, got {self.oidc_issuer!r}")
        if issuer.scheme == "http" and not is_loopback(issuer.hostname):
            raise SettingsError("oidc_issuer: must be https:// (plain http only on this machine)")
        if not self.oidc_client_id or not self.oidc_client_secret:
            raise SettingsError("oidc_issuer: needs oidc_client_id and oidc_client_secret")
        if not (self.auth or self.oidc_domains):
            raise SettingsError("oidc_issuer: say who may sign in, with auth (a regex of e-mail "
                                "addresses) or oidc_domains, else every account of the "
                                "provider would get in")
        for name in ("auth", "oidc_admins"):
            pattern = getattr(self, name)
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise SettingsError(f"{name}: not a regular expression: {exc}") from None
        if self.oidc_redirect_uri is not None:
            callback = urlsplit(self.oidc_redirect_uri)
            if (callback.scheme not in ("http", "https") or not callback.hostname
                    or not callback.path.endswith("/oauth2/callback")):
                raise SettingsError("oidc_redirect_uri: expected the public URL of "
                                    "/oauth2/callback, e.g. https://host/oauth2/callback")
        if "openid" not in self.oidc_scopes.split():
            raise SettingsError("oidc_scopes: must include openid")
        if self.cookie_secret is not None and len(self.cookie_secret) < 16:
            raise SettingsError("cookie_secret: too short, use at least 32 random characters")

    @classmethod
    def build(
        cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Merge flags (``None`` means "not given") over ``CELERIAC_*`` variables over defaults.

        API tokens add up instead: those of ``CELERIAC_API_TOKENS``, of every ``--api-token``
        and of the ``--api-token-file`` all count.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"CELERIAC_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _convert(f.name, raw)
        if parse_bool(env.get("FLOWER_UNAUTHENTICATED_API", "false"), "FLOWER_UNAUTHENTICATED_API"):
            values["unauthenticated_api"] = True
        from celeriac import flower_options

        flower_flags = {k[len(FLOWER_FLAG_PREFIX):]: v for k, v in (flags or {}).items()
                        if k.startswith(FLOWER_FLAG_PREFIX) and v is not None}
        if (flags or {}).get("conf"):
            flower_flags["conf"] = flags["conf"]  # type: ignore[index]
        notices = flower_options.apply(values, flower_flags, env, _convert)
        tokens: list[ApiToken] = list(values.pop("api_tokens", ()))
        for name, value in (flags or {}).items():
            if value is None or (name in _FLAGS and value is False):
                continue
            if name.startswith(FLOWER_FLAG_PREFIX):
                continue  # folded in above
            if name == "no_enable_events":
                if value:
                    values["enable_events"] = False
                continue
            if name == "api_tokens":
                tokens += [parse_api_token(v) if isinstance(v, str) else v for v in value]
                continue
            if name in _CLUSTER_OPTIONS:
                continue  # folded into the cluster specs below
            if name == "clusters":
                if value:  # flags replace CELERIAC_CLUSTERS
                    values[name] = tuple(parse_cluster(v) if isinstance(v, str) else v
                                         for v in value)
                continue
            values[name] = _convert(name, value) if isinstance(value, str) else value
        if values.get("api_token_file"):
            tokens += read_token_file(values["api_token_file"])
        values["api_tokens"] = tuple(tokens)
        _fold_cluster_options(values, flags or {}, env)
        if values.get("oidc_client_secret_file"):
            if values.get("oidc_client_secret"):
                raise SettingsError("oidc_client_secret: given twice, directly and as a file")
            values["oidc_client_secret"] = read_secret_file(
                values["oidc_client_secret_file"], "oidc_client_secret_file")
        if values.pop(flower_options.PERSISTENT, False):
            values["db"], notice = flower_options.history_file(values.get("db"))
            notices += [notice] if notice else []
        cookie = values.pop(flower_options.COOKIE, None)
        if cookie is not None:  # Flower always had one; celeriac signs OIDC sessions only
            if values.get("oidc_issuer"):
                if cookie[1] or "cookie_secret" not in values:
                    values["cookie_secret"] = cookie[0]
            else:
                notices.append(("info", "--cookie_secret is ignored: celeriac signs cookies "
                                        "only for OpenID Connect sign-in"))
        if values.get("oidc_redirect_uri"):
            values["oidc_redirect_uri"], notice = flower_options.redirect_uri(
                values["oidc_redirect_uri"])
            notices += [notice] if notice else []
        if values.get("read_only"):  # Flower's read-only mode: nobody acts
            values["basic_auth_read_only"] = (tuple(values.get("basic_auth_read_only", ()))
                                              + tuple(values.pop("basic_auth", ())))
            values["api_tokens"] = tuple(dataclasses.replace(t, read_only=True)
                                         for t in values["api_tokens"])
            values["oidc_read_only"] = bool(values.get("oidc_issuer"))
        values["notices"] = tuple(notices)
        return cls(**values).validate()


#: Per-cluster options: flag (and ``CELERIAC_<NAME>`` variable) -> ClusterSpec field.
_CLUSTER_OPTIONS = {"cluster_apps": "app", "cluster_result_backends": "result_backend"}


def _fold_cluster_options(
    values: dict[str, Any], flags: Mapping[str, Any], env: Mapping[str, str]
) -> None:
    """``--cluster-app NAME=MODULE`` and ``--cluster-result-backend NAME=URL`` (or their
    variables, when no such flag is given) into the specs of the clusters they name."""
    specs = list(values.get("clusters", ()))
    for option, attr in _CLUSTER_OPTIONS.items():
        where = option.replace("_", "-").rstrip("s")
        given = flags.get(option)
        if given:
            pairs = [parse_named(v, where) for v in given]
        else:
            pairs = list(parse_named_list(env.get(f"CELERIAC_{option.upper()}", ""), where))
        for name, value in pairs:
            at = next((i for i, c in enumerate(specs) if c.name == name), None)
            if at is None:
                raise SettingsError(f"{where}: no --cluster named {name!r}")
            if getattr(specs[at], attr):
                raise SettingsError(f"{where}: given twice for cluster {name!r}")
            specs[at] = dataclasses.replace(specs[at], **{attr: value})
    if specs:
        values["clusters"] = tuple(specs)


#: Boolean flags whose ``False`` means "not given" (a variable may still set them).
_FLAGS = frozenset({"unauthenticated_api", "metrics_public", "oidc_read_only"})
#: Flags named ``flower_<NAME>`` are Flower options without a field of their own.
FLOWER_FLAG_PREFIX = "flower_"


def _convert(name: str, raw: str) -> Any:
    kinds: dict[str, Any] = {
        "port": int,
        "max_tasks": int,
        "inspect_timeout": float,
        "purge_offline_workers": float,
        "follower_poll": parse_duration,
        "max_age": parse_duration,
        "max_wait": parse_duration,
        "bulk_max": int,
        "unauthenticated_api": lambda v: parse_bool(v, name),
        "metrics_public": lambda v: parse_bool(v, name),
        "basic_auth": parse_basic_auth,
        "basic_auth_read_only": lambda v: parse_basic_auth(v, name),
        "api_tokens": parse_api_tokens,
        "oidc_read_only": lambda v: parse_bool(v, name),
        "oidc_domains": parse_domains,
        "session_max_age": parse_duration,
        "clusters": parse_clusters,
        "enable_events": lambda v: parse_bool(v, name),
        "writer_process": lambda v: parse_bool(v, name),
        "xheaders": lambda v: parse_bool(v, name),
        "read_only": lambda v: parse_bool(v, name),
        "task_runtime_metric_buckets": parse_buckets,
    }
    convert = kinds.get(name)
    if convert is None:
        return raw
    try:
        return convert(raw)
    except SettingsError:
        raise
    except ValueError:
        shown = "this" if name in _SECRET else repr(raw)
        raise SettingsError(f"{name}: {shown} is not a valid value") from None


#: Settings whose values are never quoted back.
_SECRET = frozenset({"basic_auth", "basic_auth_read_only", "api_tokens", "oidc_client_secret",
                     "cookie_secret"})
