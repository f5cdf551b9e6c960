"""The command line fails with one clear line, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys


def run_celeriac(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celeriac", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_broker_is_one_line_and_hides_the_password() -> None:
    port = closed_port()
    done = run_celeriac("--broker", f"amqp://guest:hunter2@127.0.0.1:{port}//")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("celeriac: cannot connect to broker amqp://guest:***@127.0.0.1")
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_bad_setting_exits_2_with_its_name() -> None:
    done = run_celeriac("--broker", "redis://127.0.0.1:1/0", "--port", "99999")
    assert done.returncode == 2
    assert done.stderr.strip() == "celeriac: invalid setting: port: 99999 is not a TCP port"


def test_unknown_app_module() -> None:
    done = run_celeriac("--broker", "redis://127.0.0.1:1/0", "-A", "no_such_module_here")
    assert done.returncode == 2
    assert "cannot load 'no_such_module_here'" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    done = run_celeriac("--no-such-flag")
    assert done.returncode == 2
    assert "No such option" in done.stderr


def test_flower_spelling_of_options_is_accepted() -> None:
    done = run_celeriac("--help")
    assert done.returncode == 0
    for flag in ("--max_tasks", "--max-tasks", "--url_prefix", "--basic_auth",
                 "--inspect_timeout", "--purge_offline_workers", "--unauthenticated_api",
                 "--api-token", "--api-token-file", "--basic-auth-read-only", "--metrics-public",
                 "--certfile", "--keyfile"):
        assert flag in done.stdout


def test_celery_subcommand_is_registered() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "celeriac", "--help"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--unauthenticated-api" in done.stdout
