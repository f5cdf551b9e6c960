"""``celeriac demo``: start workers and a producer on an embedded broker, serve, clean up.

Everything the demo starts is owned by this process and stopped by it: each worker runs in a
process group of its own (so a terminal's Ctrl-C reaches only the runner, which then stops the
workers in order), and on the way out every group still alive is killed. The demo directory is
claimed and wiped at start (:func:`celeriac.demo.claim`). POSIX only (process groups, ``flock``,
``SIGQUIT``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click

from celeriac.demo import (
    DIR_ENV,
    PARENT_ENV,
    DirectoryError,
    celery_config,
    claim,
    demo_dir,
)
from celeriac.store.base import StoreError

log = logging.getLogger("celeriac.demo")

ADDRESS = "127.0.0.1"  # no credentials in the demo, so never more than loopback


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: leave :func:`run_demo`'s try block and clean up."""


def run_demo(port: int = 5555, workers: int = 2, rate: float = 2.0,
             directory: Path | None = None) -> None:
    """Run the demo in the foreground until Ctrl-C or SIGTERM, then stop all it started."""
    if workers < 1:
        _fail("--workers must be at least 1", code=2)
    if rate < 0:
        _fail("--rate must be zero or more tasks a second", code=2)
    if not _port_free(port):
        _fail(f"port {port} on {ADDRESS} is already in use; pick another with --port", code=1)
    directory = (directory or demo_dir()).resolve()

    def waiting() -> None:
        click.echo(f"celeriac demo: waiting for the previous demo in {directory} to stop...",
                   err=True)

    try:
        with _on_stop_signals(_raise_stopped), claim(directory, on_wait=waiting) as lock:
            _run(directory, lock, port, workers, rate)
    except Stopped:
        pass
    except (DirectoryError, StoreError) as exc:  # e.g. an unusable data directory: one line
        _fail(str(exc), code=1)


def _run(directory: Path, lock: int, port: int, workers: int, rate: float) -> None:
    from celeriac.cluster import Cluster
    from celeriac.demo import tasks
    from celeriac.demo.producer import Producer
    from celeriac.server import serve
    from celeriac.settings import Settings

    config = celery_config(directory)
    tasks.app.conf.update(config)
    # Built here rather than from CELERIAC_* variables: whatever the environment says, the
    # demo serves without credentials, so only on loopback.
    settings = Settings(
        broker=config["broker_url"],
        app="celeriac.demo.tasks",
        result_backend=config["result_backend"],
        address=ADDRESS,
        port=port,
        unauthenticated_api=True,
    ).validate()
    fleet = Fleet(directory, workers, lock)
    cluster = Cluster(settings, app=tasks.app)
    producer = Producer(rate, ready=lambda: bool(cluster.state.online_workers()))
    try:
        fleet.start()
        producer.start()
        _banner(directory, fleet, port, rate)
        serve(settings, cluster)
    finally:  # also on Stopped, which run_demo catches
        with _on_stop_signals(lambda signum, frame: fleet.hurry.set()):
            click.echo("celeriac demo: stopping the workers (Ctrl-C again to kill them now)...",
                       err=True)
            producer.stop()
            fleet.stop()
            click.echo("celeriac demo: stopped.", err=True)


@dataclass
class Worker:
    hostname: str
    options: list[str]  # how its pool is sized
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def group_alive(self) -> bool:
        """Whether anything is left in the worker's process group (its pool processes too)."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def send(self, sig: signal.Signals, group: bool = False) -> None:
        """Signal the worker's main process, or its whole process group."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                (os.killpg if group else os.kill)(self.proc.pid, sig)


class Fleet:
    """The demo's ``celery worker`` processes: the first one autoscales, the others have 2."""

    def __init__(self, directory: Path, count: int, lock: int, grace: float = 6.0) -> None:
        host = socket.gethostname()
        self.directory = directory
        self.lock = lock  # inherited by the workers: see celeriac.demo.claim
        self.grace = grace
        self.workers = [
            Worker(
                hostname=f"demo{i}@{host}",
                options=["--autoscale=4,1"] if i == 1 else ["--concurrency=2"],
                log_path=directory / "logs" / f"demo{i}.log",
            )
            for i in range(1, count + 1)
        ]
        self._stopping = threading.Event()
        self.hurry = threading.Event()  # set: kill now, skip the grace

    def start(self) -> None:
        env = {**os.environ, DIR_ENV: str(self.directory), PARENT_ENV: str(os.getpid()),
               "PYTHONPATH": _worker_pythonpath()}
        for w in self.workers:
            args = [sys.executable, "-m", "celery", "-A", "celeriac.demo.tasks", "worker",
                    "--events", "--pool=prefork", f"--hostname={w.hostname}",
                    "--loglevel=warning", "--without-gossip", "--without-mingle", *w.options]
            with w.log_path.open("ab") as out:
                # Own session: the terminal's Ctrl-C reaches only the runner, and the group can
                # be killed whole. cwd: ``-A`` must not pick up a stray package from the user's.
                w.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env, cwd=self.directory,
                                          start_new_session=True, pass_fds=(self.lock,))
        threading.Thread(target=self._watch, name="celeriac-demo-fleet", daemon=True).start()

    def stop(self) -> None:
        """Cold-shut every worker (a running 10-second report is not waited for), then kill.

        An idle worker takes 5 to 6 s to finish a cold shutdown on a polling transport (its loop
        drains for 2 s, then the timer and the pool threads stop); one that takes longer is
        killed, which costs nothing here: the next run wipes the broker anyway.
        """
        self._stopping.set()
        for w in self.workers:
            if w.alive:
                w.send(signal.SIGQUIT)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not self.hurry.is_set():
            if not any(w.alive or w.group_alive() for w in self.workers):
                break
            time.sleep(0.1)
        for w in self.workers:
            if w.alive or w.group_alive():
                log.warning("killing %s, which did not stop in time", w.hostname)
                w.send(signal.SIGKILL, group=True)
            if w.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(timeout=5)

    def _watch(self) -> None:
        """Say so when a worker dies on its own: the demo keeps going with the others."""
        reported: set[str] = set()
        while not self._stopping.wait(1.0):
            for w in self.workers:
                if w.hostname not in reported and w.proc is not None and not w.alive:
                    reported.add(w.hostname)
                    log.error("worker %s exited with code %s; see %s",
                              w.hostname, w.proc.returncode, w.log_path)


def _worker_pythonpath() -> str:
    """The runner's PYTHONPATH, plus the source tree if that is where celeriac comes from.

    Run as ``python -m celeriac`` in a checkout, celeriac is importable only from the current
    directory, which the workers (started in the demo directory) do not share. An installed
    celeriac is left alone: putting site-packages on PYTHONPATH would reorder ``sys.path``.
    """
    import celeriac

    root = str(Path(celeriac.__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in {str(Path(p).resolve()) for p in sys.path[1:] if p}:
        paths.insert(0, root)
    return os.pathsep.join(paths)


def _banner(directory: Path, fleet: Fleet, port: int, rate: float) -> None:
    url = f"http://{ADDRESS}:{port}"
    worker = fleet.workers[-1].hostname
    lines = [
        "",
        "celeriac demo",
        f"  broker   filesystem:// and results file:// under {directory}",
        *(f"  worker   {w.hostname} ({w.options[0][2:]}), log {w.log_path}"
          for w in fleet.workers),
        f"  tasks    about {rate:g} a second: add, resize_image, process_upload, "
        "send_email, fetch_url, report",
        f"  API      {url}  (loopback only, no credentials)",
        "",
        "Try:",
        f"  curl -s '{url}/api/workers?status=true'",
        f"  curl -s '{url}/api/tasks?limit=5&state=FAILURE'",
        f"  curl -s '{url}/api/workers?refresh=true'",
        f"  curl -s -X POST '{url}/api/worker/pool/grow/{worker}?n=1'",
        f"  curl -s -X POST -H 'Content-Type: application/json' -d '{{\"args\": [2, 3]}}' "
        f"'{url}/api/task/apply/demo.add'",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    click.echo("\n".join(lines))


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"celeriac demo: {message}", err=True)
    sys.exit(code)


def _port_free(port: int) -> bool:
    """Whether uvicorn will be able to listen: bind the way it does (``SO_REUSEADDR``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ADDRESS, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def _on_stop_signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with ``handler`` for a while.

    While the demo serves, :func:`_raise_stopped`: uvicorn takes both signals while it runs and
    raises them again once it has shut down, which lands there and unwinds into the cleanup.
    During the cleanup, a hurry: a second Ctrl-C must not abandon the workers.
    """
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
