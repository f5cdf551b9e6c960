"""Settings: flags over CELERIAC_* over defaults, Flower's variable honoured, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac.settings import (
    Settings,
    SettingsError,
    is_loopback,
    parse_basic_auth,
    redact_url,
)


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


def test_api_tokens_add_up_from_variable_flags_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\n\nfiler:f1:read-only\n  spaced:s:2  \n")
    s = Settings.build(
        {"api_tokens": ("ci:c:1", "grafana:g1:read-only"), "api_token_file": str(token_file)},
        environ={"CELERIAC_API_TOKENS": "env:e1, other:o1:admin"},
    )
    assert [(t.name, t.token, t.read_only) for t in s.api_tokens] == [
        ("env", "e1", False), ("other", "o1", False), ("ci", "c:1", False),
        ("grafana", "g1", True), ("filer", "f1", True), ("spaced", "s:2", False),
    ]
    assert s.has_credentials
    assert Settings.build({"api_tokens": ()}, environ={}).api_tokens == ()


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"api_tokens": ("s3cr3t-only",)}, {}, "expected NAME:TOKEN"),
        ({"api_tokens": ("ci:",)}, {}, "expected NAME:TOKEN"),
        ({}, {"CELERIAC_API_TOKENS": "ci:s3cr3t-one,ci:s3cr3t-two"}, "'ci' given more than once"),
        ({"api_tokens": ("a:s3cr3t-same", "b:s3cr3t-same")}, {}, "two names share one token"),
        ({"api_tokens": ("a:s3cr3t with space",)}, {}, "contains a space"),
        ({"basic_auth": "ann:s3cr3t-x", "basic_auth_read_only": "ann:s3cr3t-y"}, {},
         "user 'ann' given more than once"),
        ({}, {"CELERIAC_BASIC_AUTH_READ_ONLY": "s3cr3t-nouser"}, "basic_auth_read_only"),
    ],
)
def test_bad_credentials_name_the_setting_not_the_secret(
    flags: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        Settings.build(flags, environ=env)
    assert "s3cr3t" not in str(caught.value)


def test_token_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"api_token_file: cannot read .*No such file"):
        Settings.build({"api_token_file": str(tmp_path / "missing")}, environ={})
    bad = tmp_path / "bad"
    bad.write_text("ok:t1\nbroken-s3cr3t\n")
    with pytest.raises(SettingsError, match=r"bad line 2: expected NAME:TOKEN") as caught:
        Settings.build({}, environ={"CELERIAC_API_TOKEN_FILE": str(bad)})
    assert "s3cr3t" not in str(caught.value)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.build(
        {"basic_auth": "ann:s3cr3t-a", "basic_auth_read_only": "bob:s3cr3t-b",
         "api_tokens": ("ci:s3cr3t-c",)}, environ={}
    )
    assert "s3cr3t" not in repr(s)
    assert "s3cr3t" not in repr(s.api_tokens)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
     ("example.com", False), ("", False)],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback
    s = Settings(address=address)
    assert s.exposed_without_auth is not loopback
    assert not s.replace(unauthenticated_api=True).exposed_without_auth
    assert not s.replace(basic_auth_read_only=(("a", "b"),)).exposed_without_auth


def test_metrics_public_and_tls_settings(tmp_path: Path) -> None:
    assert Settings.build({}, environ={"CELERIAC_METRICS_PUBLIC": "true"}).metrics_public
    assert not Settings.build({"metrics_public": False}, environ={}).metrics_public
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    s = Settings.build({"certfile": str(cert)}, environ={})
    assert (s.certfile, s.keyfile) == (str(cert), None)
    with pytest.raises(SettingsError, match="certfile: no such file"):
        Settings.build({"certfile": str(tmp_path / "nope.pem")}, environ={})
    with pytest.raises(SettingsError, match="keyfile: given without certfile"):
        Settings.build({"keyfile": str(cert)}, environ={})
