"""One typed settings object, built once from command-line flags and ``CELERIAC_*`` variables.

Every constructor in celeriac takes what it needs from a :class:`Settings`; nothing reads the
environment anywhere else. Precedence: explicit flag, then ``CELERIAC_<NAME>``, then default.
Flower's ``FLOWER_UNAUTHENTICATED_API`` is honoured so that scripts written for Flower keep working.
"""

from __future__ import annotations

import dataclasses
import os
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


def parse_basic_auth(value: str) -> tuple[tuple[str, str], ...]:
    """Flower's format: ``user:pass,user2:pass2``."""
    pairs = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SettingsError("basic_auth: expected user:password[,user:password...]")
        pairs.append((user, password))
    return tuple(pairs)


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
    basic_auth: tuple[tuple[str, str], ...] = ()
    unauthenticated_api: bool = False
    max_tasks: int = 100_000
    inspect_timeout: float = 1000.0  # milliseconds, as Flower's --inspect_timeout
    purge_offline_workers: float | None = None  # seconds; None keeps offline workers listed
    event_queue: str | None = None  # RabbitMQ: a stable queue name survives restarts
    db: str | None = None  # SQLite path, ":memory:" for no persistence; None = the default file
    max_age: float | None = None  # seconds; finished tasks older than this are pruned
    log_level: str = "info"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def inspect_timeout_s(self) -> float:
        return self.inspect_timeout / 1000.0

    @property
    def auth_required(self) -> bool:
        return not self.unauthenticated_api

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
        return self

    @classmethod
    def build(
        cls, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Merge flags (``None`` means "not given") over ``CELERIAC_*`` variables over defaults."""
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
        for name, value in (flags or {}).items():
            if value is None or (name == "unauthenticated_api" and value is False):
                continue
            values[name] = _convert(name, value) if isinstance(value, str) else value
        return cls(**values).validate()


def _convert(name: str, raw: str) -> Any:
    kinds: dict[str, Any] = {
        "port": int,
        "max_tasks": int,
        "inspect_timeout": float,
        "purge_offline_workers": float,
        "max_age": parse_duration,
        "unauthenticated_api": lambda v: parse_bool(v, name),
        "basic_auth": parse_basic_auth,
    }
    convert = kinds.get(name)
    if convert is None:
        return raw
    try:
        return convert(raw)
    except SettingsError:
        raise
    except ValueError:
        raise SettingsError(f"{name}: {raw!r} is not a valid value") from None
