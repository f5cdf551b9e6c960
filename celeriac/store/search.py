"""Task search with Flower 2.2's syntax, parsed once and evaluated in Python or as SQL.

Grammar (``AND`` and ``OR`` are operators only when bare and upper case)::

    query := and ("OR" and)*              OR binds looser than AND
    and   := atom (["AND"] atom)*         juxtaposition means AND
    atom  := "(" query ")" | term
    term  := [qualifier ":"] (word | "quoted phrase")     \\" and \\\\ escape inside quotes

Qualifiers: ``name:``, ``worker:``, ``args:``, ``kwargs:``, ``result:`` match a substring of that
field; ``state:`` matches the state exactly; ``kwargs:key=value`` matches when the task's kwargs
have ``key`` and its value's ``str()`` is ``value``. A term without a qualifier matches a
substring of name, args, kwargs, result, exception, traceback or worker; substrings are
case-insensitive.

The trigram index finds substrings of 3 or more characters. A shorter one (``bad 11``) is
checked only on the tasks the rest of the query narrows to, so a query must have a term that
narrows: a substring of 3+ characters, or a ``name:``, ``worker:``, ``state:`` or
``kwargs:key=value`` term, in every branch of an OR. Otherwise it is an error rather than a
silent table scan.

Both evaluators share the parser: :func:`compile_search` gives a predicate over task records
(for :class:`~celeriac.store.memory.MemoryStore`), :func:`search_sql` the same search for the
SQLite store: an FTS5 query over the ``tasks_fts`` trigram index that narrows to candidates,
and the exact condition in SQL, resolved against the small name tables.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from celeriac.store.base import TaskRecord

__all__ = [
    "FREE_FIELDS",
    "MIN_TERM",
    "BoolOp",
    "SearchError",
    "SearchSql",
    "Term",
    "compile_search",
    "contains",
    "kwarg_equals",
    "parse_search",
    "search_sql",
]

#: Fields a term without a qualifier looks in.
FREE_FIELDS = ("name", "args", "kwargs", "result", "exception", "traceback", "worker")
QUALIFIERS = ("name", "state", "worker", "args", "kwargs", "result")
#: Shortest substring the trigram index can find.
MIN_TERM = 3
#: Free-term columns that are in the full-text index (name and worker are matched by name).
FTS_FREE = "{args kwargs result exception traceback}"

_QUALIFIER = re.compile(r"(?i)(" + "|".join(QUALIFIERS) + r"):")


class SearchError(ValueError):
    """The search text is not a valid query; the message says where, for a 400 answer."""


@dataclass(frozen=True)
class Term:
    """One condition. ``field`` None means any of :data:`FREE_FIELDS`.

    ``value`` is lower case for substring terms, upper case for ``state``, and as typed for the
    value of ``kwargs:key=value`` (whose ``key`` is then set).
    """

    field: str | None
    value: str
    key: str | None = None


@dataclass(frozen=True)
class BoolOp:
    op: str  # "AND" or "OR"
    parts: tuple[Term | BoolOp, ...]


Node = Term | BoolOp

# A lexed word: its pieces as (text, was_quoted).
_Word = list[tuple[str, bool]]


def _lex(text: str) -> list[str | _Word]:
    """Split into "(", ")", "AND", "OR" and words; a word keeps which of its pieces were quoted."""
    out: list[str | _Word] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "()":
            out.append(ch)
            i += 1
        else:
            word: _Word = []
            while i < n and not text[i].isspace() and text[i] not in "()":
                if text[i] == '"':
                    start, i, buf = i, i + 1, []
                    while True:
                        if i >= n:
                            raise SearchError(f"unterminated quote at position {start + 1}")
                        if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\':
                            buf.append(text[i + 1])
                            i += 2
                        elif text[i] == '"':
                            i += 1
                            break
                        else:
                            buf.append(text[i])
                            i += 1
                    word.append(("".join(buf), True))
                else:
                    start = i
                    while i < n and not text[i].isspace() and text[i] not in '()"':
                        i += 1
                    word.append((text[start:i], False))
            if len(word) == 1 and not word[0][1] and word[0][0] in ("AND", "OR"):
                out.append(word[0][0])
            else:
                out.append(word)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _substring(field: str | None, value: str) -> Term:
    return Term(field, value.lower())


def _short(node: Term) -> bool:
    """A substring the trigram index cannot find: too short, in a field it covers."""
    return (
        node.field in (None, "args", "kwargs", "result")
        and node.key is None
        and (len(node.value) < MIN_TERM)
    )


def _narrows(node: Node) -> bool:
    """Whether an index can find the candidates: any part of an AND, every part of an OR."""
    if isinstance(node, Term):
        return not _short(node)
    parts = [_narrows(p) for p in node.parts]
    return any(parts) if node.op == "AND" else all(parts)


def _first_short(node: Node) -> Term | None:
    if isinstance(node, Term):
        return node if _short(node) else None
    return next((t for p in node.parts if (t := _first_short(p)) is not None), None)


def _term(word: _Word) -> Term:
    first, first_quoted = word[0]
    match = None if first_quoted else _QUALIFIER.match(first)
    if match is None:
        return _substring(None, "".join(text for text, _ in word))
    field = match.group(1).lower()
    rest: _Word = [(first[match.end() :], False), *word[1:]]
    value = "".join(text for text, _ in rest)
    if not value:
        raise SearchError(f"{field}: needs a value")
    if field == "state":
        return Term("state", value.upper())
    if field == "kwargs":
        # Only an unquoted '=' separates key and value: kwargs:"a=b" is a substring.
        head, head_quoted = rest[0]
        if not head_quoted and "=" in head:
            key, _, tail = head.partition("=")
            if not key.strip():
                raise SearchError("kwargs:key=value needs a key before '='")
            wanted = _unquote((tail + "".join(text for text, _ in rest[1:])).strip())
            return Term("kwargs", wanted, key=key.strip())
    return _substring(field, value)


class _Parser:
    def __init__(self, tokens: list[str | _Word]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | _Word | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def query(self) -> Node:
        parts = [self.conjunction()]
        while self.peek() == "OR":
            self.pos += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.atom()]
        while (tok := self.peek()) is not None and tok not in (")", "OR"):
            if tok == "AND":
                self.pos += 1
            parts.append(self.atom())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise SearchError("the query ends where a search term is expected")
        if isinstance(tok, list):
            self.pos += 1
            return _term(tok)
        if tok == "(":
            self.pos += 1
            if self.peek() == ")":
                raise SearchError("empty parentheses")
            node = self.query()
            if self.peek() != ")":
                raise SearchError("missing ')'")
            self.pos += 1
            return node
        if tok == ")":
            raise SearchError("unexpected ')'")
        raise SearchError(f"{tok} needs a search term on each side")


def parse_search(text: str | None) -> Node | None:
    """The parsed query, or None when there is nothing to search for. Raises SearchError."""
    tokens = _lex(text or "")
    if not tokens:
        return None
    parser = _Parser(tokens)
    node = parser.query()
    if parser.pos < len(tokens):  # only a stray ')' can stop the top level early
        raise SearchError("unexpected ')'")
    if not _narrows(node):
        short = _first_short(node)
        shown = "" if short is None else short.value
        shown = f"{short.field}:{shown}" if short is not None and short.field else shown
        raise SearchError(
            f"search term {shown!r} is too short: substrings need at least {MIN_TERM} "
            "characters, unless AND-ed with a longer one"
        )
    return node


def contains(term: str, *texts: object) -> bool:
    """SQL function ``celeriac_contains``: ``term`` in any of ``texts``, as the predicate has it."""
    return any(text is not None and term in str(text).lower() for text in texts)


def kwarg_equals(kwargs_repr: object, key: str, value: str) -> bool:
    """Whether a kwargs repr such as ``{'user': 5}`` holds ``key`` with ``str(value) == value``.

    The repr is parsed as a literal when it can be; Celery truncates long reprs, and those fall
    back to reading the text after ``'key': `` up to the next ``,`` or ``}`` as Flower does.
    """
    if not isinstance(kwargs_repr, str) or not kwargs_repr:
        return False
    try:
        parsed = ast.literal_eval(kwargs_repr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        return key in parsed and str(parsed[key]) == value
    found = re.search(r"(['\"])" + re.escape(key) + r"\1:\s*([^,}]*)", kwargs_repr)
    return found is not None and _unquote(found.group(2).strip()) == value


def _text(record: TaskRecord, field: str) -> str:
    value = record.get(field)
    return "" if value is None else str(value).lower()


def _predicate(node: Node) -> Callable[[TaskRecord], bool]:
    if isinstance(node, BoolOp):
        preds = [_predicate(p) for p in node.parts]
        if node.op == "AND":
            return lambda r: all(p(r) for p in preds)
        return lambda r: any(p(r) for p in preds)
    field, value, key = node.field, node.value, node.key
    if field is None:
        return lambda r: any(value in _text(r, f) for f in FREE_FIELDS)
    if field == "state":
        return lambda r: r.get("state") == value
    if key is not None:
        return lambda r: kwarg_equals(r.get("kwargs"), key, value)
    return lambda r: value in _text(r, field)


def compile_search(query: str | Node | None) -> Callable[[TaskRecord], bool]:
    """A predicate over task records for ``query``; raises SearchError if it is malformed."""
    node = query if isinstance(query, (Term, BoolOp)) else parse_search(query)
    return (lambda r: True) if node is None else _predicate(node)


# --- SQL -----------------------------------------------------------------------------------

_FTS_IN = "{p}id IN (SELECT rowid FROM tasks_fts WHERE tasks_fts MATCH ?)"


@dataclass(frozen=True)
class SearchSql:
    """A search as SQL over ``tasks``: rows in the FTS5 query ``fts`` AND matching ``sql``.

    Either part may be None (true). ``sql`` writes ``{p}`` before each column; :meth:`where`
    fills in the table prefix, ``"t."`` normally, or ``"+t."`` to keep SQLite from driving the
    query from those columns' indexes. ``params`` belong to ``sql``.
    """

    fts: str | None = None
    sql: str | None = None
    params: tuple[object, ...] = ()

    def where(self, prefix: str = "t.") -> tuple[str, tuple[object, ...]]:
        parts: list[str] = []
        params: list[object] = []
        if self.fts is not None:
            parts.append(_FTS_IN)
            params.append(self.fts)
        if self.sql is not None:
            parts.append(f"({self.sql})")
            params.extend(self.params)
        return (" AND ".join(parts) or "1").replace("{p}", prefix), tuple(params)


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _in_list(column: str, values: list[str]) -> SearchSql:
    if not values:
        return SearchSql(sql="0")
    # name is indexed case-insensitively; a name NOCASE-equal to a listed one contains the term.
    collate = " COLLATE NOCASE" if column == "name" else ""
    marks = ", ".join("?" * len(values))
    return SearchSql(sql=f"{{p}}{column}{collate} IN ({marks})", params=tuple(values))


def _any_of(parts: list[SearchSql]) -> SearchSql:
    if all(p.sql is None for p in parts):
        return SearchSql(fts=" OR ".join(f"({p.fts})" for p in parts))
    preds = [p.where("{p}") for p in parts]
    # When every branch has text, their union still narrows through the index; the exact
    # condition is then checked on those rows only.
    union = None if any(p.fts is None for p in parts) else " OR ".join(f"({p.fts})" for p in parts)
    return SearchSql(
        fts=union,
        sql=" OR ".join(f"({s})" for s, _ in preds),
        params=tuple(x for _, ps in preds for x in ps),
    )


def _compile(node: Node, names: list[str], workers: list[str]) -> SearchSql:
    if isinstance(node, BoolOp):
        parts = [_compile(p, names, workers) for p in node.parts]
        if node.op == "OR":
            return _any_of(parts)
        fts = [f"({p.fts})" for p in parts if p.fts is not None]
        sql = [p for p in parts if p.sql is not None]
        return SearchSql(
            fts=" AND ".join(fts) or None,
            sql=" AND ".join(f"({p.sql})" for p in sql) or None,
            params=tuple(x for p in sql for x in p.params),
        )
    value = node.value
    if _short(node):  # checked on the candidates the rest of the query narrows to
        columns = FREE_FIELDS if node.field is None else (node.field,)
        marks = ", ".join(f"{{p}}{c}" for c in columns)
        return SearchSql(sql=f"celeriac_contains(?, {marks})", params=(value,))
    if node.field is None:
        free = SearchSql(fts=f"{FTS_FREE} : {_phrase(value)}")
        by_name = [n for n in names if value in n.lower()]
        by_worker = [w for w in workers if value in w.lower()]
        alternatives = [free]
        if by_name:
            alternatives.append(_in_list("name", by_name))
        if by_worker:
            alternatives.append(_in_list("worker", by_worker))
        return free if len(alternatives) == 1 else _any_of(alternatives)
    if node.field in ("name", "worker"):
        known = names if node.field == "name" else workers
        return _in_list(node.field, [n for n in known if value in n.lower()])
    if node.field == "state":
        return SearchSql(sql="{p}state = ?", params=(value,))
    if node.key is not None:
        # The index narrows to rows whose kwargs show "'key': value" as a repr would (a str
        # value quoted, anything else as its str); the exact comparison runs only on those.
        key = repr(node.key) + ": "
        if repr(value)[1:-1] == value:  # nothing a repr would escape
            shown = " OR ".join(_phrase(key + v) for v in dict.fromkeys((value, repr(value))))
            prefilter = f"kwargs : ({shown})"
        else:
            prefilter = f"kwargs : {_phrase(key)}"
        return SearchSql(
            fts=prefilter, sql="celeriac_kwarg_equals({p}kwargs, ?, ?)", params=(node.key, value)
        )
    return SearchSql(fts=f"{node.field} : {_phrase(value)}")


def search_sql(node: Node, names: Iterable[str], workers: Iterable[str]) -> SearchSql:
    """The search as SQL over ``tasks AS t``.

    ``names`` and ``workers`` are every task name and worker hostname stored: name and worker
    terms are resolved against them here, so the query uses the plain indexes on those columns.
    The connection must have :func:`kwarg_equals` and :func:`contains` registered as
    ``celeriac_kwarg_equals`` and ``celeriac_contains``.
    """
    return _compile(node, list(names), list(workers))
