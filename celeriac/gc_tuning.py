"""The garbage collector's settings for a process that decodes tens of thousands of events a
second.

Every decoded event is a dict, and CPython runs a young-generation collection after every 700
new container objects: at 50,000 events a second, one every few milliseconds, each walking the
events of the batch in hand (a batch stays alive until the state has merged it), which then
survive into the older generations and are walked again there. Events form no reference cycles:
reference counting frees them as soon as they are merged, so collecting less often finds the
same garbage for less work. Counted in instructions (valgrind, bench/results/ingest.md), this
takes 6% off the ingest thread's decode and merge; in time it saves more, since the collector
walks memory the caches no longer hold. The cost: cyclic garbage (from asyncio, exceptions)
lives up to :data:`YOUNG_THRESHOLD` allocations longer, a few MB at most.

The objects alive once the app is built (modules, settings, routes) live as long as the process:
frozen, they leave every later collection.
"""

from __future__ import annotations

import gc

#: New container objects between two young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def tune() -> None:
    """Collect the start-up garbage, freeze what is left, and collect the young generation
    less often. Process-wide: called once, by the server, never by a library user's process."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
