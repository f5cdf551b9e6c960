"""Settings: flags over CELERIAC_* over defaults, Flower's variable honoured, bad values refused."""

from __future__ import annotations

import pytest

from celeriac.settings import Settings, SettingsError, parse_basic_auth, redact_url


def test_defaults_are_safe() -> None:
    s = Settings.build({}, environ={})
    assert s.address == "127.0.0.1"
    assert s.port == 5555
    assert s.auth_required
    assert s.basic_auth == ()


def test_environment_then_flags() -> None:
    env = {"CELERIAC_PORT": "6000", "CELERIAC_BROKER": "redis://h/1", "CELERIAC_MAX_TASKS": "7"}
    s = Settings.build({"port": None}, environ=env)
    assert (s.port, s.broker, s.max_tasks) == (6000, "redis://h/1", 7)
    s = Settings.build({"port": 7000}, environ=env)
    assert s.port == 7000


def test_flower_unauthenticated_api_variable() -> None:
    assert Settings.build({}, environ={"FLOWER_UNAUTHENTICATED_API": "true"}).unauthenticated_api
    assert not Settings.build({}, environ={"FLOWER_UNAUTHENTICATED_API": "0"}).unauthenticated_api
    assert Settings.build({}, environ={"CELERIAC_UNAUTHENTICATED_API": "yes"}).unauthenticated_api
    with pytest.raises(SettingsError):
        Settings.build({}, environ={"FLOWER_UNAUTHENTICATED_API": "maybe"})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CELERIAC_PORT": "http"}, "port"),
        ({"CELERIAC_PORT": "70000"}, "port"),
        ({"CELERIAC_MAX_TASKS": "0"}, "max_tasks"),
        ({"CELERIAC_INSPECT_TIMEOUT": "-1"}, "inspect_timeout"),
        ({"CELERIAC_BASIC_AUTH": "nopassword"}, "basic_auth"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        Settings.build({}, environ=env)


def test_basic_auth_format() -> None:
    assert parse_basic_auth("a:b, c:d:e") == (("a", "b"), ("c", "d:e"))


def test_url_prefix_normalised() -> None:
    assert Settings(url_prefix="/flower/").prefix == "/flower"
    assert Settings(url_prefix="flower").prefix == "/flower"
    assert Settings(url_prefix="/").prefix == ""


def test_redact_url_hides_password_only() -> None:
    assert redact_url("amqp://guest:secret@host:5672/vh") == "amqp://guest:***@host:5672/vh"
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
