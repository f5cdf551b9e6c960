"""The heap's settings, each in a process of its own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from celeriac.heap import YOUNG_THRESHOLD, malloc_trim


def run(code: str) -> list:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return json.loads(out)


def test_tune_gc_freezes_start_up_and_collects_the_young_less_often() -> None:
    before, after, frozen = run(
        "import gc, json\n"
        "before = gc.get_threshold()\n"
        "from celeriac import heap\n"
        "heap.tune_gc()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))\n"
    )
    assert after == [YOUNG_THRESHOLD, before[1], before[2]]
    assert frozen > 1000  # the interpreter's and celeriac's start-up objects


@pytest.mark.skipif(malloc_trim() is None, reason="glibc's malloc_trim only")
def test_the_trimmer_gives_back_what_a_thread_freed() -> None:
    """A thread holds 200 MB in pieces: while they are in use the trimmer's trims give nothing
    back and the process stays big; once most are freed (a few kept all over the arena, so
    that glibc cannot shrink it by itself) the process comes back to near its idle size."""
    idle, held, freed, trims_held, trimmed = run(
        "import json, threading, time\n"
        "from celeriac import heap\n"
        "trimmer = heap.Trimmer(interval=0.1, growth=16 << 20)\n"
        "idle = heap.rss_bytes()\n"
        "trimmer.start()\n"
        "chunks = []\n"
        "def burst():\n"
        "    chunks.extend(bytes(1000) + bytes([i % 256]) for i in range(200_000))\n"
        "t = threading.Thread(target=burst); t.start(); t.join()\n"
        "time.sleep(1.5)\n"
        "held, trims_held = heap.rss_bytes(), trimmer.trims\n"
        "kept = chunks[::50]  # spread over the arena: it cannot shrink by itself\n"
        "chunks.clear()\n"
        "freed = heap.rss_bytes()\n"
        "time.sleep(2.0)\n"
        "print(json.dumps([idle, held, freed, trims_held, heap.rss_bytes()]))\n"
        "trimmer.stop()\n"
    )
    mb = 1 << 20
    assert held - idle > 150 * mb and freed - idle > 150 * mb, "glibc gave it back alone"
    assert trims_held >= 5  # it kept trying while the memory was in use
    assert trimmed - idle < 40 * mb, (idle // mb, held // mb, freed // mb, trimmed // mb)
