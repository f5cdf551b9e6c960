"""The fire/resolve state machine: each episode of a condition fires once and resolves once.

An instance of a rule (a queue, a worker, a task type...) whose condition holds becomes
*pending*; once it has held for the rule's ``for`` it *fires*, which is one notification. While
it keeps holding nothing more is sent. When it stops holding (or the instance is gone: the task
finished, the worker was forgotten) a firing alert *resolves*, the second and last
notification of the episode; a pending one is dropped without a word. If the condition comes
back later, that is a new episode with a new id.

Pure logic on plain values and a clock passed in, so the unit tests drive it directly.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from celeriac.alerts.conditions import Observation
from celeriac.alerts.rules import Kind, Rule

#: Resolved alerts kept for the page and the API.
HISTORY = 100


class Phase(str, Enum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass
class Alert:
    id: str
    rule: Rule
    key: str
    subject: str
    phase: Phase
    since: float  # when the condition began holding
    text: str
    value: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    fire_text: str = ""  # the words it fired with, kept for the resolution

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule.name,
            "kind": self.rule.kind.value,
            "key": self.key,
            "subject": self.subject,
            "state": self.phase.value,
            "since": self.since,
            "fired_at": self.fired_at,
            "resolved_at": self.resolved_at,
            "value": self.value,
            "summary": self.text,
        }


@dataclass(frozen=True)
class Transition:
    """A notification to deliver: the alert as it was when it fired or resolved."""

    alert: dict[str, Any]
    rule: Rule
    status: Phase  # FIRING or RESOLVED


def hold_for(rule: Rule) -> float:
    """How long a condition must hold before firing: the ``for`` of the rules that have one;
    for the others the limit is part of the condition itself."""
    if rule.kind in (Kind.LONG_RUNNING_TASK, Kind.NO_EVENTS):
        return 0.0
    return rule.duration


@dataclass
class Tracker:
    history_size: int = HISTORY
    active: dict[tuple[str, str], Alert] = field(default_factory=dict)
    history: deque[Alert] = field(default_factory=deque)
    fired: int = 0
    resolved: int = 0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _boot: str = field(default_factory=lambda: f"{int(time.time() * 1000):x}")

    def update(
        self, rule: Rule, observations: Iterable[Observation], now: float
    ) -> list[Transition]:
        """Apply what was seen of ``rule`` now; returns the notifications due."""
        observed = list(observations)
        out: list[Transition] = []
        seen: set[str] = set()
        for obs in observed:
            if not obs.active:
                continue
            seen.add(obs.key)
            alert = self.active.get((rule.name, obs.key))
            if alert is None:
                alert = Alert(
                    id=f"{self._boot}-{next(self._ids)}",
                    rule=rule, key=obs.key, subject=obs.subject, phase=Phase.PENDING,
                    since=min(obs.since, now) if obs.since is not None else now,
                    text=obs.text, value=obs.value,
                )
                self.active[(rule.name, obs.key)] = alert
            alert.text, alert.value = obs.text, obs.value
            if alert.phase is Phase.PENDING and now - alert.since >= hold_for(rule):
                alert.phase, alert.fired_at, alert.fire_text = Phase.FIRING, now, obs.text
                self.fired += 1
                out.append(Transition(alert.as_dict(), rule, Phase.FIRING))
        cleared = {o.key: o for o in observed if o.key not in seen}
        for (name, key), alert in list(self.active.items()):
            if name != rule.name or key in seen:
                continue
            del self.active[(name, key)]
            if alert.phase is not Phase.FIRING:
                continue  # pending, never fired: nothing to take back
            last = cleared.get(key)
            alert.phase, alert.resolved_at = Phase.RESOLVED, now
            alert.text = last.text if last is not None else f"{alert.subject}: no longer seen"
            alert.value = last.value if last is not None else None
            self.resolved += 1
            self._remember(alert)
            out.append(Transition(alert.as_dict(), rule, Phase.RESOLVED))
        return out

    def forget_rules(self, names: set[str]) -> None:
        for key in [k for k in self.active if k[0] not in names]:
            del self.active[key]

    def _remember(self, alert: Alert) -> None:
        self.history.appendleft(alert)
        while len(self.history) > self.history_size:
            self.history.pop()

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.phase is Phase.FIRING]

    def pending(self) -> list[Alert]:
        return [a for a in self.active.values() if a.phase is Phase.PENDING]
