"""The collector's settings, applied in a process of its own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

from celeriac.gc_tuning import YOUNG_THRESHOLD


def test_tune_freezes_start_up_and_collects_the_young_less_often() -> None:
    code = (
        "import gc, json\n"
        "before = gc.get_threshold()\n"
        "from celeriac import gc_tuning\n"
        "gc_tuning.tune()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    before, after, frozen = json.loads(out)
    assert after == [YOUNG_THRESHOLD, before[1], before[2]]
    assert frozen > 1000  # the interpreter's and celeriac's start-up objects
