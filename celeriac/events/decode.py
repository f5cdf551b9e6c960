"""Turn raw broker messages into event dicts, cheaply, without ever raising.

Both readers spend most of their time here, so the common case is a straight line:

- Redis: kombu wraps every event in a JSON envelope whose event is base64 JSON under ``"body"``,
  and kombu always writes ``"body"`` first. Parsing the whole envelope only to throw it away
  costs as much as the event itself, so the fast path slices the base64 out of the envelope,
  checks what makes the slice safe to trust (JSON content, a base64 body, no JSON escape in it:
  a publisher may wrap its base64 in lines, written ``\\n``) and decodes only the event.
  Anything else goes the slow way: parse the envelope, then kombu's serializer registry.
  Counted in instructions (valgrind, bench/results/ingest.md), the standard library's base64
  was a third of the decode: pybase64 (SIMD) does it in a quarter of the time and, like
  binascii, discards characters outside the alphabet. The checks use ``find``, not ``in``:
  ``marker in data`` first tries the marker as an integer, and the TypeError it raises and
  clears costs more than the search.
- AMQP: the body is the raw serialized event; JSON goes straight to orjson.

A message holds one event (a dict) or a ``task.multi`` batch (a list). An event is a dict with
a string ``type``; unknown types pass through untouched, for the state to judge. Whatever cannot
be decoded is counted in :class:`Decoded.malformed` and skipped: one bad publisher must never
stop the reader.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pybase64
from kombu.serialization import loads as kombu_loads

from celeriac.events.base import Event

log = logging.getLogger("celeriac.events")

JSON = "application/json"
#: What the slow path accepts from kombu's registry. Never pickle: events come from anyone who
#: can publish to the broker, and unpickling them would run their code.
ACCEPT = frozenset({JSON, "application/x-msgpack", "application/x-yaml"})

_ENVELOPE_HEAD = b'{"body": "'
_HEAD_LEN = len(_ENVELOPE_HEAD)
_JSON_MARK = b'"content-type": "application/json"'
_BASE64_MARK = b'"body_encoding": "base64"'

_a2b = pybase64.b64decode
_loads = orjson.loads


class Decoded:
    """Events decoded from a run of messages, and how many things in them were malformed.

    One is filled per read chunk and handed on as a whole, so that per-message bookkeeping
    stays out of the hot loop.
    """

    __slots__ = ("events", "malformed", "messages")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.messages = 0
        self.malformed = 0

    def add(self, payload: Any) -> None:
        """Take a decoded message body: one event, or a ``task.multi`` list of them."""
        if type(payload) is dict:
            if type(payload.get("type")) is str:
                self.events.append(payload)
            else:
                self.malformed += 1
        elif type(payload) is list:
            append = self.events.append
            for ev in payload:
                if type(ev) is dict and type(ev.get("type")) is str:
                    append(ev)
                else:
                    self.malformed += 1
        else:
            self.malformed += 1


def redis_messages(datas: list[bytes], out: Decoded) -> None:
    """Decode kombu envelopes read from the ``celeryev`` pub/sub channels into ``out``."""
    out.messages += len(datas)
    add = out.add
    for data in datas:
        try:
            if data.startswith(_ENVELOPE_HEAD):
                end = data.index(b'"', _HEAD_LEN)
                if (
                    data.find(_JSON_MARK, end) >= 0
                    and data.find(_BASE64_MARK, end) >= 0
                    and data.find(b"\\", _HEAD_LEN, end) < 0  # an escape: JSON must read it
                ):
                    add(_loads(_a2b(data[_HEAD_LEN:end])))
                    continue
            add(_envelope_slow(data))
        except Exception as exc:  # a publisher can send anything: count it, never stop
            out.malformed += 1
            _note_malformed(exc, data)


def _envelope_slow(data: bytes) -> Any:
    """The full kombu path: any body encoding, any accepted content type."""
    env = _loads(data)
    if type(env) is not dict:
        raise ValueError("envelope is not an object")
    body = env.get("body")
    props = env.get("properties")
    encoding = props.get("body_encoding") if type(props) is dict else None
    if encoding == "base64":
        if type(body) is not str:
            raise ValueError("base64 body is not a string")
        body = _a2b(body)
    elif encoding is not None:
        raise ValueError(f"unknown body_encoding {encoding!r}")
    return decode_body(body, env.get("content-type"), env.get("content-encoding"))


def amqp_messages(bodies: list[tuple[Any, str | None, str | None]], out: Decoded) -> None:
    """Decode ``(body, content_type, content_encoding)`` of AMQP messages into ``out``."""
    out.messages += len(bodies)
    add = out.add
    for body, content_type, content_encoding in bodies:
        try:
            if content_type == JSON:
                add(_loads(body))
            else:
                add(decode_body(body, content_type, content_encoding))
        except Exception as exc:
            out.malformed += 1
            _note_malformed(exc, body)


def decode_body(body: Any, content_type: str | None, content_encoding: str | None) -> Any:
    """Decode one message body by its content type; JSON fast, the rest through kombu."""
    if content_type == JSON or content_type is None:
        # kombu sends JSON when nothing else was asked for; a missing type is treated as JSON.
        return _loads(body)
    return kombu_loads(body, content_type, content_encoding, accept=ACCEPT)


def _note_malformed(exc: Exception, data: Any) -> None:
    # Debug only: a flood of bad messages must not flood the log; the counter tells the story.
    if log.isEnabledFor(logging.DEBUG):
        log.debug("malformed event message (%s: %s): %r", type(exc).__name__, exc, data[:200])
