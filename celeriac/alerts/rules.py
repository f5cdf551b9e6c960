"""The alerts file: webhooks and rules in TOML, checked completely before celeriac starts.

A typo in an alert rule would otherwise surface only on the night the alert should have fired,
so every key is checked: unknown keys, wrong types, impossible values and references to
webhooks that do not exist are all refused, each with one line naming the file, the rule and
the key. Webhook URLs often carry a token, so no error ever quotes one.

Format (see ``deploy/alerts.example.toml``)::

    interval = "5s"                    # how often rules are evaluated

    [[webhook]]
    name = "ops"
    url = "https://alerts.example.com/celeriac"   # or url_env = "VARIABLE"
    format = "json"                    # or "slack": {"text": ...}

    [[rule]]
    name = "payments failing"
    kind = "failure_rate"              # failure_rate, queue_length, worker_offline,
    task = "proj.charge"               # long_running_task, no_events
    above = 0.2
    window = "5m"
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from celeriac.settings import SettingsError, parse_duration

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class AlertConfigError(SettingsError):
    """The alerts file cannot be used; the message is one line and quotes no secret."""


class Kind(str, Enum):
    FAILURE_RATE = "failure_rate"
    QUEUE_LENGTH = "queue_length"
    WORKER_OFFLINE = "worker_offline"
    LONG_RUNNING_TASK = "long_running_task"
    NO_EVENTS = "no_events"


class Format(str, Enum):
    JSON = "json"
    SLACK = "slack"


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str = field(repr=False)
    format: Format = Format.JSON
    timeout: float = 5.0
    retries: int = 5  # attempts after the first
    backoff: float = 1.0  # first retry delay, doubled each time up to MAX_BACKOFF
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def shown_url(self) -> str:
        return redact_webhook_url(self.url)


@dataclass(frozen=True)
class Rule:
    """One condition. Which fields matter depends on ``kind``; the parser fills the rest."""

    name: str
    kind: Kind
    task: str = "*"  # failure_rate, long_running_task: a task name or a glob
    worker: str = "*"  # worker_offline: a hostname or a glob
    queues: tuple[str, ...] = ()  # queue_length: () = the queues workers consume
    above: float = 0.0  # failure_rate: fraction; queue_length: messages
    window: float = 0.0  # failure_rate: seconds looked back
    min_tasks: int = 1  # failure_rate: fewer finished tasks in the window say nothing
    duration: float = 0.0  # seconds the condition must hold ("for"; the limit of the last two)
    webhooks: tuple[str, ...] = ()  # names; () = every webhook

    def matches_task(self, name: str) -> bool:
        return _glob(self.task, name)

    def matches_worker(self, hostname: str) -> bool:
        return _glob(self.worker, hostname)

    def describe(self) -> str:
        """The condition in words, for pages and messages."""
        d = fmt_seconds(self.duration)
        if self.kind is Kind.FAILURE_RATE:
            text = (f"more than {self.above:.0%} of {_which(self.task, 'task')} failed over "
                    f"{fmt_seconds(self.window)} (at least {self.min_tasks} finished)")
            return text + (f", for {d}" if self.duration else "")
        if self.kind is Kind.QUEUE_LENGTH:
            queues = ", ".join(self.queues) if self.queues else "any consumed queue"
            return f"more than {self.above:g} messages waiting in {queues} for {d}"
        if self.kind is Kind.WORKER_OFFLINE:
            return f"{_which(self.worker, 'worker')} offline for {d}"
        if self.kind is Kind.LONG_RUNNING_TASK:
            return f"{_which(self.task, 'task')} running longer than {d}"
        return f"no events at all for {d}"


@dataclass(frozen=True)
class AlertConfig:
    path: str
    interval: float = 5.0
    webhooks: tuple[Webhook, ...] = ()
    rules: tuple[Rule, ...] = ()

    def targets(self, rule: Rule) -> tuple[Webhook, ...]:
        if not rule.webhooks:
            return self.webhooks
        return tuple(w for w in self.webhooks if w.name in rule.webhooks)


MAX_BACKOFF = 60.0


def load_config(path: str, environ: Mapping[str, str] | None = None) -> AlertConfig:
    """Read and check the alerts file; :class:`AlertConfigError` with one line if unusable."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise AlertConfigError(f"alerts: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AlertConfigError(f"alerts: {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise AlertConfigError(f"alerts: {path} is not UTF-8 text") from None
    return parse_config(data, path, os.environ if environ is None else environ)


def parse_config(data: Mapping[str, Any], path: str, environ: Mapping[str, str]) -> AlertConfig:
    where = f"alerts: {path}"
    _no_unknown(data, {"interval", "webhook", "rule"}, where)
    interval = _duration(data, "interval", where, default=5.0)
    webhooks = tuple(
        _webhook(item, f"{where}: webhook {i + 1}", environ)
        for i, item in enumerate(_tables(data, "webhook", where))
    )
    names = [w.name for w in webhooks]
    for name in names:
        if names.count(name) > 1:
            raise AlertConfigError(f"{where}: webhook name {name!r} is used twice")
    rules = tuple(
        _rule(item, f"{where}: rule {i + 1}", set(names))
        for i, item in enumerate(_tables(data, "rule", where))
    )
    rule_names = [r.name for r in rules]
    for name in rule_names:
        if rule_names.count(name) > 1:
            raise AlertConfigError(f"{where}: rule name {name!r} is used twice")
    if rules and not webhooks:
        raise AlertConfigError(f"{where}: rules but no [[webhook]] to deliver them to")
    return AlertConfig(path, interval, webhooks, rules)


_WEBHOOK_KEYS = {"name", "url", "url_env", "format", "timeout", "retries", "backoff", "headers"}

_RULE_KEYS: dict[Kind, set[str]] = {
    Kind.FAILURE_RATE: {"task", "above", "window", "min_tasks", "for"},
    Kind.QUEUE_LENGTH: {"queue", "queues", "above", "for"},
    Kind.WORKER_OFFLINE: {"worker", "for"},
    Kind.LONG_RUNNING_TASK: {"task", "above"},
    Kind.NO_EVENTS: {"for"},
}


def _webhook(item: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> Webhook:
    _no_unknown(item, _WEBHOOK_KEYS, where)
    name = _string(item, "name", where, default=None)
    if name is None:
        raise AlertConfigError(f"{where}: name is required")
    where = f"{where} ({name!r})"
    if ("url" in item) == ("url_env" in item):
        raise AlertConfigError(f"{where}: give exactly one of url and url_env")
    if "url_env" in item:
        variable = _string(item, "url_env", where)
        url = environ.get(variable, "")
        if not url:
            raise AlertConfigError(f"{where}: environment variable {variable} is not set")
    else:
        url = _string(item, "url", where)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AlertConfigError(f"{where}: url must be an http:// or https:// URL")
    fmt = _string(item, "format", where, default="json")
    try:
        kind = Format(fmt)
    except ValueError:
        raise AlertConfigError(f"{where}: format must be json or slack, not {fmt!r}") from None
    headers = item.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise AlertConfigError(f"{where}: headers must be a table of strings")
    retries = _number(item, "retries", where, default=5, integer=True)
    if not 0 <= retries <= 100:
        raise AlertConfigError(f"{where}: retries must be between 0 and 100")
    return Webhook(
        name=name,
        url=url,
        format=kind,
        timeout=_duration(item, "timeout", where, default=5.0),
        retries=int(retries),
        backoff=_duration(item, "backoff", where, default=1.0),
        headers=tuple(sorted(headers.items())),
    )


def _rule(item: Mapping[str, Any], where: str, webhook_names: set[str]) -> Rule:
    name = _string(item, "name", where, default=None)
    if name is None:
        raise AlertConfigError(f"{where}: name is required")
    where = f"{where} ({name!r})"
    word = _string(item, "kind", where, default=None)
    if word is None:
        raise AlertConfigError(f"{where}: kind is required ({_kinds()})")
    try:
        kind = Kind(word)
    except ValueError:
        raise AlertConfigError(f"{where}: unknown kind {word!r} ({_kinds()})") from None
    _no_unknown(item, {"name", "kind", "webhooks"} | _RULE_KEYS[kind], where)
    hooks = item.get("webhooks", [])
    if not isinstance(hooks, list) or not all(isinstance(h, str) for h in hooks):
        raise AlertConfigError(f"{where}: webhooks must be a list of webhook names")
    for hook in hooks:
        if hook not in webhook_names:
            raise AlertConfigError(f"{where}: no webhook named {hook!r}")
    values: dict[str, Any] = {"name": name, "kind": kind, "webhooks": tuple(hooks)}
    if kind is Kind.FAILURE_RATE:
        values["task"] = _string(item, "task", where, default="*")
        values["above"] = _number(item, "above", where, required=True)
        if not 0 <= values["above"] < 1:
            raise AlertConfigError(f"{where}: above is a fraction of tasks, from 0 up to 1")
        values["window"] = _duration(item, "window", where, required=True)
        values["min_tasks"] = int(_number(item, "min_tasks", where, default=1, integer=True))
        if values["min_tasks"] < 1:
            raise AlertConfigError(f"{where}: min_tasks must be at least 1")
        values["duration"] = _duration(item, "for", where, default=0.0, zero=True)
    elif kind is Kind.QUEUE_LENGTH:
        if "queue" in item and "queues" in item:
            raise AlertConfigError(f"{where}: give queue or queues, not both")
        if "queue" in item:
            values["queues"] = (_string(item, "queue", where),)
        elif "queues" in item:
            queues = item["queues"]
            if not isinstance(queues, list) or not queues or not all(
                isinstance(q, str) and q for q in queues
            ):
                raise AlertConfigError(f"{where}: queues must be a list of queue names")
            values["queues"] = tuple(queues)
        values["above"] = _number(item, "above", where, required=True)
        if values["above"] < 0:
            raise AlertConfigError(f"{where}: above must be zero or more messages")
        values["duration"] = _duration(item, "for", where, default=0.0, zero=True)
    elif kind is Kind.WORKER_OFFLINE:
        values["worker"] = _string(item, "worker", where, default="*")
        values["duration"] = _duration(item, "for", where, default=0.0, zero=True)
    elif kind is Kind.LONG_RUNNING_TASK:
        values["task"] = _string(item, "task", where, default="*")
        values["duration"] = _duration(item, "above", where, required=True)
    else:
        values["duration"] = _duration(item, "for", where, required=True)
    return Rule(**values)


# -- value checks ---------------------------------------------------------------------------

_MISSING = object()


def _tables(data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise AlertConfigError(f"{where}: {key} must be written [[{key}]]")
    return items


def _no_unknown(item: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(item) - known)
    if unknown:
        raise AlertConfigError(
            f"{where}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(known))})"
        )


def _string(item: Mapping[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    value = item.get(key, default)
    if value is _MISSING:
        raise AlertConfigError(f"{where}: {key} is required")
    if value is default:
        return value
    if not isinstance(value, str) or not value.strip():
        raise AlertConfigError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _number(
    item: Mapping[str, Any], key: str, where: str, default: float = 0.0, *,
    required: bool = False, integer: bool = False,
) -> float:
    if key not in item:
        if required:
            raise AlertConfigError(f"{where}: {key} is required")
        return default
    value: Any = item[key]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        what = "a whole number" if integer else "a number"
        raise AlertConfigError(f"{where}: {key} must be {what}")
    return float(value)


def _duration(
    item: Mapping[str, Any], key: str, where: str, default: float = 0.0, *,
    required: bool = False, zero: bool = False,
) -> float:
    if key not in item:
        if required:
            raise AlertConfigError(f"{where}: {key} is required (a duration like 30s or 5m)")
        return default
    value = item[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        if zero and value.strip() in ("0", "0s"):
            return 0.0
        try:
            seconds = parse_duration(value)
        except SettingsError as exc:
            raise AlertConfigError(f"{where}: {key}: {exc}") from None
    else:
        raise AlertConfigError(f"{where}: {key} must be a duration like 30s or 5m")
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0 or (
        seconds == 0 and not zero
    ):
        raise AlertConfigError(f"{where}: {key} must be a positive duration")
    return seconds


def _kinds() -> str:
    return ", ".join(k.value for k in Kind)


def _glob(pattern: str, value: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(value, pattern)


def _which(pattern: str, noun: str) -> str:
    if pattern == "*":
        return f"any {noun}"
    return f"{noun} {pattern}"


def fmt_seconds(seconds: float) -> str:
    """``90`` -> ``1m30s``: durations as the file writes them."""
    if seconds < 60:
        return f"{round(seconds, 1):g}s"
    parts = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def redact_webhook_url(url: str) -> str:
    """Scheme, host and port only: Slack-style URLs carry their token in the path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    if ":" in host:
        host = f"[{host}]"
    tail = "/***" if (parts.path not in ("", "/") or parts.query) else "/"
    return f"{parts.scheme}://{host}{port}{tail}"

