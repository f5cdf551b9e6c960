"""Names on the wire: exchanges, channels, queues. Everything broker-facing is spelled here."""

from __future__ import annotations

#: Celery's event exchange (a topic exchange on AMQP, fanout via PUBLISH on Redis).
EVENT_EXCHANGE = "celeryev"
#: Redis pub/sub channel prefix; the full channel is ``/{db}.celeryev/<routing_key>``.
REDIS_EVENT_CHANNEL = "/{db}.celeryev/"
#: Prefix of the event queue celeriac declares on AMQP when no stable name is asked for.
EVENT_QUEUE_PREFIX = "celeriac.events."
#: kombu's separator between a Redis queue name and its priority step.
REDIS_PRIORITY_SEP = "\x06\x16"
#: kombu's default Redis priority steps (queue ``name`` holds step 0).
REDIS_PRIORITY_STEPS = (3, 6, 9)

#: Task states in the order a task normally passes through them.
PENDING, RECEIVED, STARTED, RETRY = "PENDING", "RECEIVED", "STARTED", "RETRY"
SUCCESS, FAILURE, REVOKED, REJECTED = "SUCCESS", "FAILURE", "REVOKED", "REJECTED"
FINAL_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})
ALL_STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED)

#: Event type -> (state the task enters, record field that takes the event's timestamp).
TASK_EVENT_STATES: dict[str, tuple[str, str]] = {
    "task-sent": (PENDING, "sent"),
    "task-received": (RECEIVED, "received"),
    "task-started": (STARTED, "started"),
    "task-succeeded": (SUCCESS, "succeeded"),
    "task-failed": (FAILURE, "failed"),
    "task-retried": (RETRY, "retried"),
    "task-revoked": (REVOKED, "revoked"),
    "task-rejected": (REJECTED, "rejected"),
}

#: Every key of a task record: the seed's example plus the workflow links.
TASK_FIELDS = (
    "uuid", "name", "state", "args", "kwargs", "result", "exception", "traceback",
    "sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
    "eta", "expires", "retries", "runtime", "timestamp", "clock", "worker", "client",
    "exchange", "routing_key", "parent_id", "root_id", "children",
)

#: The name celeriac's Redis event subscriber gives itself (``CLIENT LIST`` shows it).
REDIS_CLIENT_NAME = "celeriac-events"
