"""How the server process uses its heap: the garbage collector's pace, and memory given back.

**The collector.** Every decoded event is a dict, and CPython runs a young-generation collection
after every 700 new container objects: at 50,000 events a second, one every few milliseconds,
each walking the events of the batch in hand (a batch stays alive until the state has merged
it), which then survive into the older generations and are walked again there. Events form no
reference cycles: reference counting frees them as soon as they are merged, so collecting less
often finds the same garbage for less work. Counted in instructions (valgrind,
bench/results/ingest.md), this takes 6% off the ingest thread's decode and merge; in time it
saves more, since the collector walks memory the caches no longer hold. The cost: cyclic garbage
(from asyncio, exceptions) lives up to :data:`YOUNG_THRESHOLD` allocations longer, a few MB at
most. The objects alive once the app is built (modules, settings, routes) live as long as the
process: frozen, they leave every later collection.

**Memory given back.** glibc keeps what a thread frees in that thread's arena, for reuse, and
returns it to the system only from the top of the heap: after three full ``/api/tasks`` of
100,000 tasks the process stayed at 222 MB, where it was 79 MB idle (measured, both processes).
:class:`Trimmer` calls ``malloc_trim`` while the process is bigger than it has been, and it was
back at 116 MB within 8 s. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Callable

#: New container objects between two young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000
#: How often the trimmer looks at the process' size, in seconds.
TRIM_INTERVAL = 5.0
#: Growth over the smallest size seen, in bytes, past which the trimmer trims.
TRIM_GROWTH = 16 * 1024 * 1024


def tune_gc() -> None:
    """Collect the start-up garbage, freeze what is left, and collect the young generation
    less often. Process-wide: called once, by the server, never by a library user's process."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS). Used by
    :class:`Trimmer` and by the SQLite writer process after each batch."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def rss_bytes(pid: int | None = None) -> int | None:
    """The resident size of this process (or of process ``pid``), or None without ``/proc``."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Trimmer:
    """A daemon thread that gives freed memory back to the system after a burst (a big
    response, an ingest burst, retention): every ``interval`` s, while the process is ``growth``
    bytes over the smallest size it was seen at, it trims. Measured on 200 MB of 1 KB pieces,
    ``malloc_trim`` takes 25 ms when it gives them back, 2 ms when what is free was given back
    already, and 0.05 ms when the memory is in use: a process that stays big because it needs
    the memory (a bigger cache) costs next to nothing to look at."""

    def __init__(self, interval: float = TRIM_INTERVAL, growth: int = TRIM_GROWTH) -> None:
        self.interval = interval
        self.growth = growth
        self.trims = 0
        self._trim = malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start the thread; False where trimming is not possible (no glibc, no ``/proc``)."""
        if self._trim is None or rss_bytes() is None:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="celeriac-trim", daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        floor = rss_bytes() or 0
        while not self._stop.wait(self.interval):
            now = rss_bytes() or 0
            floor = min(floor, now)
            if now - floor > self.growth:
                trim(0)
                self.trims += 1
