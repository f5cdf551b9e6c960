"""The seam between a broker and the rest of celeriac.

An event source reads the cluster's events from one transport, decodes them, flattens
``task.multi`` batches and hands lists of plain event dicts to a sink. Nothing outside
``celeriac.events`` knows which transport is in use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

SINK_LOG_EVERY_S = 10.0

Event = dict[str, Any]
EventSink = Callable[[list[Event]], None]


@dataclass
class IngestCounters:
    """What the source saw; read by the status endpoint and metrics without locking."""

    messages: int = 0  # broker messages read
    received: int = 0  # events decoded out of those messages
    malformed: int = 0  # messages or events that could not be decoded
    sink_failures: int = 0  # batches the state could not take (its store unreachable, say)
    reconnects: int = 0
    gaps: int = 0  # times the source was disconnected and may have missed events
    blind_seconds: float = 0.0  # total time spent disconnected after the first connect
    connected: bool = False
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _sink_logged: float = field(default=-SINK_LOG_EVERY_S, repr=False, compare=False)

    def sink_failed(self, exc: Exception) -> bool:
        """Count a batch the sink refused; True when it should be logged (once per
        SINK_LOG_EVERY_S: a store down for minutes must not flood the log)."""
        self.sink_failures += 1
        self.last_error = f"sink: {type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._sink_logged < SINK_LOG_EVERY_S:
            return False
        self._sink_logged = now
        return True

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


class EventSource(Protocol):
    """Reads events on its own thread(s) and calls the sink with each decoded batch."""

    counters: IngestCounters

    def start(self) -> None: ...

    def close(self) -> None: ...
