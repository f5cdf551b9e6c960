"""The search syntax: parsing, errors, the Python predicate, and the SQL (FTS5) that must agree."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.constants import TASK_FIELDS
from celeriac.store.base import TaskQuery, TaskRecord
from celeriac.store.search import (
    BoolOp,
    SearchError,
    Term,
    compile_search,
    kwarg_equals,
    parse_search,
)
from celeriac.store.sqlite import SqliteStore

FIELDS = [f for f in TASK_FIELDS if f != "children"]


def task(i: int, **fields: object) -> TaskRecord:
    record: TaskRecord = dict.fromkeys(FIELDS)
    record.update(uuid=f"t{i:04d}", state="SUCCESS", timestamp=1_700_000_000.0 + i)
    record.update(fields)
    return record


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("", None),
        ("   ", None),
        ("foo", Term(None, "foo")),
        ("Foo BAR", BoolOp("AND", (Term(None, "foo"), Term(None, "bar")))),
        ("foo AND bar", BoolOp("AND", (Term(None, "foo"), Term(None, "bar")))),
        (
            "foo OR bar baz",
            BoolOp(
                "OR", (Term(None, "foo"), BoolOp("AND", (Term(None, "bar"), Term(None, "baz"))))
            ),
        ),
        (
            "(foo OR bar) baz",
            BoolOp(
                "AND", (BoolOp("OR", (Term(None, "foo"), Term(None, "bar"))), Term(None, "baz"))
            ),
        ),
        ('"hello world"', Term(None, "hello world")),
        (r'"say \"hi\" \\ now"', Term(None, 'say "hi" \\ now')),
        ('"AND"', Term(None, "and")),
        ("and or", BoolOp("AND", (Term(None, "and"), Term(None, "or")))),
        ("state:success", Term("state", "SUCCESS")),
        ("State:Failure", Term("state", "FAILURE")),
        ("name:Tasks.Add", Term("name", "tasks.add")),
        ("worker:w1", Term("worker", "w1")),
        ('args:"(1, 2)"', Term("args", "(1, 2)")),
        ("result:420", Term("result", "420")),
        ("kwargs:user", Term("kwargs", "user")),
        ("kwargs:user=5", Term("kwargs", "5", key="user")),
        ("kwargs:user='bob'", Term("kwargs", "bob", key="user")),
        ('kwargs:user="bob smith"', Term("kwargs", "bob smith", key="user")),
        ('kwargs:"a=b"', Term("kwargs", "a=b")),
        ("http://example.com", Term(None, "http://example.com")),
        ('"args:not a qualifier"', Term(None, "args:not a qualifier")),
        ("boom 11", BoolOp("AND", (Term(None, "boom"), Term(None, "11")))),
        ("name:ab", Term("name", "ab")),  # resolved against task names: no length limit
    ],
)
def test_parse(text, tree):
    assert parse_search(text) == tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"unterminated', "unterminated quote at position 1"),
        ('foo "bar', "unterminated quote at position 5"),
        ("(foo", "missing ')'"),
        ("foo)", "unexpected ')'"),
        ("()", "empty parentheses"),
        ("(foo) )", "unexpected ')'"),
        ("AND foo", "AND needs a search term on each side"),
        ("foo AND", "the query ends where a search term is expected"),
        ("foo OR", "the query ends where a search term is expected"),
        ("OR", "OR needs a search term on each side"),
        ("foo AND OR bar", "OR needs a search term on each side"),
        ("foo OR OR bar", "OR needs a search term on each side"),
        ("ab", "search term 'ab' is too short"),
        ("args:5", "search term 'args:5' is too short"),
        ("boom OR 11", "search term '11' is too short"),
        ("args:", "args: needs a value"),
        ("state:", "state: needs a value"),
        ("kwargs:=5", "kwargs:key=value needs a key before '='"),
    ],
)
def test_malformed_queries_raise_search_error(text, message):
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_search(text)
    assert issubclass(SearchError, ValueError)  # the API answers a ValueError with a 400


def test_predicate_semantics():
    failed = task(
        1, name="tasks.Divide", state="FAILURE", args="(1, 0)", kwargs="{'user': 5, 'tag': 'x y'}",
        exception="ZeroDivisionError('division by zero')", traceback="Traceback ...\nZeroDiv",
        worker="celery@Worker1",
    )  # fmt: skip
    ok = task(2, name="tasks.add", args="(2, 3)", kwargs="{}", result="5", worker="celery@w2")
    cases = {
        "zerodivision": [failed],
        "DIVIDE": [failed],
        "worker1": [failed],
        "name:divide": [failed],
        "name:celery": [],  # a qualifier looks in its field only
        "state:failure": [failed],
        "state:fail": [],  # states match whole
        'args:"(2,"': [ok],
        "result:5 name:add": [ok],
        "kwargs:user=5": [failed],
        "kwargs:user=50": [],
        'kwargs:tag="x y"': [failed],
        "kwargs:tag": [failed],
        "tasks. 5": [ok, failed],  # '5' is in add's result and in divide's kwargs
        "tasks. AND result:5": [ok],
        "divide OR add": [ok, failed],
        "(divide OR add) state:success": [ok],
        '"division by zero"': [failed],
        '"zero division"': [],
    }
    for text, expected in cases.items():
        match = compile_search(text)
        assert sorted(r["uuid"] for r in (failed, ok) if match(r)) == sorted(
            r["uuid"] for r in expected
        ), text
    assert compile_search(None)(ok) and compile_search("")(ok)


def test_kwarg_equals():
    assert kwarg_equals("{'a': 1, 'b': 'two', 'c': [1, 2]}", "b", "two")
    assert kwarg_equals("{'a': 1, 'b': 'two', 'c': [1, 2]}", "a", "1")
    assert kwarg_equals("{'a': 1, 'b': 'two', 'c': [1, 2]}", "c", "[1, 2]")
    assert not kwarg_equals("{'a': 1}", "a", "2")
    assert not kwarg_equals("{'a': 1}", "b", "1")
    assert kwarg_equals("{'a': 'x', 'b': 'a very long val...", "a", "x")  # truncated repr
    assert not kwarg_equals(None, "a", "1")
    assert not kwarg_equals("not a dict", "a", "1")


WORDS = ["alpha", "beta", "gamma", "Delta", "epsilon", "zeta", "eta", "ΘETA", "x y", 'a"b']
NAMES = ["tasks.add", "tasks.Mul", "reports.build", "mail.send"]
HOSTS = ["celery@alpha", "celery@Beta", "worker@gamma-1"]


def corpus(n: int) -> list[TaskRecord]:
    rng = random.Random(4)
    out = []
    for i in range(n):
        state = rng.choice(["SUCCESS", "FAILURE", "STARTED", "RETRY"])
        words = rng.sample(WORDS, 3)
        out.append(
            task(
                i,
                name=rng.choice(NAMES),
                state=state,
                args=repr((words[0], i)),
                kwargs=repr({"user": i % 7, "word": words[1], "n": i}),
                result=repr(words[2]) if state == "SUCCESS" else None,
                exception=f"KeyError({words[2]!r})" if state == "FAILURE" else None,
                traceback=f"Traceback\n  line {i}\nKeyError" if state == "FAILURE" else None,
                worker=rng.choice(HOSTS),
            )
        )
    return out


QUERIES = [
    "alpha",
    "ALPHA",
    "lph",
    "eta",
    "θeta",
    '"x y"',
    r'"a\"b"',
    "alpha beta",
    "alpha OR beta",
    "alpha OR (beta gamma)",
    "(alpha OR beta) AND (gamma OR delta)",
    "name:tasks",
    "name:mul",
    "name:ADD alpha",
    "worker:beta",
    "worker:gamma OR state:failure",
    "state:RETRY",
    "state:retry gamma",
    "args:alpha",
    "args:'alpha'",
    "kwargs:word",
    "kwargs:user=3",
    "kwargs:word=gamma",
    "kwargs:word='x y'",
    "kwargs:user=3 OR kwargs:user=4",
    "result:gamma",
    "result:'gam",
    "keyerror",
    '"line 1"',
    "traceback line",
    "celery",
    "celery@",
    "alpha 7",
    "args:a name:mail",
    "eta OR name:send",
    "nothing-matches-this",
]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqliteStore, list]]:
    records = corpus(900)
    store = SqliteStore(str(tmp_path_factory.mktemp("search") / "tasks.db"))
    for r in records:
        store.put(dict(r))
    assert store.flush()
    yield store, records
    store.close()


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("plan", [None, "order", "filters", 0, "search"])
def test_sql_search_agrees_with_the_predicate(searched, query, plan, monkeypatch):
    store, records = searched
    monkeypatch.setattr(store, "_force_plan", plan)  # every plan must give the same answer
    match = compile_search(query)
    expected = sorted((r for r in records if match(r)), key=lambda r: r["timestamp"], reverse=True)
    assert store.query(TaskQuery(search=query)) == expected
    for limit, offset in [(10, 0), (5, 7)]:
        page = store.query(TaskQuery(search=query, limit=limit, offset=offset))
        assert page == expected[offset : offset + limit], (query, store.last_plan)
    filtered = store.query(TaskQuery(search=query, state="SUCCESS", limit=20, sort_by="name"))
    assert [r["uuid"] for r in filtered] == [
        r["uuid"]
        for r in sorted(
            (r for r in expected if r["state"] == "SUCCESS"),
            key=lambda r: (r["name"].casefold(), r["timestamp"]),
        )[:20]
    ]


def test_search_follows_updates_and_deletes(tmp_path: Path):
    store = SqliteStore(str(tmp_path / "tasks.db"), max_tasks=1, flush_interval=0.01)
    store.start()
    record = task(1, args="('first',)", state="STARTED")
    store.put(record)
    assert store.flush()
    assert [r["uuid"] for r in store.query(TaskQuery(search="first"))] == ["t0001"]
    record.update(args="('second',)", result="'done'", state="SUCCESS")
    store.put(record)
    assert store.flush()
    assert store.query(TaskQuery(search="first")) == []
    assert [r["uuid"] for r in store.query(TaskQuery(search="second done"))] == ["t0001"]
    store.put(task(2, args="('third',)"))  # max_tasks=1: the first one goes
    assert store.flush() and store.flush()
    assert store.query(TaskQuery(search="second")) == []
    assert [r["uuid"] for r in store.query(TaskQuery(search="third"))] == ["t0002"]
    store.close()


def test_malformed_search_in_a_query_raises(tmp_path: Path):
    store = SqliteStore(str(tmp_path / "tasks.db"))
    with pytest.raises(SearchError):
        store.query(TaskQuery(search='"open'))
    store.close()
