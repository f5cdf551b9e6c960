"""The alerts file: the example parses, and every mistake is one line naming where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.alerts.rules import (
    AlertConfigError,
    Format,
    Kind,
    load_config,
    parse_config,
    redact_webhook_url,
)
from celeriac.settings import Settings, SettingsError
from tests.fixtures import REPO_ROOT

EXAMPLE = REPO_ROOT / "deploy" / "alerts.example.toml"
HOOK = '[[webhook]]\nname = "ops"\nurl = "http://127.0.0.1:9/hook/SECRET-TOKEN"\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "alerts.toml"
    path.write_text(text)
    return str(path)


def test_example_file_parses() -> None:
    config = load_config(str(EXAMPLE), {"CELERIAC_SLACK_WEBHOOK": "https://hooks.slack.com/x"})
    assert config.interval == 5.0
    assert [w.name for w in config.webhooks] == ["ops", "slack"]
    assert config.webhooks[1].format is Format.SLACK
    assert config.webhooks[0].headers == (("Authorization", "Bearer change-me"),)
    kinds = {r.name: r.kind for r in config.rules}
    assert set(kinds.values()) == set(Kind)
    backlog = next(r for r in config.rules if r.kind is Kind.QUEUE_LENGTH)
    assert (backlog.queues, backlog.above, backlog.duration) == (("celery",), 1000, 120)
    failing = next(r for r in config.rules if r.kind is Kind.FAILURE_RATE)
    assert (failing.above, failing.window, failing.min_tasks) == (0.25, 300, 20)
    stuck = next(r for r in config.rules if r.kind is Kind.LONG_RUNNING_TASK)
    assert stuck.duration == 1800 and stuck.matches_task("proj.reports.daily")
    assert not stuck.matches_task("proj.billing.charge")
    down = next(r for r in config.rules if r.kind is Kind.WORKER_OFFLINE)
    assert down.matches_worker("anything@host")
    assert parse_config({"webhook": [{"name": "a", "url": "http://h/"}], "rule": [
        {"name": "b", "kind": "worker_offline", "worker": "billing@*"}]}, "x", {},
    ).rules[0].matches_worker("billing@web1")
    assert not parse_config({"webhook": [{"name": "a", "url": "http://h/"}], "rule": [
        {"name": "b", "kind": "worker_offline", "worker": "billing@*"}]}, "x", {},
    ).rules[0].matches_worker("reports@web1")
    silence = next(r for r in config.rules if r.kind is Kind.NO_EVENTS)
    assert [w.name for w in config.targets(silence)] == ["ops"]
    assert [w.name for w in config.targets(failing)] == ["ops", "slack"]


@pytest.mark.parametrize(("text", "error"), [
    ("interval = ", "is not valid TOML"),
    ("intervall = 5", "unknown key 'intervall'"),
    ("[webhook]\nname = 'x'", "webhook must be written [[webhook]]"),
    ('[[webhook]]\nurl = "http://x/"', "webhook 1: name is required"),
    ('[[webhook]]\nname = "a"', "give exactly one of url and url_env"),
    ('[[webhook]]\nname = "a"\nurl = "ftp://x/"', "must be an http:// or https:// URL"),
    ('[[webhook]]\nname = "a"\nurl_env = "NOT_SET_ANYWHERE"', "NOT_SET_ANYWHERE is not set"),
    (HOOK + 'format = "xml"', "format must be json or slack"),
    (HOOK + "retries = -1", "retries must be between 0 and 100"),
    (HOOK + 'timeout = "soon"', "timeout: expected a duration"),
    (HOOK + HOOK, "webhook name 'ops' is used twice"),
    ('[[rule]]\nname = "r"\nkind = "no_events"\nfor = "1m"', "no [[webhook]]"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "cpu"', "unknown kind 'cpu'"),
    (HOOK + '[[rule]]\nkind = "no_events"', "rule 1: name is required"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "no_events"', "rule 1 ('r'): for is required"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "no_events"\nfor = "1m"\nabove = 3',
     "unknown key 'above'"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "failure_rate"\nabove = 1.5\nwindow = "1m"',
     "above is a fraction"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "failure_rate"\nabove = 0.5', "window is required"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "failure_rate"\nabove = "half"\nwindow = "1m"',
     "above must be a number"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "queue_length"\nqueue = "a"\nqueues = ["b"]\n'
     "above = 1", "give queue or queues, not both"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "queue_length"\nqueues = []\nabove = 1',
     "queues must be a list of queue names"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "long_running_task"\nabove = "0s"',
     "above: a duration must be positive"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "worker_offline"\nwebhooks = ["pager"]',
     "no webhook named 'pager'"),
    (HOOK + '[[rule]]\nname = "r"\nkind = "worker_offline"\n'
     '[[rule]]\nname = "r"\nkind = "worker_offline"', "rule name 'r' is used twice"),
])
def test_mistakes_are_one_clear_line(tmp_path: Path, text: str, error: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AlertConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert error in message
    assert message.startswith(f"alerts: {path}")
    assert "\n" not in message
    assert "SECRET-TOKEN" not in message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(AlertConfigError, match=r"cannot read .*missing\.toml"):
        load_config(str(tmp_path / "missing.toml"))
    (tmp_path / "latin.toml").write_bytes(b"interval = '\xe9'")
    with pytest.raises(AlertConfigError, match=r"not valid TOML|not UTF-8"):
        load_config(str(tmp_path / "latin.toml"))


def test_defaults() -> None:
    config = parse_config({
        "webhook": [{"name": "a", "url": "http://h/"}],
        "rule": [{"name": "w", "kind": "worker_offline"},
                 {"name": "q", "kind": "queue_length", "above": 0},
                 {"name": "f", "kind": "failure_rate", "above": 0, "window": 60}],
    }, "x.toml", {})
    w, q, f = config.rules
    assert (w.worker, w.duration) == ("*", 0.0)
    assert (q.queues, q.above) == ((), 0.0)
    assert (f.task, f.min_tasks, f.duration) == ("*", 1, 0.0)
    hook = config.webhooks[0]
    assert (hook.format, hook.retries, hook.backoff, hook.timeout) == (Format.JSON, 5, 1.0, 5.0)


def test_settings_refuse_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, HOOK + '[[rule]]\nname = "r"\nkind = "nope"')
    with pytest.raises(SettingsError, match="unknown kind"):
        Settings.build({"alerts": path}, environ={})
    with pytest.raises(SettingsError, match="unknown kind"):
        Settings.build({}, environ={"CELERIAC_ALERTS": path})
    good = write(tmp_path, HOOK)
    assert Settings.build({"alerts": good}, environ={}).alerts == good


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T0/B0/XYZ", "https://hooks.slack.com/***"),
    ("http://user:pw@10.0.0.1:8080/hook?token=abc", "http://10.0.0.1:8080/***"),
    ("https://alerts.example.com", "https://alerts.example.com/"),
    ("http://[::1]:9000/x", "http://[::1]:9000/***"),
])
def test_webhook_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_webhook_url(url) == shown
