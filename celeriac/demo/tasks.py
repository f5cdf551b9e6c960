"""The demo's Celery app and tasks, shaped like a real project's, for the monitor to show.

Some tasks are fast, some slow, some fail with the exceptions real code raises, one retries on a
transient error and one fans out into a group, so every state and the parent/children links
appear. Workers load this module with ``celery -A celeriac.demo.tasks worker``; the broker and
backend come from ``CELERIAC_DEMO_DIR`` (see :mod:`celeriac.demo`).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import smtplib
import threading
import time
import zlib
from typing import Any

from celery import Celery, Task, group
from celery.signals import worker_ready

from celeriac.demo import PARENT_ENV, celery_config, demo_dir

log = logging.getLogger("celeriac.demo")

app = Celery("demo", set_as_current=False)
app.conf.update(celery_config(demo_dir()))

THUMBNAIL_SIZES = ("64x64", "256x256", "1024x768")
#: Sign-ups with a typo in the domain: the producer sends ~15 % of its emails there.
BOUNCING_DOMAINS = ("@exampel.com", "@example.cm")


@app.task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="demo.resize_image")
def resize_image(image_id: int, size: str = "256x256") -> str:
    time.sleep(random.uniform(0.2, 2.0))
    return f"s3://demo-media/thumbs/{image_id}-{size}.jpg"


@app.task(name="demo.process_upload")
def process_upload(image_id: int) -> str:
    """Fans out one resize per size: the group's tasks are this task's children."""
    time.sleep(random.uniform(0.05, 0.3))
    result = group(resize_image.s(image_id, size) for size in THUMBNAIL_SIZES).apply_async()
    return str(result.id)


@app.task(name="demo.send_email")
def send_email(to: str, template: str = "welcome") -> dict[str, str]:
    """Bounces for addresses at a mistyped domain, as a real mail server would."""
    time.sleep(random.uniform(0.05, 0.5))
    if to.endswith(BOUNCING_DOMAINS):
        raise smtplib.SMTPRecipientsRefused(
            {to: (550, b"5.1.1 The email account that you tried to reach does not exist")}
        )
    return {"to": to, "template": template, "status": "sent"}


@app.task(name="demo.fetch_url", bind=True, max_retries=3)
def fetch_url(self: Task, url: str) -> dict[str, Any]:
    """Fails the first 0 to 2 attempts (decided by the URL) with a connection reset, then works."""
    time.sleep(random.uniform(0.05, 0.4))
    flaky_attempts = zlib.crc32(url.encode()) % 3
    if self.request.retries < flaky_attempts:
        exc = ConnectionResetError(104, "Connection reset by peer")
        raise self.retry(exc=exc, countdown=1)
    return {"url": url, "status": 200, "bytes": random.randint(2_000, 200_000)}


@app.task(name="demo.report")
def report(name: str = "daily-sales") -> dict[str, Any]:
    time.sleep(random.uniform(5.0, 10.0))
    return {"report": name, "rows": random.randint(1_000, 50_000)}


@worker_ready.connect
def _watch_parent(**_: Any) -> None:
    """Stop this worker if the demo runner dies without stopping it (``kill -9``, a crash).

    An orphaned worker would keep polling the demo directory and steal the next run's tasks.
    """
    expected = os.environ.get(PARENT_ENV)
    if not expected:
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(1.0)
        log.warning("the celeriac demo runner is gone; stopping this worker")
        os.kill(os.getpid(), signal.SIGQUIT)

    threading.Thread(target=watch, name="celeriac-demo-watchdog", daemon=True).start()
