"""The engine on a real State (events applied as the readers apply them) and a real HTTP
receiver; the cluster around the state is a stand-in, since these rules need no broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from celeriac.alerts.engine import AlertEngine
from celeriac.alerts.rules import parse_config
from celeriac.state import State
from celeriac.store.memory import MemoryStore
from tests.alerts.receiver import Receiver, of


def engine_for(state: State, receiver: Receiver, rules: list[dict[str, Any]],
               role: str = "single") -> AlertEngine:
    config = parse_config({
        "interval": 0.05,
        "webhook": [{"name": "r", "url": receiver.url(), "retries": 0}],
        "rule": rules,
    }, "test.toml", {})
    cluster: Any = SimpleNamespace(state=state, role=role, worker_info={})
    return AlertEngine(config, cluster)


def heartbeat(hostname: str) -> dict[str, Any]:
    return {"type": "worker-heartbeat", "hostname": hostname, "freq": 2.0,
            "timestamp": time.time()}


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def task_event(self, kind: str, ev: Any, rec: Any) -> None:
        self.seen.append(kind)

    def worker_event(self, kind: str, ev: Any) -> None:
        self.seen.append(kind)


def test_the_state_keeps_its_other_observer(receiver: Callable[..., Receiver]) -> None:
    state = State(MemoryStore(100))
    first = Recorder()
    state.observe(first)
    engine = engine_for(state, receiver(), [
        {"name": "stuck", "kind": "long_running_task", "above": 60}])

    async def run() -> None:
        engine.start()
        state.apply([{"type": "task-received", "uuid": "u1", "name": "t.x", "hostname": "w"},
                     {"type": "task-started", "uuid": "u1", "hostname": "w"}])
        await engine.close()

    asyncio.run(run())
    assert first.seen == ["task-received", "task-started"]
    assert list(engine.tap.running()) == ["u1"]


def test_only_the_leader_evaluates(receiver: Callable[..., Receiver]) -> None:
    r = receiver()
    state = State(MemoryStore(100))
    engine = engine_for(state, r, [{"name": "quiet", "kind": "no_events", "for": 0.3}],
                        role="follower")
    cluster = engine.cluster

    async def run() -> None:
        engine.start()
        await asyncio.sleep(0.6)  # a follower sees no events, and must not say so
        assert r.posts == [] and engine.snapshot()["role"] == "follower"
        cluster.role = "leader"
        elected = time.time()
        while not r.posts:
            await asyncio.sleep(0.02)
        assert time.time() - elected >= 0.3  # silence counts from the election
        cluster.role = "follower"
        await asyncio.sleep(0.2)
        assert engine.snapshot()["firing"] == []  # dropped, not resolved: the leader owns it
        await engine.close()

    asyncio.run(run())
    assert [b["status"] for b in r.accepted()] == ["firing"]


def test_workers_last_heard_before_watching_began_do_not_fire(
    receiver: Callable[..., Receiver],
) -> None:
    """Like the workers a restart restores from the store (listed offline until heard again):
    a worker retired long ago must not fire on every restart and never resolve."""
    r = receiver()
    state = State(MemoryStore(100))
    state.apply([heartbeat("retired@h"), {"type": "worker-offline", "hostname": "retired@h"}])
    assert state.worker_status() == {"retired@h": False}
    time.sleep(0.05)
    engine = engine_for(state, r, [{"name": "down", "kind": "worker_offline"}])

    async def run() -> None:
        engine.start()
        state.apply([heartbeat("live@h")])
        await asyncio.sleep(0.2)
        state.apply([{"type": "worker-offline", "hostname": "live@h"}])
        while not r.posts:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        await engine.close()

    asyncio.run(run())
    assert [(b["status"], b["subject"]) for b in r.accepted()] == [("firing", "worker live@h")]
    assert of(r.accepted(), "firing", "worker retired@h") == []
