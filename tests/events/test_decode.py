"""The decoders on their own: every shape a publisher can send, and nothing ever raises."""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

import pytest
import yaml

from celeriac.events.decode import Decoded, amqp_messages, decode_body, redis_messages


def envelope(body: bytes | str, **overrides: Any) -> bytes:
    """kombu's Redis envelope, exactly as kombu writes it ("body" first)."""
    env: dict[str, Any] = {
        "body": body if isinstance(body, str) else base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": "celery@w1"},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": "task.succeeded"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "8f0b2d5e-4b7a-4d0c-9d55-6a1a4c7d4e11",
        },
    }
    props = overrides.pop("properties", {})
    env["properties"].update(props)
    env.update(overrides)
    return json.dumps(env).encode()


EVENT = {"type": "task-succeeded", "uuid": "u1", "hostname": "celery@w1", "clock": 3}


def redis(*datas: bytes) -> Decoded:
    out = Decoded()
    redis_messages(list(datas), out)
    return out


def amqp(*bodies: tuple[Any, str | None, str | None]) -> Decoded:
    out = Decoded()
    amqp_messages(list(bodies), out)
    return out


def test_redis_single_event_fast_path() -> None:
    out = redis(envelope(json.dumps(EVENT).encode()))
    assert out.events == [EVENT]
    assert (out.messages, out.malformed) == (1, 0)


def test_redis_task_multi_list_is_flattened() -> None:
    batch = [dict(EVENT, uuid=f"u{i}") for i in range(24)]
    out = redis(envelope(json.dumps(batch).encode()))
    assert [e["uuid"] for e in out.events] == [f"u{i}" for i in range(24)]
    assert (out.messages, out.malformed) == (1, 0)


def test_redis_unknown_event_type_passes_through() -> None:
    out = redis(envelope(b'{"type": "custom-thing", "x": 1}'))
    assert out.events == [{"type": "custom-thing", "x": 1}]
    assert out.malformed == 0


@pytest.mark.parametrize(
    "data",
    [
        envelope("!!!not base64!!!"),
        envelope(b"{not json"),
        envelope(b"42"),
        envelope(b'"a string"'),
        envelope(b'{"uuid": "no type"}'),
        envelope(b'{"type": 7}'),
        envelope(b'{"type": "task-x"'),
        b"not even json",
        b"[1, 2, 3]",
        b'{"body": "',
        b'{"body": 12, "properties": {"body_encoding": "base64"}}',
        envelope(json.dumps(EVENT).encode(), properties={"body_encoding": "rot13"}),
        envelope(pickle.dumps(EVENT), **{"content-type": "application/x-python-serialize"}),
        b"",
    ],
)
def test_redis_malformed_is_counted_not_raised(data: bytes) -> None:
    out = redis(data, envelope(json.dumps(EVENT).encode()))
    assert out.events == [EVENT]  # the good message after the bad one still decodes
    assert out.messages == 2
    assert out.malformed == 1


GOOD_B64 = base64.b64encode(json.dumps(EVENT).encode()).decode()


@pytest.mark.parametrize(
    "text",
    [
        GOOD_B64,
        GOOD_B64[:20] + " \t" + GOOD_B64[20:],  # whitespace inside: discarded
        GOOD_B64[:20] + "*!$" + GOOD_B64[20:],  # characters outside the alphabet: discarded
        base64.encodebytes(json.dumps(dict(EVENT, result="x" * 100)).encode()).decode(),  # lines
        GOOD_B64[:20] + '"' + GOOD_B64[20:],  # a quote inside (escaped by JSON)
        GOOD_B64.rstrip("="),  # padding missing: an error
        GOOD_B64 + "==",  # padding in excess: ignored
        GOOD_B64[:-5],  # cut short
        "",
    ],
)
def test_redis_base64_reads_as_the_standard_library_does(text: str) -> None:
    """The fast path's base64 (pybase64) takes and refuses what kombu's own decoder
    (``base64.b64decode``) does, so no publisher sees a difference."""
    try:
        expected = [json.loads(base64.b64decode(text))]
    except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
        expected = []
    out = redis(envelope(text))
    assert out.events == expected
    assert out.malformed == 1 - len(expected)


def test_redis_list_with_bad_members_keeps_the_good_ones() -> None:
    batch = [EVENT, 3, {"no": "type"}, dict(EVENT, uuid="u2")]
    out = redis(envelope(json.dumps(batch).encode()))
    assert [e["uuid"] for e in out.events] == ["u1", "u2"]
    assert out.malformed == 2


def test_redis_slow_path_plain_body_without_base64() -> None:
    # body_encoding absent: kombu puts the serialized body in as a string.
    data = json.dumps(
        {
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "properties": {"delivery_info": {}},
            "body": json.dumps(EVENT),
        }
    ).encode()
    assert redis(data).events == [EVENT]


def test_redis_slow_path_other_key_order_and_spacing() -> None:
    env = json.loads(envelope(json.dumps(EVENT).encode()))
    data = json.dumps(dict(reversed(list(env.items()))), separators=(",", ":")).encode()
    assert redis(data).events == [EVENT]


def test_redis_slow_path_yaml_through_kombu_registry() -> None:
    data = envelope(yaml.safe_dump(EVENT).encode(), **{"content-type": "application/x-yaml"})
    assert redis(data).events == [EVENT]


def test_redis_fast_path_not_fooled_by_a_non_json_content_type() -> None:
    # A YAML body sliced out and handed to orjson would fail; the markers route it slowly.
    data = envelope(b"type: task-started\nuuid: u9\n", **{"content-type": "application/x-yaml"})
    assert redis(data).events == [{"type": "task-started", "uuid": "u9"}]


def test_amqp_json_dict_and_list() -> None:
    out = amqp(
        (json.dumps(EVENT).encode(), "application/json", "utf-8"),
        (json.dumps([EVENT, EVENT]).encode(), "application/json", "utf-8"),
    )
    assert out.events == [EVENT, EVENT, EVENT]
    assert (out.messages, out.malformed) == (2, 0)


@pytest.mark.parametrize(
    "body",
    [
        (b"{bad", "application/json", "utf-8"),
        (b"null", "application/json", "utf-8"),
        (b'{"uuid": "x"}', "application/json", "utf-8"),
        (b"", "application/json", "utf-8"),
        (pickle.dumps(EVENT), "application/x-python-serialize", "binary"),
        (b"raw bytes", "application/data", "binary"),
        (b"\xff\xfe", None, None),
    ],
)
def test_amqp_malformed_is_counted_not_raised(body: tuple[Any, str | None, str | None]) -> None:
    out = amqp(body, (json.dumps(EVENT).encode(), "application/json", "utf-8"))
    assert out.events == [EVENT]
    assert (out.messages, out.malformed) == (2, 1)


def test_amqp_missing_content_type_is_treated_as_json() -> None:
    assert amqp((json.dumps(EVENT).encode(), None, None)).events == [EVENT]


def test_decode_body_never_unpickles() -> None:
    with pytest.raises(Exception, match=r"(?i)disallow|untrusted|refus"):
        decode_body(pickle.dumps(EVENT), "application/x-python-serialize", "binary")
