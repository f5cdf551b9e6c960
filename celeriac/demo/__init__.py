"""``celeriac demo``: a whole Celery cluster on one machine, with nothing to install.

The broker is kombu's ``filesystem://`` transport and the result backend Celery's ``file://``
one, both in one demo directory, so the demo needs no server. The runner and the worker
processes it starts agree on that directory through ``CELERIAC_DEMO_DIR``; this module is the
one place that turns the directory into Celery configuration.

kombu's filesystem channel has two races between processes, and the demo hits both within
seconds: a message file appears (``open``) before it is written, so a consumer polling at that
moment claims an empty or partial message (``JSONDecodeError``, the consumer reconnects and the
message is lost); and the first two processes binding to an exchange both create its table with
``open("wb")``, so one binding is lost (a worker that never hears broadcasts: inspect, pool grow).
:class:`Transport` writes each message under a hidden name and renames it into place, and
creates and reads exchange tables under their lock. It also deletes an ``auto_delete`` queue
when its consumer cancels, as AMQP does and kombu's virtual transports do not, so a monitor
whose event receiver reconnects leaves no binding behind that every later event is copied to.
Every demo process uses it, through ``broker_transport``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

#: Where the demo keeps its broker, results and logs; the runner sets it for its workers.
DIR_ENV = "CELERIAC_DEMO_DIR"
#: The runner's pid, so that its workers can notice when it dies without stopping them.
PARENT_ENV = "CELERIAC_DEMO_PARENT"
#: How often every consumer looks for new message files: the demo's latency.
POLLING_INTERVAL = 0.1

__all__ = ["DIR_ENV", "PARENT_ENV", "POLLING_INTERVAL", "DirectoryError", "Transport",
           "celery_config", "claim", "default_dir", "demo_dir"]


class DirectoryError(RuntimeError):
    """The demo directory cannot be had: it cannot be created, or another demo still uses it."""


def default_dir() -> Path:
    """A per-user directory under the system temporary directory.

    Under ``tempfile.gettempdir()`` on purpose: kombu's filesystem transport claims a message by
    moving its file into that directory, and only a move within one file system is an atomic
    rename; across file systems two workers could both copy (and run) the same message.
    """
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"celeriac-demo-{uid}"


def demo_dir() -> Path:
    """The demo directory: ``$CELERIAC_DEMO_DIR`` if set, else :func:`default_dir`."""
    value = os.environ.get(DIR_ENV)
    return Path(value).resolve() if value else default_dir()


@contextlib.contextmanager
def claim(directory: Path, wait: float = 20.0,
          on_wait: Callable[[], None] | None = None) -> Iterator[int]:
    """Lock ``directory`` for one demo and empty it; yields the lock's file descriptor.

    The runner hands the descriptor down to its workers, so the lock lasts until the last
    process of a demo is gone, even one whose runner was killed (its workers then stop on their
    own): the next demo waits for them instead of wiping the broker under their feet. Wiping is
    needed because the filesystem transport never forgets the queues of processes that died.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DirectoryError(f"cannot use {directory}: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    busy = f"another celeriac demo is running in {directory}"
                    raise DirectoryError(busy) from None
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                time.sleep(0.2)
        for name in ("broker", "results", "logs"):
            shutil.rmtree(directory / name, ignore_errors=True)
        for sub in ("broker/queue", "broker/control", "results", "logs"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        yield fd
    finally:
        os.close(fd)


def celery_config(directory: Path) -> dict[str, Any]:
    """Celery settings for a cluster whose broker and backend live in ``directory``."""
    queue = directory / "broker" / "queue"
    return {
        # The host is ignored; naming one keeps kombu from warning that none was supplied.
        "broker_url": "filesystem://localhost/",
        "broker_transport": f"{__name__}:Transport",
        "broker_transport_options": {
            # One folder in and out: every process reads and writes the same message files.
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(directory / "broker" / "control"),
            "polling_interval": POLLING_INTERVAL,
        },
        "result_backend": f"file://{directory / 'results'}",
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_extended": True,
        # Prefetch one at a time, so that slow reports do not hold fast tasks hostage.
        "worker_prefetch_multiplier": 1,
        "task_acks_late": False,
        "timezone": "UTC",
    }


class Channel(filesystem.Channel):
    """kombu's filesystem channel with whole-file writes (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._auto_delete: set[str] = set()

    def queue_declare(self, queue: Any = None, passive: bool = False, **kwargs: Any) -> Any:
        ok = super().queue_declare(queue=queue, passive=passive, **kwargs)
        if kwargs.get("auto_delete") and not passive:
            self._auto_delete.add(ok.queue)
        return ok

    def basic_cancel(self, consumer_tag: Any) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue in self._auto_delete and queue not in self._tag_to_queue.values():
            self._auto_delete.discard(queue)
            self.queue_delete(queue)

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # A leading dot: ``_get`` matches on what follows the first dot, never ``<queue>.msg``.
        hidden = os.path.join(self.data_folder_out, f".{name}.tmp")
        try:
            with open(hidden, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(hidden, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc

    def get_table(self, exchange: str) -> list[Any]:
        try:
            with self._exchange_file(exchange).open("rb") as f:
                filesystem.lock(f, filesystem.LOCK_SH)
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot read the table of exchange {exchange!r}") from exc
        return [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(data))] if data else []

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self._edit_table(exchange, filesystem.exchange_queue_t(routing_key or "", pattern or "",
                                                               queue or ""), add=True)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any,
                **kwargs: Any) -> None:
        # The virtual channel's own bookkeeping, skipping kombu's racy table edit.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args,
                                                **kwargs)
        self._edit_table(exchange, filesystem.exchange_queue_t(routing_key or "", pattern or "",
                                                               queue or ""), add=False)

    def _edit_table(self, exchange: str, entry: Any, add: bool) -> None:
        """Add or remove one binding, creating the table if needed, all under one lock."""
        file = self._exchange_file(exchange)
        try:
            self.control_folder.mkdir(exist_ok=True)
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o600)
            with os.fdopen(fd, "rb+", buffering=0) as f:
                filesystem.lock(f, filesystem.LOCK_EX)
                data = f.read()
                table = [filesystem.exchange_queue_t(*q) for q in loads(bytes_to_str(data))
                         ] if data else []
                if add and entry not in table:
                    table.insert(0, entry)
                elif not add and entry in table:
                    table.remove(entry)
                else:
                    return
                f.seek(0)
                f.write(str_to_bytes(dumps(table)))
                f.truncate()
        except OSError as exc:
            raise ChannelError(f"Cannot update the table of exchange {exchange!r}") from exc


class Transport(filesystem.Transport):
    """The filesystem transport with :class:`Channel`; still ``filesystem`` to Celery."""

    Channel = Channel
