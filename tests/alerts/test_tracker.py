"""The fire/resolve state machine and the event tap, driven with a clock of our own."""

from __future__ import annotations

import time

from celeriac.alerts.conditions import EventTap, Observation, observe_failure_rate
from celeriac.alerts.rules import Kind, Rule
from celeriac.alerts.tracker import Phase, Tracker

QUEUE = Rule(name="backlog", kind=Kind.QUEUE_LENGTH, above=10, duration=5.0)


def seen(key: str, active: bool, value: float = 0.0) -> Observation:
    return Observation(key, f"queue {key}", active, f"{value:g} waiting in {key}", value)


def test_fires_once_after_holding_and_resolves_once() -> None:
    t = Tracker()
    assert t.update(QUEUE, [seen("a", True, 20)], now=100.0) == []  # pending
    assert t.pending() and not t.firing()
    assert t.update(QUEUE, [seen("a", True, 25)], now=104.9) == []
    fired = t.update(QUEUE, [seen("a", True, 30)], now=105.0)
    assert [(x.status, x.alert["subject"], x.alert["value"]) for x in fired] == [
        (Phase.FIRING, "queue a", 30)]
    assert fired[0].alert["since"] == 100.0 and fired[0].alert["fired_at"] == 105.0
    for now in (106.0, 200.0, 300.0):  # still holding: nothing more
        assert t.update(QUEUE, [seen("a", True, 40)], now) == []
    resolved = t.update(QUEUE, [seen("a", False, 2)], now=301.0)
    assert [(x.status, x.alert["summary"]) for x in resolved] == [
        (Phase.RESOLVED, "2 waiting in a")]
    assert resolved[0].alert["id"] == fired[0].alert["id"]
    assert t.update(QUEUE, [seen("a", False, 0)], now=302.0) == []
    assert (t.fired, t.resolved) == (1, 1)
    assert [a.id for a in t.history] == [fired[0].alert["id"]]


def test_a_blip_shorter_than_for_says_nothing() -> None:
    t = Tracker()
    assert t.update(QUEUE, [seen("a", True, 20)], now=0.0) == []
    assert t.update(QUEUE, [seen("a", False, 0)], now=3.0) == []
    assert t.update(QUEUE, [seen("a", True, 20)], now=4.0) == []
    assert t.update(QUEUE, [seen("a", True, 20)], now=8.0) == []  # restarted at 4.0
    assert [x.status for x in t.update(QUEUE, [seen("a", True, 20)], now=9.0)] == [Phase.FIRING]
    assert (t.fired, t.resolved) == (1, 0)


def test_instances_are_independent_and_a_new_episode_has_a_new_id() -> None:
    t = Tracker()
    rule = Rule(name="down", kind=Kind.WORKER_OFFLINE, duration=0.0)
    first = t.update(rule, [seen("w1", True), seen("w2", False)], now=1.0)
    assert [x.alert["key"] for x in first] == ["w1"]
    second = t.update(rule, [seen("w1", True), seen("w2", True)], now=2.0)
    assert [x.alert["key"] for x in second] == ["w2"]
    # w1 vanished from the observations (forgotten): resolved, with words for it
    gone = t.update(rule, [seen("w2", True)], now=3.0)
    assert [(x.status, x.alert["key"], x.alert["summary"]) for x in gone] == [
        (Phase.RESOLVED, "w1", "queue w1: no longer seen")]
    again = t.update(rule, [seen("w1", True), seen("w2", True)], now=4.0)
    assert [x.alert["key"] for x in again] == ["w1"]
    assert again[0].alert["id"] != first[0].alert["id"]


def test_rules_do_not_touch_each_others_alerts() -> None:
    t = Tracker()
    a = Rule(name="a", kind=Kind.WORKER_OFFLINE)
    b = Rule(name="b", kind=Kind.WORKER_OFFLINE)
    assert len(t.update(a, [seen("w", True)], now=1.0)) == 1
    assert len(t.update(b, [seen("w", True)], now=1.0)) == 1
    assert t.update(b, [], now=2.0)[0].alert["rule"] == "b"
    assert [x.rule for x in t.firing()] == [a]


def test_long_running_and_silence_fire_at_once() -> None:
    """Their limit is in the condition: the tracker adds no wait of its own."""
    t = Tracker()
    rule = Rule(name="stuck", kind=Kind.LONG_RUNNING_TASK, duration=60.0)
    obs = Observation("uuid-1", "task x", True, "running for 61s", 61.0, since=39.0)
    fired = t.update(rule, [obs], now=100.0)
    assert [x.status for x in fired] == [Phase.FIRING]
    assert fired[0].alert["since"] == 39.0


def test_history_is_bounded() -> None:
    t = Tracker(history_size=3)
    rule = Rule(name="down", kind=Kind.WORKER_OFFLINE)
    for i in range(10):
        t.update(rule, [seen("w", True)], now=2 * i)
        t.update(rule, [], now=2 * i + 1)
    assert len(t.history) == 3 and t.resolved == 10


def _event(tap: EventTap, kind: str, uuid: str, name: str | None) -> None:
    tap.task_event(kind, {"type": kind, "uuid": uuid}, {"uuid": uuid, "name": name})


def test_tap_counts_finished_tasks_in_the_window() -> None:
    tap = EventTap(retention=10.0)
    for i in range(3):
        _event(tap, "task-failed", f"f{i}", "t.fail")
    _event(tap, "task-succeeded", "s1", "t.fail")
    _event(tap, "task-succeeded", "s2", "t.ok")
    _event(tap, "task-failed", "nameless", None)  # never received: no name to count under
    now = time.time()
    assert tap.finished(10.0, now) == {"t.fail": (1, 3), "t.ok": (1, 0)}
    rule = Rule(name="f", kind=Kind.FAILURE_RATE, above=0.5, window=10.0, min_tasks=2)
    obs = {o.key: o for o in observe_failure_rate(rule, tap, now)}
    assert obs["t.fail"].active and obs["t.fail"].value == 0.75
    assert not obs["t.ok"].active
    strict = Rule(name="g", kind=Kind.FAILURE_RATE, above=0.5, window=10.0, min_tasks=5)
    assert not any(o.active for o in observe_failure_rate(strict, tap, now))
    assert tap.finished(10.0, now + 30) == {}  # aged out (and dropped)


def test_tap_tracks_running_tasks() -> None:
    tap = EventTap(retention=60.0)
    rec = {"uuid": "u1", "name": "t.sleep", "worker": "w1@h"}
    tap.task_event("task-started", {}, rec)
    tap.task_event("task-started", {}, {"uuid": "u2", "name": "t.sleep", "worker": "w1@h"})
    assert sorted(tap.running()) == ["u1", "u2"]
    tap.task_event("task-succeeded", {}, rec)
    tap.task_event("task-revoked", {}, {"uuid": "u2", "name": "t.sleep"})
    assert tap.running() == {}
