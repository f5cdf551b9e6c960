"""One typed settings object, built once from command-line flags and ``CELERIAC_*`` variables.

Every constructor in celeriac takes what it needs from a :class:`Settings`; nothing reads the
environment anywhere else. Precedence: explicit flag, then ``CELERIAC_<NAME>``, then default.
Flower's ``FLOWER_UNAUTHENTICATED_API`` is honoured so that scripts written for Flower keep working.

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
    max_wait: float = 300.0  # seconds: the longest a request waits for a task's result
    bulk_max: int = 1000  # the most tasks one bulk re-run or revoke acts on (its ``cap``)
    log_level: str = "info"
    alerts: str | None = None  # the alert rules file (TOML, celeriac/alerts/rules.py)
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
        for name in ("certfile", "keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(f"{name}: no such file {path}")
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
        tokens: list[ApiToken] = list(values.pop("api_tokens", ()))
        for name, value in (flags or {}).items():
            if value is None or (name in _FLAGS and value is False):
                continue
            if name == "api_tokens":
                tokens += [parse_api_token(v) if isinstance(v, str) else v for v in value]
                continue
            values[name] = _convert(name, value) if isinstance(value, str) else value
        if values.get("api_token_file"):
            tokens += read_token_file(values["api_token_file"])
        values["api_tokens"] = tuple(tokens)
        if values.get("oidc_client_secret_file"):
            if values.get("oidc_client_secret"):
                raise SettingsError("oidc_client_secret: given twice, directly and as a file")
            values["oidc_client_secret"] = read_secret_file(
                values["oidc_client_secret_file"], "oidc_client_secret_file")
        return cls(**values).validate()


#: Boolean flags whose ``False`` means "not given" (a variable may still set them).
_FLAGS = frozenset({"unauthenticated_api", "metrics_public", "oidc_read_only"})


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
