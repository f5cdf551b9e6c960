"""A steady trickle of mixed demo tasks, sent from a thread of the runner.

Arrivals are random (exponential gaps around ``1 / rate``), as in a real web app, and the mix is
weighted so the two demo workers keep up at the default rate while slow reports and failures
still show up every minute.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from celery import chain

from celeriac.demo import tasks

log = logging.getLogger("celeriac.demo")

USERS = ("ada", "grace", "linus", "guido", "barbara", "ken", "margaret", "dennis")
URLS = tuple(
    f"https://{host}/{path}"
    for host in ("api.example.com", "shop.example.org", "cdn.example.net")
    for path in ("status", "products?page=2", "feed.xml", "v2/orders")
)


def _add(rng: random.Random) -> None:
    tasks.add.delay(rng.randint(1, 100), rng.randint(1, 100))


def _chain(rng: random.Random) -> None:
    chain(tasks.add.s(rng.randint(1, 9), rng.randint(1, 9)), tasks.add.s(10)).delay()


def _resize(rng: random.Random) -> None:
    tasks.resize_image.delay(rng.randint(1000, 9999), rng.choice(tasks.THUMBNAIL_SIZES))


def _upload(rng: random.Random) -> None:
    tasks.process_upload.delay(rng.randint(1000, 9999))


def _email(rng: random.Random, bounce: bool | None = None) -> None:
    if bounce is None:
        bounce = rng.random() < 0.15
    domain = rng.choice(tasks.BOUNCING_DOMAINS if bounce else ("@example.com", "@example.org"))
    to = f"{rng.choice(USERS)}{domain}"
    tasks.send_email.delay(to, rng.choice(("welcome", "receipt", "reset")))


def _bounce(rng: random.Random) -> None:
    _email(rng, bounce=True)


def _fetch(rng: random.Random) -> None:
    tasks.fetch_url.delay(rng.choice(URLS))


def _report(rng: random.Random) -> None:
    tasks.report.delay(rng.choice(("daily-sales", "churn", "inventory")))


#: (weight, sender): what a typical minute of this imaginary project looks like.
MIX: tuple[tuple[int, Callable[[random.Random], None]], ...] = (
    (25, _add),
    (5, _chain),
    (22, _resize),
    (5, _upload),
    (25, _email),
    (14, _fetch),
    (4, _report),
)


#: Sent first, in this order, so that every task and every state shows within seconds.
WARM_UP: tuple[Callable[[random.Random], None], ...] = (
    _add, _bounce, _resize, _fetch, _email, _chain, _upload, _report,
)


class Producer:
    """Sends ``rate`` tasks a second on average until :meth:`stop`, starting with a warm-up."""

    def __init__(self, rate: float, ready: Callable[[], bool] | None = None,
                 seed: int | None = None) -> None:
        self.rate = rate
        # Waited for (up to a minute) before the first task, so that the monitor sees it sent.
        self._ready = ready
        self.sent = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.rate <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="celeriac-demo-producer",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def send_one(self) -> None:
        if self.sent < len(WARM_UP):
            send = WARM_UP[self.sent]
        else:
            _, send = self._rng.choices(MIX, weights=[w for w, _ in MIX])[0]
        send(self._rng)
        self.sent += 1

    def _run(self) -> None:
        for _ in range(600):
            if self._ready is None or self._stop.is_set() or self._ready():
                break
            self._stop.wait(0.1)
        failures = 0
        while not self._stop.wait(self._rng.expovariate(self.rate)):
            try:
                self.send_one()
                failures = 0
            except Exception as exc:  # keep the trickle going through a broker hiccup
                failures += 1
                if failures == 1:
                    log.warning("demo producer could not send a task: %s", exc)
                self._stop.wait(1.0)
