"""The alert loop: every ``interval`` look at each rule, advance the tracker, queue deliveries.

It runs as a task on the server's event loop. Everything it reads is either a short copy taken
under a lock (the state's workers, the tap's counts) or the broker's queue lengths, read on the
control thread pool with a time limit, so neither ingestion nor the API ever waits on it. A
rule that raises is logged and skipped; the others keep being evaluated.

With several instances on one PostgreSQL store only the leader ingests events, so only the
leader evaluates rules: a follower would see a silent cluster. A follower that is elected
starts afresh (its silence counts from the election); one that loses the lead drops its
alerts without resolving them, since the new leader now owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

from celeriac.alerts.conditions import (
    EventTap,
    Observation,
    observe_failure_rate,
    observe_long_running,
    observe_queue_length,
    observe_silence,
    observe_workers,
)
from celeriac.alerts.notify import Notifier
from celeriac.alerts.rules import AlertConfig, Kind, Rule, load_config
from celeriac.alerts.tracker import Phase, Tracker, hold_for
from celeriac.queues import LengthReader, queue_consumers
from celeriac.settings import Settings

if TYPE_CHECKING:
    from celeriac.cluster import Cluster

log = logging.getLogger("celeriac.alerts")


class AlertEngine:
    def __init__(
        self, config: AlertConfig, cluster: Cluster,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        windows = [r.window for r in config.rules if r.kind is Kind.FAILURE_RATE]
        self.tap = EventTap(max(windows, default=60.0))
        self.tracker = Tracker()
        self.notifier = Notifier(config.webhooks, transport)
        self.started_at = time.time()
        self.evaluated_at: float | None = None
        self.evaluations = 0
        self.rule_errors: dict[str, str] = {}
        self.queue_lengths: dict[str, int] | None = None
        self.queue_error: str | None = None
        self._reader: LengthReader | None = None  # made at the first queue rule's round
        self.role = "single"
        self.watching_since = self.started_at  # when this instance began ingesting
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, cluster: Cluster) -> AlertEngine | None:
        if not settings.alerts:
            return None
        return cls(load_config(settings.alerts), cluster)

    # -- lifecycle (on the server's loop) ---------------------------------------------------
    def start(self) -> None:
        self.cluster.state.observe(self.tap)
        self.started_at = self.watching_since = time.time()
        self.notifier.start()
        self._task = asyncio.create_task(self._loop(), name="celeriac-alerts")
        log.info("alerts: %d rule(s), %d webhook(s) from %s", len(self.config.rules),
                 len(self.config.webhooks), self.config.path)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.notifier.close()

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.evaluate()
            except Exception:  # never let one bad round end alerting
                log.exception("alerts: evaluation failed")
            left = self.config.interval - (time.monotonic() - started)
            await asyncio.sleep(max(left, 0.05))

    # -- one round --------------------------------------------------------------------------
    async def evaluate(self) -> None:
        if not self._leading():
            return
        rules = self.config.rules
        if any(r.kind is Kind.QUEUE_LENGTH for r in rules):
            await self._read_queues()
        now = time.time()
        state = self.cluster.state
        status = state.worker_status()
        for rule in rules:
            try:
                observed = self._observe(rule, status, now)
            except Exception as exc:
                if rule.name not in self.rule_errors:
                    log.exception("alerts: rule %r could not be evaluated", rule.name)
                self.rule_errors[rule.name] = f"{type(exc).__name__}: {exc}"
                continue
            self.rule_errors.pop(rule.name, None)
            if observed is None:
                continue  # unknown this round (queue lengths unavailable): keep the state
            for t in self.tracker.update(rule, observed, now):
                a = t.alert
                name = getattr(self.cluster, "name", None)
                if name:  # one of several clusters: every message says which
                    a["cluster"] = name
                level = logging.WARNING if t.status is Phase.FIRING else logging.INFO
                log.log(level, "alerts: %s %s%s: %s", t.status.value.upper(), rule.name,
                        f" (cluster {name})" if name else "", a["summary"])
                self.notifier.send(t, self.config.targets(rule))
        self.evaluated_at = now
        self.evaluations += 1

    def _observe(self, rule: Rule, status: dict[str, bool], now: float) -> list[Observation] | None:
        state = self.cluster.state
        if rule.kind is Kind.FAILURE_RATE:
            return observe_failure_rate(rule, self.tap, now)
        if rule.kind is Kind.QUEUE_LENGTH:
            if self.queue_lengths is None:
                return None
            return observe_queue_length(rule, self.queue_lengths)
        if rule.kind is Kind.WORKER_OFFLINE:
            return observe_workers(rule, state, self.watching_since, now)
        if rule.kind is Kind.LONG_RUNNING_TASK:
            return observe_long_running(rule, self.tap, status, now)
        return observe_silence(rule, state.last_event_at, self.watching_since, now)

    def _leading(self) -> bool:
        role = str(getattr(self.cluster, "role", "single"))
        if role == self.role:
            return role != "follower"
        log.info("alerts: this instance is now %s; rules are %s here", role,
                 "not evaluated" if role == "follower" else "evaluated")
        self.role = role
        if role == "follower":
            self.tracker.active.clear()
            return False
        self.watching_since = time.time()
        return True

    async def _read_queues(self) -> None:
        """The lengths every queue rule needs, in one broker round on the control pool; at
        most one read in flight, and never longer than an interval."""
        cluster = self.cluster
        names: set[str] = set()
        default = str(cluster.app.conf.task_default_queue)
        if any(r.kind is Kind.QUEUE_LENGTH and not r.queues for r in self.config.rules):
            try:  # which queues the workers consume: inspects only workers not asked yet
                await asyncio.wait_for(asyncio.shield(cluster.fill_workers()),
                                       max(self.config.interval, 1.0))
            except Exception as exc:
                log.debug("alerts: worker inspect failed: %r", exc)
        for rule in self.config.rules:
            if rule.kind is Kind.QUEUE_LENGTH:
                names.update(
                    rule.queues or sorted(queue_consumers(cluster.worker_info)) or [default]
                )
        if self._reader is None:
            self._reader = LengthReader(cluster.control, cluster.app)
        try:
            self.queue_lengths = await self._reader.read(sorted(names),
                                                         max(self.config.interval, 1.0))
            self.queue_error = None
        except Exception as exc:
            if self.queue_error is None:
                log.warning("alerts: queue lengths unavailable: %s", type(exc).__name__)
            self.queue_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.queue_lengths = None

    # -- what the API and the page show -----------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        tracker = self.tracker
        by_rule: dict[str, list[dict[str, Any]]] = {}
        for alert in tracker.active.values():
            by_rule.setdefault(alert.rule.name, []).append(alert.as_dict())
        rules = []
        for rule in self.config.rules:
            alerts = by_rule.get(rule.name, [])
            firing = [a for a in alerts if a["state"] == Phase.FIRING.value]
            rules.append({
                "name": rule.name,
                "kind": rule.kind.value,
                "condition": rule.describe(),
                "for": hold_for(rule),
                "webhooks": [w.name for w in self.config.targets(rule)],
                "state": "firing" if firing else ("pending" if alerts else "ok"),
                "alerts": alerts,
                "error": self.rule_errors.get(rule.name),
            })
        return {
            "enabled": True,
            "role": self.role,
            "file": self.config.path,
            "interval": self.config.interval,
            "evaluated_at": self.evaluated_at,
            "evaluations": self.evaluations,
            "fired": tracker.fired,
            "resolved": tracker.resolved,
            "queue_error": self.queue_error,
            "queue_lengths": self.queue_lengths,
            "rules": rules,
            "firing": [a.as_dict() for a in tracker.firing()],
            "recent": [a.as_dict() for a in tracker.history],
            **self.notifier.snapshot(),
        }


def disabled_snapshot() -> dict[str, Any]:
    """What the API answers when no alerts file was given."""
    return {"enabled": False, "role": None, "file": None, "interval": None, "evaluated_at": None,
            "evaluations": 0, "fired": 0, "resolved": 0, "queue_error": None, "queue_lengths": None,
            "rules": [],
            "firing": [], "recent": [], "webhooks": [], "failures": []}
