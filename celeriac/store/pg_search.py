"""A parsed search (``celeriac.store.search``) as a PostgreSQL condition over ``tasks``.

Every term that narrows is one condition on the lower-cased :data:`SEARCH_TEXT`, which a pg_trgm
GIN index serves: a free substring term of 3+ characters is a ``LIKE '%term%'``; a qualified
one (``args:x``) is a regular expression that finds the term in its own field of that text
(fields are separated by chr(31), in a known order), so that the planner sees one condition
whose selectivity it can estimate from the expression index's statistics, and walks the
timestamp index for a common term instead of reading every match. Shorter substrings, which a
trigram index cannot find, are plain LIKEs on the lower-cased columns: the parser only lets
them through AND-ed with a term that narrows. ``state:`` is an equality.

``kwargs:key=value`` cannot be decided in SQL (it parses the repr): the condition narrows to the
rows whose kwargs show ``'key': value``, and the caller checks the exact predicate in Python
while reading (:attr:`PgSearch.exact` is False then).
"""

from __future__ import annotations

from dataclasses import dataclass

from celeriac.store.pg_migrations import SEARCH_FIELDS, SEARCH_TEXT
from celeriac.store.search import FREE_FIELDS, BoolOp, Node, Term

__all__ = ["PgSearch", "in_field", "like_pattern", "search_condition"]


@dataclass(frozen=True)
class PgSearch:
    sql: str  # psycopg placeholders (%s)
    params: tuple[str, ...]
    exact: bool  # False: the rows are candidates, to be checked with compile_search


def like_pattern(text: str) -> str:
    """``%text%`` with LIKE's wildcards in ``text`` escaped (backslash is the default escape)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_ARE_SPECIAL = frozenset("\\.^$|?*+()[]{}")
_NEVER = PgSearch("false", (), True)


def in_field(field: str, alternatives: tuple[str, ...]) -> str:
    """A regular expression (PostgreSQL ARE) matching :data:`SEARCH_TEXT` when one of the
    literal ``alternatives`` occurs inside ``field``."""
    before = SEARCH_FIELDS.index(field)
    literal = "|".join(
        "".join("\\" + c if c in _ARE_SPECIAL else c for c in text) for text in alternatives
    )
    skip = f"([^\x1f]*\x1f){{{before}}}" if before else ""
    return f"^{skip}[^\x1f]*({literal})"


def _lower(column: str) -> str:
    return f'lower({column} COLLATE "default")'


def _short(term: Term) -> bool:
    # name: and worker: terms too: the parser lets them narrow by name in the SQLite store,
    # but a trigram index cannot find fewer than 3 characters either.
    return term.key is None and len(term.value) < 3 and term.field != "state"


def _term(term: Term) -> PgSearch:
    if term.field == "state":
        return PgSearch("state = %s", (term.value,), True)
    if "\x1f" in term.value or "\x1f" in (term.key or ""):  # the separator: in no field
        return _NEVER
    if term.key is not None:
        # As SQLite's prefilter: the repr shows "'key': " then the value, quoted when a str.
        key = repr(term.key) + ": "
        value = term.value
        shown = dict.fromkeys((value, repr(value))) if repr(value)[1:-1] == value else {"": 0}
        pattern = in_field("kwargs", tuple((key + v).lower() for v in shown))
        return PgSearch(f"{SEARCH_TEXT} ~ %s", (pattern,), False)
    if _short(term):
        columns = FREE_FIELDS if term.field is None else (term.field,)
        sql = " OR ".join(f"{_lower(c)} LIKE %s" for c in columns)
        return PgSearch(f"({sql})", (like_pattern(term.value),) * len(columns), True)
    if term.field is None:
        return PgSearch(f"{SEARCH_TEXT} LIKE %s", (like_pattern(term.value),), True)
    return PgSearch(f"{SEARCH_TEXT} ~ %s", (in_field(term.field, (term.value,)),), True)


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
