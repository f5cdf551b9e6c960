"""The live alert tests' helpers: a celeriac with an alerts file; what reached the receiver."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema

from tests.alerts.receiver import Receiver, of
from tests.fixtures import BrokerInfo, MonitorFactory, MonitorProcess

INTERVAL = "0.3s"


def start(
    celeriac_server: MonitorFactory, broker: BrokerInfo, tmp_path: Path, receiver: Receiver,
    rules: str, slack: bool = False,
) -> MonitorProcess:
    hooks = f'[[webhook]]\nname = "json"\nurl = "{receiver.url("/json")}"\n'
    if slack:
        hooks += f'[[webhook]]\nname = "slack"\nurl = "{receiver.url("/slack")}"\n'
        hooks += 'format = "slack"\n'
    path = tmp_path / "alerts.toml"
    path.write_text(f'interval = "{INTERVAL}"\n{hooks}{rules}')
    return celeriac_server(broker, "--alerts", str(path))


def api(monitor: MonitorProcess) -> dict[str, Any]:
    """The alerts endpoint's answer, checked against the schema its OpenAPI description gives."""
    response = monitor.client.get("/api/celeriac/alerts")
    assert response.status_code == 200
    state = response.json()
    described = monitor.client.get("/api/openapi.json").json()["paths"]["/api/celeriac/alerts"]
    schema = described["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator(schema).validate(state)
    return state


def episode(receiver: Receiver, subject: str, timeout: float) -> tuple[dict, dict]:
    """Wait for the firing and then the resolution of ``subject``; exactly one of each."""
    fired = receiver.wait(lambda r: of(r.accepted("/json"), "firing", subject), timeout,
                          f"a firing for {subject}")
    resolved = receiver.wait(lambda r: of(r.accepted("/json"), "resolved", subject), timeout,
                             f"the resolution of {subject}")
    return fired, resolved


def settle_then_count(receiver: Receiver, subject: str) -> tuple[int, int]:
    time.sleep(0.7)  # a few more rounds: nothing more may arrive
    bodies = receiver.accepted("/json")
    return len(of(bodies, "firing", subject)), len(of(bodies, "resolved", subject))


