"""The SQLite writer in a process of its own, so that writing history never slows ingestion.

Why a process: writing a task to SQLite (the row, its ten indexes, its trigram text index)
costs more CPU than reading, decoding and merging its events, and in one process both share
the GIL: each SQL statement gives it up, and getting it back from the busy ingest thread takes
time the writer then spends idle. Measured at 100,000 tasks on Redis, the process used about
1.2 of the 2 cores, the writer thread was the bottleneck and the event reader waited for it
(bench/results/ingest.md). In a process of its own the writer has a core of its own, and the
ingest process only pickles each batch (about 1 µs a task).

The protocol is a request and its reply at a time over the child's stdin/stdout, each a pickle
after its length: ``("write", records, workers)``, ``("prune", budget, max_tasks, max_age)``
and ``("close",)``; the replies are ``("ok", result)`` or ``("error", kind, text)``. A batch
holding a value the child cannot rebuild (an object of a class only the parent knows) gets
the error :data:`UNREADABLE` and is sent again with every value plain, as the writer thread
would have stored it: one bad value never stops the history. The parent's writer thread is
the only caller, so one request is in flight at a time, and a batch is committed when
``write`` returns, as with the writer thread alone (``put_mark`` holds).

If the child dies (killed, out of memory), the call raises :class:`WriterError` and the batch
goes back to the pending ones (``store/writer.py``); the next call starts a new child, which
reads the database afresh: nothing committed is lost, nothing uncommitted was acknowledged.
A child that dies again at once (it cannot open the database, say) is not started again at
every flush: after the third failure in a row the next start waits, 0.5 s doubling up to
:data:`RESTART_MAX` (each start costs ~0.1 s of CPU, measured), and the calls meanwhile fail
with the last error (after one or two, a closing store's last flushes still start a new one).
The child runs at a lower CPU priority (:data:`NICE`), and ignores SIGINT and SIGTERM, which
a terminal or a service manager sends to every process of the group: it exits when the parent
closes it, or when its stdin reaches EOF (the parent is gone), after the transaction in
progress.

A child that hangs (stopped, blocked on a hung disk or NFS mount, deadlocked) must not hang
celeriac with it, so the parent never blocks on the pipes: it waits for them with ``poll``,
and takes the child for hung when a request has stayed unanswered for
:data:`REQUEST_TIMEOUT` while the child used no CPU at all. The CPU test is what tells a hung
child from a busy one: a 12 MB batch, or retention over a big table, takes seconds of work
(and more on a loaded machine, at a low priority), and the batch that follows an outage can
be far bigger; killing it on a timer alone would kill it again at every retry. A hung child
is killed, and the call fails as if it had died (:class:`WriterError` ``WriterHung``): the
batch goes back to the pending ones and the next call starts a new child. Where the CPU time
cannot be read (no ``/proc``) the timeout alone decides, and :data:`REQUEST_LIMIT` bounds even
a busy request (a child looping on a bug). Once the store closes (:meth:`WriterProcess.closing`)
there is a deadline instead: what the child has not answered by then is given up, and the
closing store logs the tasks it could not write; a monitor that cannot stop because its disk
hangs is worse than losing the last batch to that disk.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import IO, Any, NoReturn

from celeriac.heap import malloc_trim
from celeriac.store.base import TaskRecord, plain
from celeriac.store.sqlite_write import Pruned, SqliteWriter, Written, error_name

_HEADER = struct.Struct("!Q")
#: The error kind of a request the child could not unpickle.
UNREADABLE = "UnreadableRequest"
# The child's start: its module from the parent's celeriac (``root``), and never from the
# parent's working directory, which ``python -m`` or ``-c`` would put first on sys.path: a
# ``json.py`` or another celeriac checkout there must not replace what the child imports.
_BOOT = (
    "# celeriac.store.sqlite_process: the SQLite writer (named so for ps and top)\n"
    "import sys\n"
    "root = sys.argv.pop(1)\n"
    "if sys.path[:1] == ['']:\n"
    "    del sys.path[0]\n"
    "if root not in sys.path:\n"
    "    sys.path.insert(0, root)\n"
    "from celeriac.store.sqlite_process import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
#: The longest pause between two starts of a writer process that keeps failing, in seconds.
RESTART_MAX = 30.0
#: How long a request may stay unanswered, in seconds, while the child uses no CPU, before
#: the child is taken for hung and killed (see the module docstring). Generous: a child that
#: waits on I/O is not hung until it waits this long without doing anything else, and a
#: minute of history not written is harmless (it waits in the pending batch).
REQUEST_TIMEOUT = 60.0
#: The longest one request may take even while the child works, in seconds: ten minutes is
#: far beyond the biggest batch measured (seconds), so only a child looping on a bug, or one
#: whose CPU time cannot be read, is killed by it.
REQUEST_LIMIT = 600.0
#: How long a closed child gets to exit (it runs ``PRAGMA optimize``), at least, in seconds.
EXIT_WAIT = 2.0
#: How long to wait for a killed child to be gone, in seconds; one blocked in the kernel (a
#: hung disk) cannot die until its I/O returns, and is then left behind rather than waited for.
KILL_WAIT = 2.0
#: The longest one ``poll`` sleeps, in seconds: a request waiting that long looks again at the
#: deadline ``closing`` may have set meanwhile (a request lasting over a second is rare).
POLL_SLICE = 1.0
#: The writer's CPU priority below the event reader's: on a busy machine the history may lag
#: a few batches behind (``max_pending`` bounds how many), events are read on time.
NICE = 10

log = logging.getLogger(__name__)


class WriterError(Exception):
    """A write the writer process refused or could not make; ``sqlite_errorname`` is the
    kind it is counted by (SQLite's error name, or why the process is gone)."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.sqlite_errorname = kind


def _send(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or None at EOF."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _picklable(records: list[TaskRecord]) -> list[TaskRecord]:
    """The records with every value plain, for a batch an event filled with something pickle
    refuses (a value only the writer's ``plain`` would have turned into text anyway)."""
    return [{k: v if k == "children" else plain(v) for k, v in r.items()} for r in records]


def _plain_workers(workers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The workers' states as the writer stores them (JSON, anything else as its ``str``):
    still dicts, not their ``str`` (the API reads them back as objects)."""
    return {h: json.loads(json.dumps(i, default=str)) for h, i in workers.items()}


def _cpu_ticks(pid: int) -> int | None:
    """The CPU time (user and system, in clock ticks) a process has used, or None where it
    cannot be read (no ``/proc``, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat
    except (OSError, IndexError, ValueError):
        return None


class _Unanswered(Exception):
    """The child did not answer in time; the text says how (for the log and the error)."""


class _Watch:
    """The wait for one request's reply: returns when a pipe is ready, raises
    :class:`_Unanswered` when the child is taken for hung or the close deadline passes."""

    def __init__(self, owner: WriterProcess, pid: int) -> None:
        self.owner = owner
        self.pid = pid
        self.started = time.monotonic()
        self.timeout = owner.request_timeout
        self.check_at = self.started + self.timeout
        self.cpu = _cpu_ticks(pid)

    def wait(self, fd: int, event: int) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            now = time.monotonic()
            close_by = self.owner._close_by
            limit = self.check_at if close_by is None else min(self.check_at, close_by)
            if now >= limit:
                self._check(now, close_by)
                continue
            wait = min(limit - now, POLL_SLICE)
            if poller.poll(math.ceil(wait * 1000)):
                return  # ready, or the other end closed: the read or write says which

    def _check(self, now: float, close_by: float | None) -> None:
        waited = now - self.started
        if close_by is not None and now >= close_by:
            raise _Unanswered(f"did not answer in {waited:.1f} s, by the store's close deadline")
        if waited >= REQUEST_LIMIT:
            raise _Unanswered(f"worked on one request for {waited:.0f} s")
        cpu = _cpu_ticks(self.pid)
        if cpu is None or cpu == self.cpu:
            raise _Unanswered(
                f"did not answer for {waited:.1f} s and used no CPU meanwhile"
                " (stopped, or waiting on a hung disk)"
            )
        self.cpu = cpu  # busy: give it another while
        self.check_at = now + self.timeout


def _let_go(proc: subprocess.Popen[bytes]) -> None:
    """Close a child's pipes when its :class:`WriterProcess` is dropped without ``close()``:
    it then exits at EOF (subprocess reaps it later) instead of living as long as this
    process, holding the database and two descriptors here."""
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if stream is not None:
                stream.close()


class WriterProcess:
    """A :class:`SqliteWriter` in a child process, with the same ``write``, ``prune`` and
    ``close``; started at the first call, and again after it died or hung.

    ``request_timeout`` is :data:`REQUEST_TIMEOUT`, an attribute so that tests can shorten it.
    """

    request_timeout = REQUEST_TIMEOUT

    def __init__(self, path: str, recent_max: int) -> None:
        self.path = path
        self.recent_max = recent_max
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False  # then no child is started again
        self._close_by: float | None = None  # (monotonic) see closing()
        self.starts = 0  # children started: more than one means one died
        self._failures = 0  # in a row: the child gone, or not started
        self._retry_at = 0.0  # (monotonic) no start before then
        self._gone: tuple[str, str] = ("WriterExited", "")
        self._finalizer: weakref.finalize | None = None  # see _let_go

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return None if proc is None else proc.pid

    def write(self, records: list[TaskRecord], workers: dict[str, dict[str, Any]]) -> Written:
        result: Written
        try:
            data = pickle.dumps(("write", records, workers), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass  # a value pickle refuses: sent plain, below
        else:
            try:
                result = self._call(data)
                return result
            except WriterError as exc:
                if exc.sqlite_errorname != UNREADABLE:
                    raise
        data = pickle.dumps(
            ("write", _picklable(records), _plain_workers(workers)),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        result = self._call(data)
        return result

    def prune(self, budget: float, max_tasks: int | None, max_age: float | None) -> Pruned:
        result: Pruned = self._call(pickle.dumps(("prune", budget, max_tasks, max_age)))
        return result

    def rest(self) -> None:
        """See :meth:`SqliteWriter.rest` (the child then gives the freed heap back). A child
        not running holds nothing: none is started for this."""
        if self._proc is not None:
            self._call(pickle.dumps(("rest",)))

    def closing(self, deadline: float) -> None:
        """The store is closing: from ``deadline`` (monotonic) on, a request in flight is
        given up and its child killed, and no request or start is tried any more. Called
        before the store's last flushes, from another thread than theirs (no lock: they may
        hold it, waiting for the child)."""
        self._close_by = deadline

    def close(self) -> None:
        """Ask the child to finish and exit; killed if it has not by the close deadline (at
        least :data:`EXIT_WAIT` from now). Returns in bounded time whatever the child does."""
        if self._close_by is None:
            self._close_by = time.monotonic() + EXIT_WAIT
        wait = max(self._close_by - time.monotonic(), EXIT_WAIT)
        if not self._lock.acquire(timeout=wait + POLL_SLICE + KILL_WAIT):
            # A call still waits on the child (it gives up at the deadline, and the next call
            # finds the writer closed): nothing of the child is ours to touch meanwhile.
            self._closed = True
            log.error("the writer of %s did not come back from its last request", self.path)
            return
        try:
            self._closed = True
            proc = self._proc
            if proc is None:
                return
            try:
                assert proc.stdin is not None
                self._send(proc, _Watch(self, proc.pid), _request(("close",)))
            except (OSError, _Unanswered):
                pass  # gone or hung: _reap kills it
            self._reap(proc, timeout=max(self._close_by - time.monotonic(), EXIT_WAIT))
        finally:
            self._lock.release()

    def _past_close(self) -> bool:
        return self._close_by is not None and time.monotonic() >= self._close_by

    def _call(self, request: bytes) -> Any:
        with self._lock:
            if self._closed:  # a child started now would outlive the store, never closed
                raise WriterError("WriterClosed", f"the writer of {self.path} is closed")
            if self._past_close():  # a new child would be killed before it answers
                raise WriterError("WriterClosed", f"the writer of {self.path} is out of time")
            if self._proc is None and time.monotonic() < self._retry_at:
                raise WriterError(*self._gone)
            proc = self._proc or self._start()
            watch = _Watch(self, proc.pid)
            try:
                self._send(proc, watch, _HEADER.pack(len(request)), request)
                reply = self._receive(proc, watch)
            except OSError:
                reply = None
            except _Unanswered as exc:
                self._kill(proc, str(exc))
                self._gave_up("WriterHung", f"the writer process {exc}; killed")
            if reply is None:
                self._reap(proc)
                self._gave_up("WriterExited", f"the writer process exited (code {proc.returncode})")
            self._failures = 0
            if reply[0] == "ok":
                return reply[1]
            raise WriterError(reply[1], reply[2])

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], watch: _Watch, *parts: bytes) -> None:
        """Write to the child's stdin (non-blocking) as it reads; OSError if it is gone."""
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        for part in parts:
            view = memoryview(part)
            while view:
                watch.wait(fd, select.POLLOUT)
                with contextlib.suppress(BlockingIOError):  # full again: wait again
                    view = view[os.write(fd, view) :]

    @staticmethod
    def _receive(proc: subprocess.Popen[bytes], watch: _Watch) -> Any:
        """The child's next message, or None at EOF (the child is gone)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()

        def read(size: int) -> bytes | None:
            data = bytearray()
            while len(data) < size:
                watch.wait(fd, select.POLLIN)
                try:
                    chunk = os.read(fd, size - len(data))
                except BlockingIOError:
                    continue
                if not chunk:
                    return None
                data += chunk
            return bytes(data)

        header = read(_HEADER.size)
        if header is None:
            return None
        data = read(_HEADER.unpack(header)[0])
        return None if data is None else pickle.loads(data)

    def _start(self) -> subprocess.Popen[bytes]:
        """The child, once it has opened the database (or the error it met doing so)."""
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        command = [sys.executable, "-c", _BOOT, root, self.path, str(self.recent_max)]
        proc = subprocess.Popen(
            command,
            bufsize=0,  # the pipes are read and written raw, never through a buffer
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in a terminal reaches the parent, not it
            close_fds=True,
        )
        self.starts += 1
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)  # this end only: the child's blocks
        os.set_blocking(proc.stdout.fileno(), False)
        try:
            reply = self._receive(proc, _Watch(self, proc.pid))
        except OSError:
            reply = None
        except _Unanswered as exc:  # its disk hangs already at open
            self._kill(proc, str(exc))
            self._gave_up("WriterHung", f"the writer process could not start: it {exc}")
        if reply is None or reply[0] != "ok":
            self._reap(proc)
            kind, text = (reply[1], reply[2]) if reply else ("WriterExited", "no answer")
            self._gave_up(kind, f"the writer process could not start: {text}")
        self._proc = proc
        self._finalizer = weakref.finalize(self, _let_go, proc)
        return proc

    def _forget(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _gave_up(self, kind: str, text: str) -> NoReturn:
        """Raise the failure; and after the third in a row, wait before the next start."""
        self._failures += 1
        if self._failures > 2:
            pause = min(RESTART_MAX, 0.5 * 2 ** min(self._failures - 3, 16))
            self._retry_at = time.monotonic() + pause
            self._gone = (kind, f"{text}; started again in at most {pause:g} s")
        raise WriterError(kind, text)

    def _kill(self, proc: subprocess.Popen[bytes], why: str) -> None:
        """Kill a child taken for hung, and say so: this loses its request, which the store
        writes again with the next child (or, at close, reports as not written)."""
        log.error("the SQLite writer process %d %s: killed", proc.pid, why)
        with contextlib.suppress(OSError):
            proc.kill()
        self._reap(proc, timeout=0)

    def _reap(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        """Close the child's pipes (it exits at EOF, if not already gone) and wait for it;
        killed if it takes longer than ``timeout``, and left behind (logged) if even that
        does not end it within :data:`KILL_WAIT`."""
        self._forget()
        self._proc = None
        _let_go(proc)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            try:
                proc.wait(timeout=KILL_WAIT)
            except subprocess.TimeoutExpired:
                log.error(
                    "the SQLite writer process %d does not die (blocked in the kernel, on a"
                    " hung disk?): left behind",
                    proc.pid,
                )


def _request(message: Any) -> bytes:
    """A message as sent: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def main(argv: list[str]) -> int:
    """The child: open the writer, answer requests until closed or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    path, recent_max = argv[0], int(argv[1])
    # Each batch is unpickled into fresh objects and glibc keeps the freed heap: without a
    # trim the writer grows by its largest batch and more (15 MB after 60,000 tasks).
    trim = malloc_trim()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies may reach the parent's pipe
    try:
        writer = SqliteWriter.open(path, recent_max)
    except Exception as exc:
        _send(stdout, ("error", error_name(exc), str(exc)))
        return 1
    _send(stdout, ("ok", writer.count))
    while True:
        try:
            request = _receive(stdin)
        except Exception as exc:  # read whole, so the stream is still in step: say so
            _send(stdout, ("error", UNREADABLE, f"{type(exc).__name__}: {exc}"))
            continue
        if request is None or request[0] == "close":
            writer.close()
            return 0
        try:
            if request[0] == "write":
                result: Any = writer.write(request[1], request[2])
            elif request[0] == "prune":
                result = writer.prune(*request[1:])
            elif request[0] == "rest":
                writer.rest()
                result = None
            else:
                raise ValueError(f"unknown request {request[0]!r}")
        except Exception as exc:
            _send(stdout, ("error", error_name(exc), str(exc)))
            continue
        _send(stdout, ("ok", result))
        del request, result  # the batch: freed, then given back to the system
        if trim is not None:
            trim(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
