"""Webhook delivery: one outbox per webhook, retries with backoff, every failure on record.

Each webhook gets its own queue and its own sender task, so a slow or dead receiver delays
only its own notifications, and a firing always reaches a receiver before its resolution.
A delivery is retried on connection errors, timeouts, 5xx, 408 and 429 (honouring a short
``Retry-After``), with the delay doubling from the webhook's ``backoff``; another 4xx means the
receiver refuses the body, and retrying would not change its mind.

Webhook URLs often carry a token (Slack's do, in the path): logs, pages and the API show only
scheme, host and port, and error texts are scrubbed of the URL before they are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import orjson

from celeriac import __version__
from celeriac.alerts.rules import MAX_BACKOFF, Format, Webhook, fmt_seconds
from celeriac.alerts.tracker import Phase, Transition

log = logging.getLogger("celeriac.alerts")

#: Notifications waiting per webhook; beyond this the oldest are dropped (and counted).
OUTBOX_SIZE = 1000
#: Delivery failures kept for the page and the API.
FAILURES_KEPT = 50
#: How long shutdown waits for outboxes to drain.
CLOSE_GRACE = 2.0


def payload(t: Transition, fmt: Format) -> dict[str, Any]:
    """The body a webhook receives: celeriac's JSON, or Slack's ``{"text": ...}``."""
    a = t.alert
    if fmt is Format.SLACK:
        word = "FIRING" if t.status is Phase.FIRING else "RESOLVED"
        where = f"[cluster {a['cluster']}] " if a.get("cluster") else ""
        return {"text": f"[{word}] {where}{a['rule']}: {a['summary']} "
                        f"(rule: {t.rule.describe()})"}
    body = {
        "source": "celeriac",
        "status": t.status.value,
        "alert_id": a["id"],
        "rule": a["rule"],
        "kind": a["kind"],
        "subject": a["subject"],
        "key": a["key"],
        "condition": t.rule.describe(),
        "summary": a["summary"],
        "value": a["value"],
        "since": a["since"],
        "fired_at": a["fired_at"],
        "resolved_at": a["resolved_at"],
    }
    if a.get("cluster"):  # one of several clusters watched (--cluster)
        body["cluster"] = a["cluster"]
    return body


@dataclass
class DeliveryStats:
    """What a webhook's deliveries came to. ``failed`` counts notifications given up on."""

    webhook: str
    url: str  # redacted
    format: str
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    pending: int = 0
    last_result: str | None = None  # "delivered" or "failed"
    last_error: str | None = None
    last_attempt_at: float | None = None
    last_delivered_at: float | None = None
    last_failed_at: float | None = None


@dataclass
class _Item:
    transition: Transition
    body: bytes


class _RedactWebhookUrls(logging.Filter):
    """httpx logs every request's full URL at INFO; for webhooks that URL is a secret."""

    def __init__(self, webhooks: tuple[Webhook, ...]) -> None:
        super().__init__()
        self.shown = {str(httpx.URL(w.url)): w.shown_url for w in webhooks}

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 1 and str(args[1]) in self.shown:
            record.args = (args[0], self.shown[str(args[1])], *args[2:])
        return True


class Notifier:
    """Delivers transitions to webhooks; ``start`` and ``close`` run on the server's loop."""

    def __init__(
        self, webhooks: tuple[Webhook, ...], transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.webhooks = {w.name: w for w in webhooks}
        self.stats = {
            w.name: DeliveryStats(w.name, w.shown_url, w.format.value) for w in webhooks
        }
        self.failures: deque[dict[str, Any]] = deque(maxlen=FAILURES_KEPT)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._outboxes: dict[str, deque[_Item]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._senders: list[asyncio.Task[None]] = []
        self._log_filter = _RedactWebhookUrls(webhooks)

    def start(self) -> None:
        logging.getLogger("httpx").addFilter(self._log_filter)
        self._client = httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,
            headers={"User-Agent": f"celeriac/{__version__}"},
        )
        for name in self.webhooks:
            self._outboxes[name] = deque()
            self._wakeups[name] = asyncio.Event()
            self._senders.append(asyncio.create_task(self._sender(name),
                                                     name=f"celeriac-webhook-{name}"))

    def send(self, transition: Transition, targets: tuple[Webhook, ...]) -> None:
        """Queue a notification for each target; never waits."""
        for hook in targets:
            outbox = self._outboxes.get(hook.name)
            if outbox is None:
                continue
            stats = self.stats[hook.name]
            if len(outbox) >= OUTBOX_SIZE:
                dropped = outbox.popleft()
                stats.dropped += 1
                self._failure(hook, dropped.transition, "dropped: outbox full", 0)
            body = orjson.dumps(payload(transition, hook.format), option=orjson.OPT_NON_STR_KEYS)
            outbox.append(_Item(transition, body))
            stats.pending = len(outbox)
            self._wakeups[hook.name].set()

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        deadline = time.monotonic() + grace
        while any(self._outboxes.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in self._senders:
            task.cancel()
        for task in self._senders:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._senders.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        logging.getLogger("httpx").removeFilter(self._log_filter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "webhooks": [asdict(s) for s in self.stats.values()],
            "failures": list(self.failures),
        }

    # -- delivery ---------------------------------------------------------------------------
    async def _sender(self, name: str) -> None:
        hook, outbox, wakeup = self.webhooks[name], self._outboxes[name], self._wakeups[name]
        while True:
            while not outbox:
                wakeup.clear()
                await wakeup.wait()
            item = outbox[0]
            try:
                await self._deliver(hook, item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop this webhook's deliveries
                log.exception("alerts: delivery to webhook %r crashed", name)
                self._failure(hook, item.transition, f"internal error: {type(exc).__name__}", 0)
            if outbox and outbox[0] is item:
                outbox.popleft()
            self.stats[name].pending = len(outbox)

    async def _deliver(self, hook: Webhook, item: _Item) -> None:
        assert self._client is not None
        stats = self.stats[hook.name]
        attempts = hook.retries + 1
        delay = hook.backoff
        error = ""
        for attempt in range(1, attempts + 1):
            stats.last_attempt_at = time.time()
            wait: float | None = None
            try:
                response = await self._client.post(
                    hook.url, content=item.body, timeout=hook.timeout,
                    headers={"Content-Type": "application/json", **dict(hook.headers)},
                )
            except httpx.HTTPError as exc:
                error, retry = _scrub(f"{type(exc).__name__}: {exc}", hook), True
            else:
                if 200 <= response.status_code < 300:
                    stats.delivered += 1
                    stats.last_result, stats.last_error = "delivered", None
                    stats.last_delivered_at = time.time()
                    if attempt > 1:
                        log.info("alerts: webhook %r (%s) took the %s of %s after %d attempts",
                                 hook.name, hook.shown_url, item.transition.status.value,
                                 item.transition.alert["rule"], attempt)
                    return
                error = f"HTTP {response.status_code}"
                retry = response.status_code >= 500 or response.status_code in (408, 429)
                wait = _retry_after(response)
            if not retry or attempt == attempts:
                break
            pause = min(max(delay, wait or 0.0), MAX_BACKOFF)
            log.warning("alerts: webhook %r (%s) attempt %d of %d failed: %s; retrying in %s",
                        hook.name, hook.shown_url, attempt, attempts, error, fmt_seconds(pause))
            stats.retries += 1
            stats.last_error = error
            await asyncio.sleep(pause)
            delay = min(delay * 2, MAX_BACKOFF)
        stats.failed += 1
        self._failure(hook, item.transition, error, attempt)
        log.error("alerts: webhook %r (%s) gave up on the %s of %s after %d attempt(s): %s",
                  hook.name, hook.shown_url, item.transition.status.value,
                  item.transition.alert["rule"], attempt, error)

    def _failure(self, hook: Webhook, t: Transition, error: str, attempts: int) -> None:
        now = time.time()
        stats = self.stats[hook.name]
        stats.last_result, stats.last_error, stats.last_failed_at = "failed", error, now
        self.failures.appendleft({
            "at": now, "webhook": hook.name, "url": hook.shown_url, "rule": t.alert["rule"],
            "alert_id": t.alert["id"], "status": t.status.value, "attempts": attempts,
            "error": error,
        })


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_BACKOFF else None


def _scrub(text: str, hook: Webhook) -> str:
    """The error text without the URL or any piece of it that could be a secret."""
    url = httpx.URL(hook.url)
    secrets = [hook.url, str(url), url.path, url.query.decode(errors="replace"),
               url.userinfo.decode(errors="replace")]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        if len(secret) > 1:
            text = text.replace(secret, "***")
    return text[:300]
