"""Bodies and error texts of webhook deliveries (the deliveries themselves are tested live)."""

from __future__ import annotations

from celeriac.alerts.notify import _scrub, payload
from celeriac.alerts.rules import Format, Kind, Rule, Webhook
from celeriac.alerts.tracker import Phase, Transition

RULE = Rule(name="backlog", kind=Kind.QUEUE_LENGTH, queues=("celery",), above=100, duration=60)
ALERT = {"id": "a-1", "rule": "backlog", "kind": "queue_length", "key": "celery",
         "subject": "queue celery", "state": "firing", "since": 10.0, "fired_at": 70.0,
         "resolved_at": None, "value": 150.0, "summary": "150 messages waiting in queue celery"}


def test_generic_json_body() -> None:
    body = payload(Transition(ALERT, RULE, Phase.FIRING), Format.JSON)
    assert body == {
        "source": "celeriac", "status": "firing", "alert_id": "a-1", "rule": "backlog",
        "kind": "queue_length", "subject": "queue celery", "key": "celery",
        "condition": "more than 100 messages waiting in celery for 1m",
        "summary": "150 messages waiting in queue celery", "value": 150.0, "since": 10.0,
        "fired_at": 70.0, "resolved_at": None,
    }


def test_slack_body_is_text_only() -> None:
    resolved = {**ALERT, "state": "resolved", "summary": "3 messages waiting in queue celery"}
    assert payload(Transition(resolved, RULE, Phase.RESOLVED), Format.SLACK) == {
        "text": "[RESOLVED] backlog: 3 messages waiting in queue celery "
                "(rule: more than 100 messages waiting in celery for 1m)"}


def test_one_of_several_clusters_is_named() -> None:
    alert = {**ALERT, "cluster": "eu-west"}
    assert payload(Transition(alert, RULE, Phase.FIRING), Format.JSON)["cluster"] == "eu-west"
    text = payload(Transition(alert, RULE, Phase.FIRING), Format.SLACK)["text"]
    assert text.startswith("[FIRING] [cluster eu-west] backlog: 150 messages waiting")


def test_error_texts_lose_every_piece_of_the_url() -> None:
    hook = Webhook("h", "https://bot:pa55@hooks.example.com/services/T1/B2/SECRET?sig=XYZ")
    text = _scrub("ConnectError: cannot reach https://bot:pa55@hooks.example.com/services/T1/"
                  "B2/SECRET?sig=XYZ (path /services/T1/B2/SECRET, query sig=XYZ)", hook)
    for secret in ("SECRET", "sig=XYZ", "pa55"):
        assert secret not in text
    assert text.startswith("ConnectError: cannot reach ")
    assert "SECRET" not in repr(hook)
