"""A parsed search (``celeriac.store.search``) as a PostgreSQL condition over ``tasks``.

Substring terms of 3+ characters (lower case, as parsed) become ``LIKE`` on the lower-cased
:data:`SEARCH_TEXT`, which a pg_trgm GIN index serves; a qualified term (``args:x``) checks its
own column too, on the rows the index found. Shorter substrings, which a trigram index cannot
find, are plain LIKEs on the lower-cased columns:
the parser only lets them through AND-ed with a term that narrows. ``state:`` is an equality.

``kwargs:key=value`` cannot be decided in SQL (it parses the repr): the condition narrows to the
rows whose kwargs show ``'key': value``, and the caller checks the exact predicate in Python
while reading (:attr:`PgSearch.exact` is False then).
"""

from __future__ import annotations

from dataclasses import dataclass

from celeriac.store.pg_migrations import SEARCH_TEXT
from celeriac.store.search import FREE_FIELDS, BoolOp, Node, Term

__all__ = ["PgSearch", "like_pattern", "search_condition"]


@dataclass(frozen=True)
class PgSearch:
    sql: str  # psycopg placeholders (%s)
    params: tuple[str, ...]
    exact: bool  # False: the rows are candidates, to be checked with compile_search


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (backslash is the default escape)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _lower(column: str) -> str:
    return f'lower({column} COLLATE "default")'


def _short(term: Term) -> bool:
    # name: and worker: terms too: the parser lets them narrow by name in the SQLite store,
    # but a trigram index cannot find fewer than 3 characters either.
    return term.key is None and len(term.value) < 3 and term.field != "state"


def _term(term: Term) -> PgSearch:
    if term.field == "state":
        return PgSearch("state = %s", (term.value,), True)
    if term.key is not None:
        # As SQLite's prefilter: the repr shows "'key': " then the value, quoted when a str.
        key = repr(term.key) + ": "
        value = term.value
        shown = dict.fromkeys((value, repr(value))) if repr(value)[1:-1] == value else {"": 0}
        patterns = tuple(like_pattern((key + v).lower()) for v in shown)
        ors = " OR ".join(f"{SEARCH_TEXT} LIKE %s" for _ in patterns)
        checks = " OR ".join(f"{_lower('kwargs')} LIKE %s" for _ in patterns)
        return PgSearch(f"({ors}) AND ({checks})", patterns + patterns, False)
    pattern = like_pattern(term.value)
    if _short(term):
        columns = FREE_FIELDS if term.field is None else (term.field,)
        sql = " OR ".join(f"{_lower(c)} LIKE %s" for c in columns)
        return PgSearch(f"({sql})", (pattern,) * len(columns), True)
    if term.field is None:
        return PgSearch(f"{SEARCH_TEXT} LIKE %s", (pattern,), True)
    sql = f"{SEARCH_TEXT} LIKE %s AND {_lower(term.field)} LIKE %s"
    return PgSearch(sql, (pattern, pattern), True)


def search_condition(node: Node) -> PgSearch:
    """The search as one condition over ``tasks``."""
    if isinstance(node, Term):
        return _term(node)
    assert isinstance(node, BoolOp)
    parts = [search_condition(p) for p in node.parts]
    joiner = f" {node.op} "
    return PgSearch(
        joiner.join(f"({p.sql})" for p in parts),
        tuple(x for p in parts for x in p.params),
        all(p.exact for p in parts),
    )
