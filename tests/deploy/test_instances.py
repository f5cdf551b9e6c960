"""The deployment example of deploy/README.md, run for real: the Procfile starts two celeriac
instances on one PostgreSQL under honcho, nginx (deploy/nginx) proxies them under /celeriac/,
the Dockerfile's HEALTHCHECK probes one; the systemd unit passes ``systemd-analyze verify``.

Docker itself is not run (no engine on the test machines): the Dockerfile is read, its
HEALTHCHECK command is run against a live instance, and the files it copies build the wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.fixtures import wait_for
from tests.fixtures.brokers import BrokerInfo
from tests.fixtures.monitors import clean_environ
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.processes import REPO_ROOT, ManagedProcess, free_port
from tests.fixtures.workers import WorkerFactory

DEPLOY = REPO_ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "celeriac@.service"
PROCFILE = DEPLOY / "honcho" / "Procfile"
COMMON_ENV = DEPLOY / "honcho" / "common.env"
NGINX_CONF = DEPLOY / "nginx" / "celeriac.conf"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
TOKEN = "deploy-test-token-0123456789abcdef"
ROLES = {"leader", "follower"}


def _sbin(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None)


NGINX = _sbin("nginx")
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (Debian: apt-get install nginx-light)")


# systemd ----------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian: apt-get install systemd)")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's celeriac.
    celeriac = shutil.which("celeriac") or str(Path(sys.executable).parent / "celeriac")
    text = UNIT.read_text()
    assert "ExecStart=/opt/celeriac/bin/celeriac\n" in text
    (tmp_path / UNIT.name).write_text(text.replace("/opt/celeriac/bin/celeriac", celeriac))
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "celeriac@a.service")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # An unknown key or a bad value is only a warning (exit 0): any output counts as failure.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    settings = [line for line in text.splitlines() if line and not line.startswith("#")]
    for wanted in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                   "Restart=on-failure", "StateDirectory=celeriac/%i",
                   "EnvironmentFile=/etc/celeriac/secrets.env"):
        assert wanted in settings, wanted
    exec_start = next(s for s in settings if s.startswith("ExecStart="))
    assert "CELERIAC" not in exec_start and "postgresql" not in exec_start  # no secret in argv


# nginx ------------------------------------------------------------------------------------------


def nginx_main_conf(workdir: Path, site: Path) -> Path:
    """A minimal nginx.conf around the shipped server block, all files in ``workdir``."""
    temp = " ".join(f"{kind}_temp_path {workdir / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} info;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log {workdir / 'access.log'}; {temp}\n include {site}; }}\n"
    )
    return conf


@needs_nginx
def test_the_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    assert NGINX is not None
    conf = nginx_main_conf(tmp_path, NGINX_CONF)
    done = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "[warn]" not in done.stderr and "[emerg]" not in done.stderr, done.stderr
    text = NGINX_CONF.read_text()
    for wanted in ("proxy_next_upstream error timeout", "proxy_buffering off",
                   "X-Forwarded-Proto $scheme", "location /celeriac/ui/stream"):
        assert wanted in text, wanted


# Docker -----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + (" " if line.rstrip().endswith("\\")
                                                       else "")
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    assert not current, "a continuation line at the end"
    return [(w.split(None, 1)[0].upper(), w.split(None, 1)[1]) for w in logical]


def healthcheck_argv() -> list[str]:
    (args,) = [a for i, a in dockerfile_instructions() if i == "HEALTHCHECK"]
    argv = json.loads(args[args.index("CMD") + 3:])
    assert isinstance(argv, list) and argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_the_dockerfile_is_complete_and_its_copies_build_the_package(tmp_path: Path) -> None:
    steps = dockerfile_instructions()
    kinds = [i for i, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert set(kinds) <= {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE",
                          "HEALTHCHECK", "ENTRYPOINT", "CMD", "ARG", "LABEL"}, kinds
    user = [a for i, a in steps if i == "USER"]
    assert user and user[-1] not in ("root", "0") and kinds.index("USER") > max(
        n for n, k in enumerate(kinds) if k == "RUN")  # nothing runs as root after USER
    assert ("EXPOSE", "5555") in steps
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "CELERIAC_ADDRESS=0.0.0.0" in env and "TOKEN" not in env and "AUTH" not in env
    assert ("ENTRYPOINT", '["celeriac"]') in steps
    (install,) = [a for i, a in steps if i == "RUN" and "pip install" in a]
    assert "'.[postgres]'" in install
    # The files the image copies are enough to build the package (what `pip install .` does).
    copied = [a.split() for i, a in steps if i == "COPY"]
    for *sources, _ in copied:
        for source in sources:
            target = tmp_path / "src" / source
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(REPO_ROOT / source, target,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO_ROOT / source, target)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(tmp_path / "dist"), str(tmp_path / "src")],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("celeriac-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "celeriac/cli.py" in names and any(n.startswith("celeriac/web/static/") for n in names)


# Two instances under honcho, behind nginx ---------------------------------------------------------


def role(client: httpx.Client, path: str = "/celeriac/healthcheck") -> str:
    try:
        reply = client.get(path, timeout=2)
    except httpx.TransportError:
        return ""
    return reply.headers.get("X-Celeriac-Role", "") if reply.status_code == 200 else ""


def task_states(client: httpx.Client) -> dict[str, str]:
    reply = client.get("/celeriac/api/tasks", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    return {uuid: task["state"] for uuid, task in reply.json().items()}


@pytest.fixture
def honcho(tmp_path: Path, redis_broker: BrokerInfo,
           postgres_server: PostgresServer) -> Iterator[tuple[ManagedProcess, int, int]]:
    """``honcho start`` on the shipped Procfile and common.env, with this test's broker and
    database in a second env file and the secrets (token, PGPASSWORD) in a third."""
    if shutil.which("honcho") is None and not (Path(sys.executable).parent / "honcho").exists():
        pytest.fail("honcho is not installed (pip install -e '.[test]' installs it)")
    db = urlsplit(postgres_server.new_url("deploy")).path.lstrip("/")
    ports = free_port(), free_port()
    local = tmp_path / "local.env"
    local.write_text(
        f"CELERIAC_BROKER={redis_broker.url}\nCELERIAC_RESULT_BACKEND={redis_broker.backend_url}\n"
        f"CELERIAC_DB={postgres_server.url(db, password=False)}\n"
        f"CELERIAC_PORT_A={ports[0]}\nCELERIAC_PORT_B={ports[1]}\n"
    )
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f"CELERIAC_API_TOKENS=ops:{TOKEN}\nPGPASSWORD={postgres_server.password}\n")
    secrets.chmod(0o600)
    env = clean_environ()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PGPASSWORD", None)
    argv = [str(Path(sys.executable).parent / "honcho") if not shutil.which("honcho")
            else "honcho", "start", "-f", str(PROCFILE),
            "-e", f"{COMMON_ENV},{local},{secrets}"]
    process = ManagedProcess(argv, tmp_path / "honcho.log", env=env, cwd=tmp_path,
                             name="honcho")
    yield process, *ports
    process.stop(signal.SIGTERM, timeout=20)


def test_two_instances_under_honcho_behind_nginx(
    honcho: tuple[ManagedProcess, int, int], redis_broker: BrokerInfo,
    celery_worker: WorkerFactory, tmp_path: Path,
) -> None:
    process, port_a, port_b = honcho
    auth = {"Authorization": f"Bearer {TOKEN}"}
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", headers=auth, timeout=30)
               for p in (port_a, port_b)]

    def both_up() -> bool:
        if not process.alive():
            pytest.fail(process.describe_death())
        return {role(c) for c in clients} == ROLES

    wait_for(both_up, 30, 0.1, "one leader and one follower on /celeriac/healthcheck")
    # Credentials are required (from the root-only env file): nothing answers without them.
    assert httpx.get(f"http://127.0.0.1:{port_a}/celeriac/api/tasks").status_code == 401
    celery_worker(redis_broker)
    sent = [redis_broker.tasks.add.delay(i, 1) for i in range(10)]
    assert [r.get(timeout=20) for r in sent] == [i + 1 for i in range(10)]
    ids = {r.id for r in sent}
    for client in clients:
        wait_for(lambda c=client: all(task_states(c).get(i) == "SUCCESS" for i in ids), 20,
                 message=f"{client.base_url} to show every task")
    # The Dockerfile's HEALTHCHECK command, run here: it passes on a live instance only.
    probe_env = {**clean_environ(), "CELERIAC_URL_PREFIX": "celeriac"}
    for port, expected in ((port_a, 0), (free_port(), 1)):
        done = subprocess.run(healthcheck_argv(), env={**probe_env, "CELERIAC_PORT": str(port)},
                              capture_output=True, timeout=30)
        assert done.returncode == expected, done.stderr
    if NGINX is not None:
        through_nginx(port_a, port_b, ids, tmp_path)
    # Stopping honcho stops both instances, and nothing is left behind.
    children = psutil.Process(process.pid).children(recursive=True)
    assert len([c for c in children if "celeriac" in " ".join(c.cmdline())]) >= 2
    os.kill(process.pid, signal.SIGTERM)  # honcho only, not its group: it must pass it on
    process.proc.wait(20)
    deadline = time.monotonic() + 10
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, [c.pid for c in children if c.is_running()]
        time.sleep(0.1)
    for client in clients:
        client.close()


@contextlib.contextmanager
def nginx_in_front(port_a: int, port_b: int, work: Path) -> Iterator[httpx.Client]:
    """The shipped nginx config with its ports changed, running; a client on it."""
    assert NGINX is not None
    work.mkdir()
    port = free_port()
    site = work / "celeriac.conf"
    site.write_text(NGINX_CONF.read_text()
                    .replace("listen 80;", f"listen 127.0.0.1:{port};")
                    .replace("127.0.0.1:5555", f"127.0.0.1:{port_a}")
                    .replace("127.0.0.1:5556", f"127.0.0.1:{port_b}"))
    conf = nginx_main_conf(work, site)
    nginx = ManagedProcess([NGINX, "-p", str(work), "-e", "stderr", "-c", str(conf)],
                           work / "nginx.log", cwd=work, name="nginx")
    proxy = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        wait_for(lambda: nginx.alive() and role(proxy) in ROLES, 10, 0.1,
                 "nginx to proxy /celeriac/healthcheck", ignore=(httpx.TransportError,))
        yield proxy
    finally:
        proxy.close()
        nginx.stop(signal.SIGQUIT, timeout=10)


def through_nginx(port_a: int, port_b: int, ids: set[str], tmp_path: Path) -> None:
    with nginx_in_front(port_a, port_b, tmp_path / "nginx") as proxy:
        # Round robin over both: each role shows up through the one address.
        assert {role(proxy) for _ in range(6)} == ROLES
        assert ids <= set(task_states(proxy))
        with proxy.stream("GET", "/celeriac/ui/stream", timeout=10) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            first = next(line for line in r.iter_lines() if line.startswith("data: "))
            assert json.loads(first[6:])["hello"] is True
    # Failover: with one upstream down (a closed port), every request still gets an answer.
    with nginx_in_front(port_a, free_port(), tmp_path / "nginx-failover") as proxy:
        answers = [proxy.get("/celeriac/healthcheck").status_code for _ in range(6)]
        assert answers == [200] * 6
        assert ids <= set(task_states(proxy))
