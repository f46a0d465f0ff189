"""RFM scores (recency, frequency, monetary) and the named groups segment rules can use.

Customers are the contacts with at least one purchase (purchase_count > 0, not erased).
Each score is the customer's quintile, 1 to 5, exactly NTILE(5) over the customers in
ascending (value, id) order — id breaks ties, so the scores are the same on every backend:

    recency    last_purchase_at   (5 = bought most recently)
    frequency  purchase_count     (5 = buys most often)
    monetary   purchase_total     (5 = spent most)

Instead of scoring every customer on each query, we read the quintile boundaries a rule
needs (the first (value, id) of buckets 2..5) from a partial index in (value, id) order,
and a score test becomes a row-value comparison on the contact's own columns: no sort, no join.

Groups (first match wins, so a customer is in exactly one; r, f, m are the scores):

    champions    r >= 4, f >= 4, m >= 4   buy often, recently, and spend the most
    loyal        r >= 3, f >= 3           regular customers
    new          r >= 4, f == 1           first purchase was recent
    promising    r >= 3, f <= 2           recent, not yet regular
    cannot_lose  r == 1, f >= 4, m >= 4   were among the best, gone quiet longest
    at_risk      r <= 2, f >= 3           used to buy regularly, not lately
    hibernating  r == 2, f <= 2           few purchases, a while ago
    lost         r == 1, f <= 2           few purchases, long ago
"""
from __future__ import annotations

from itertools import product

import sqlalchemy as sa

from contacts.models import Contact
from envoi.extensions import db
from envoi.parallel import on_connections

DIMENSIONS = ("recency", "frequency", "monetary")
COLUMNS = {"recency": Contact.last_purchase_at, "frequency": Contact.purchase_count,
           "monetary": Contact.purchase_total}
SCORES = (1, 2, 3, 4, 5)

GROUPS = {
    "champions": lambda r, f, m: r >= 4 and f >= 4 and m >= 4,
    "loyal": lambda r, f, m: r >= 3 and f >= 3,
    "new": lambda r, f, m: r >= 4 and f == 1,
    "promising": lambda r, f, m: r >= 3 and f <= 2,
    "cannot_lose": lambda r, f, m: r == 1 and f >= 4 and m >= 4,
    "at_risk": lambda r, f, m: r <= 2 and f >= 3,
    "hibernating": lambda r, f, m: r == 2 and f <= 2,
    "lost": lambda r, f, m: r == 1 and f <= 2,
}


def group_of(r: int, f: int, m: int) -> str:
    return next(name for name, test in GROUPS.items() if test(r, f, m))


def customer():
    return sa.and_(Contact.purchase_count > 0, Contact.last_purchase_at.isnot(None), Contact.erased_at.is_(None))


def bucket_starts(m: int, n: int = 5) -> list[int]:
    """0-based position of the first row of buckets 1..n for NTILE(n) over m rows."""
    q, rem = divmod(m, n)
    return [(k - 1) * q + min(k - 1, rem) for k in range(1, n + 1)]


class Boundaries:
    """Where each score starts: the (value, id) of the first customer of buckets 2..5.

    Read lazily, one boundary at a time, so a rule pays only for the ones it tests (champions:
    one per dimension). Each is an index-only scan to that position from the nearer end of
    the partial index; the customer count is read once.
    """

    def __init__(self):
        self.m = db.session.scalar(sa.select(sa.func.count()).select_from(Contact).where(customer())) or 0
        self.positions = bucket_starts(self.m)
        self._edges: dict[tuple[str, int], tuple | None] = {}

    def edge(self, dim: str, score: int) -> tuple | None:
        if (dim, score) not in self._edges:
            self._edges[dim, score] = self._read(dim, score)
        return self._edges[dim, score]

    def _query(self, dim: str, score: int):
        pos = self.positions[score - 1]
        if pos >= self.m:
            return None
        col = COLUMNS[dim]
        query = sa.select(col, Contact.id).where(customer()).limit(1)
        if pos <= self.m // 2:
            return query.order_by(col, Contact.id).offset(pos)
        return query.order_by(col.desc(), Contact.id.desc()).offset(self.m - 1 - pos)

    def _read(self, dim: str, score: int, conn=None) -> tuple | None:
        query = self._query(dim, score)
        if query is None:
            return None
        row = (conn or db.session).execute(query).first()
        return tuple(row) if row else None

    def read_all(self) -> None:
        """Read every edge now (the RFM grid needs all twelve). Each is a walk of up to 40 % of an
        index; on PostgreSQL the three dimensions' walks run at once, on connections of their own
        (each edge was always its own statement: nothing is less consistent than before)."""
        todo = [(dim, score) for dim in DIMENSIONS for score in SCORES[1:] if (dim, score) not in self._edges]
        if db.engine.dialect.name != "postgresql" or len(todo) < 2:
            for dim, score in todo:
                self.edge(dim, score)
            return

        def walk(conn, dim: str) -> dict:
            return {(d, s): self._read(d, s, conn) for d, s in todo if d == dim}

        for edges in on_connections(walk, DIMENSIONS):
            self._edges.update(edges)


def boundaries() -> Boundaries:
    """The quintile boundaries as of now (read on first use)."""
    return Boundaries()


def _at_least(b: Boundaries, dim: str, score: int):
    if score <= 1:
        return sa.true()
    edge = b.edge(dim, score)
    if edge is None:
        return sa.false()
    col = COLUMNS[dim]
    return sa.tuple_(col, Contact.id) >= sa.tuple_(sa.literal(edge[0], col.type), sa.literal(edge[1], Contact.id.type))


def _at_most(b: Boundaries, dim: str, score: int):
    if score >= 5:
        return sa.true()
    edge = b.edge(dim, score + 1)
    if edge is None:
        return sa.true()
    col = COLUMNS[dim]
    return sa.tuple_(col, Contact.id) < sa.tuple_(sa.literal(edge[0], col.type), sa.literal(edge[1], Contact.id.type))


def _runs(values) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for v in sorted(values):
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [tuple(r) for r in out]


def _in_scores(b: Boundaries, dim: str, scores) -> sa.ColumnElement:
    if set(scores) >= set(SCORES):
        return sa.true()
    return sa.or_(sa.false(), *(sa.and_(_at_least(b, dim, lo), _at_most(b, dim, hi)) for lo, hi in _runs(scores)))


def _triples_sql(b: Boundaries, triples: set, dims=DIMENSIONS) -> sa.ColumnElement:
    """SQL for "the (r, f, m) scores are one of these", grouped so the expression stays small."""
    if not triples:
        return sa.false()
    if len(dims) == 1:
        return _in_scores(b, dims[0], {t[0] for t in triples})
    by_rest: dict[frozenset, set[int]] = {}
    for score in SCORES:
        rest = frozenset(t[1:] for t in triples if t[0] == score)
        if rest:
            by_rest.setdefault(rest, set()).add(score)
    return sa.or_(sa.false(), *(sa.and_(_in_scores(b, dims[0], scores), _triples_sql(b, set(rest), dims[1:]))
                                for rest, scores in by_rest.items()))


def condition(b: Boundaries, rule: dict) -> sa.ColumnElement:
    """The contact is a customer whose scores satisfy the rule's group and score tests."""
    from segments.rules import _holds

    triples = set(product(SCORES, SCORES, SCORES))
    if rule.get("group"):
        triples = {t for t in triples if group_of(*t) in rule["group"]}
    for i, dim in enumerate(DIMENSIONS):
        test = rule.get(dim)
        if test:
            triples = {t for t in triples if _holds(t[i], test["op"], test["value"])}
    return sa.and_(customer(), _triples_sql(b, triples))
