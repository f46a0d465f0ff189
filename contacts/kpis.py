"""The marketer's figures on the customer file, each one SQL aggregate (no contact row reaches Python).

Customers (purchases in a period [start, end), default the last 365 days):
    revenue, customers, purchases, revenue_per_customer, purchase_frequency (purchases per customer),
    retention: share of the previous period's customers (same length, just before) who bought again
    in this one.

Portfolio (lifetime aggregates kept on the contact: purchase_count, purchase_total, last_purchase_at):
    RFM grid (segments/rfm.py quintile scores; count and revenue per (r, f, m) and per group),
    ABC / Pareto (customers ranked by revenue: A make the first 80 % of it, B the next 15 %, C the rest;
    how many customers make 80 % of revenue), small customers with potential (monetary score <= 2 but
    recency >= 4 and frequency >= 3: they come often and lately, and spend little — for now).

Audience (consent events, contacts and form view counters): subscriber growth per channel and month, the
opt-in funnel (form views, signups = consent requested, confirmations = consent granted) by form and by
source, unsubscribes by method, data freshness (share of contacts not updated for 12 months; about 10-12 % of such data goes
stale a year).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa

from campaigns.reports import dialect, ratio, tune_for_report
from contacts.models import ConsentEvent, Contact, Purchase
from envoi import parallel
from envoi.extensions import db
from envoi.types import utcnow
from optin.models import VIEW_SOURCES, Form, FormView
from segments import rfm

P = Purchase.__table__
CE = ConsentEvent.__table__
FV = FormView.__table__
SMALL_WITH_POTENTIAL = {"monetary": {"op": "lte", "value": 2}, "recency": {"op": "gte", "value": 4},
                        "frequency": {"op": "gte", "value": 3}}
STALE_DAYS = 365


def _money(value) -> str:
    return f"{Decimal(value or 0):.2f}"


def period(start: datetime | None, end: datetime | None, now: datetime | None = None) -> tuple[datetime, datetime]:
    end = end or (now or utcnow())
    return (start or end - timedelta(days=365)), end


# ---------------------------------------------------------------- customers

def customers_report(start: datetime | None = None, end: datetime | None = None, now: datetime | None = None) -> dict:
    """Revenue per customer, purchase frequency and retention over [start, end)."""
    start, end = period(start, end, now)
    # The period before, as long; clamped at the calendar's start for a range of centuries.
    try:
        previous = start - (end - start)
    except OverflowError:
        previous = datetime.min.replace(tzinfo=timezone.utc)
    in_period = sa.and_(P.c.occurred_at >= start, P.c.occurred_at < end)
    in_previous = sa.and_(P.c.occurred_at >= previous, P.c.occurred_at < start)
    revenue, customers, purchases = db.session.execute(sa.select(
        sa.func.sum(P.c.amount), sa.func.count(sa.distinct(P.c.contact_id)), sa.func.count()).where(in_period)).one()
    # Per contact: bought in the previous period? in this one? One pass over both periods.
    per_contact = (sa.select(P.c.contact_id,
                             sa.func.max(sa.case((in_previous, 1), else_=0)).label("before"),
                             sa.func.max(sa.case((in_period, 1), else_=0)).label("now"))
                   .where(P.c.occurred_at >= previous, P.c.occurred_at < end).group_by(P.c.contact_id).subquery())
    before, kept = db.session.execute(sa.select(
        sa.func.count().filter(per_contact.c.before == 1),
        sa.func.count().filter(per_contact.c.before == 1, per_contact.c.now == 1))).one()
    revenue = Decimal(revenue or 0)
    return {"from": start.isoformat(), "to": end.isoformat(), "revenue": _money(revenue), "customers": customers,
            "purchases": purchases,
            "revenue_per_customer": _money(revenue / customers) if customers else None,
            "purchase_frequency": ratio(purchases, customers),
            "previous_customers": before, "retained_customers": kept, "retention": ratio(kept, before)}


# ---------------------------------------------------------------- portfolio: RFM, ABC, potential

def _score(b: rfm.Boundaries, dim: str):
    """The 1-5 score of a dimension as nested CASEs: two or three comparisons a row, not four."""
    def at_least(score):
        return rfm._at_least(b, dim, score)

    return sa.case((at_least(3), sa.case((at_least(4), sa.case((at_least(5), 5), else_=4)), else_=3)),
                   else_=sa.case((at_least(2), 2), else_=1))


def _grid_select(b: rfm.Boundaries):
    r, f, m = (_score(b, d).label(d[0]) for d in rfm.DIMENSIONS)
    return r, f, m


def _grid_rows(b: rfm.Boundaries) -> list[tuple]:
    r, f, m = _grid_select(b)
    return db.session.execute(sa.select(r, f, m, sa.func.count(), sa.func.sum(Contact.purchase_total))
                              .where(rfm.customer()).group_by(sa.text("r"), sa.text("f"), sa.text("m"))).all()


def _bucket_rows() -> list[tuple]:
    """(bucket, customers, revenue) per one-unit bucket of lifetime revenue, the highest first."""
    bucket = _bucket().label("b")
    return db.session.execute(sa.select(bucket, sa.func.count(), sa.func.sum(Contact.purchase_total))
                              .where(rfm.customer()).group_by(sa.text("b")).order_by(sa.text("b DESC"))).all()


def _one_pass(b: rfm.Boundaries) -> tuple[list[tuple], list[tuple]]:
    """The RFM grid's rows and the Pareto buckets, from one pass over the customers where the database
    can do it (PostgreSQL: GROUPING SETS, two hash tables filled by one index-only scan, in parts
    counted at once: _in_parts); else two aggregates."""
    if dialect() != "postgresql":
        return _grid_rows(b), _bucket_rows()
    r, f, m = _grid_select(b)
    bucket = _bucket().label("b")
    query = (sa.select(r, f, m, bucket, sa.func.grouping(bucket).label("grid_row"), sa.func.count(),
                       sa.func.sum(Contact.purchase_total))
             .where(rfm.customer())
             .group_by(sa.func.grouping_sets(sa.tuple_(sa.text("r"), sa.text("f"), sa.text("m")),
                                             sa.tuple_(sa.text("b")))))
    grid: dict[tuple, list] = {}
    buckets: dict[int, list] = {}
    for rows in _in_parts(query.where):
        for rs, fs, ms, bk, grid_row, count, total in rows:
            # GROUPING(b) is 1 on the rows of the (r, f, m) set, where b is not a grouping column.
            into = grid.setdefault((rs, fs, ms), [0, Decimal(0)]) if grid_row else buckets.setdefault(bk, [0, Decimal(0)])
            into[0] += count
            into[1] += Decimal(total or 0)
    return ([(*key, c, t) for key, (c, t) in grid.items()],
            [(bk, c, t) for bk, (c, t) in sorted(buckets.items(), key=lambda x: -x[0])])


def _in_parts(query_where) -> list[list]:
    """The rows of query_where(part) for envoi.parallel.parts() parts of the contacts, counted at once
    (PostgreSQL), to be added up. Every part walks the whole index or table and aggregates the contacts
    whose id is k modulo n: even parts whatever the ids' spread (ranges of ids are not).
    Aggregates hashed: the planner cannot count the groups of these expressions (a few hundred at most)
    and would sort the rows for a grouping set unless the hash tables may be this large. No workers of
    its own per part: the parts are the parallelism, and the planner's guesses for a modulo are wild."""
    n = parallel.parts()

    def part(conn, k: int) -> list:
        return conn.execute(query_where(Contact.id % n == k if n > 1 else sa.true())).all()

    return parallel.on_connections(part, range(n), ("SET LOCAL work_mem = '256MB'",
                                                    "SET LOCAL max_parallel_workers_per_gather = 0"))


def rfm_grid(b: rfm.Boundaries | None = None, rows: list[tuple] | None = None) -> dict:
    """Customers and revenue per RFM score triple and per group (groups of segments/rfm.py).
    `rows`: (r, f, m, customers, revenue) already counted (_one_pass)."""
    b = b or rfm.boundaries()
    rows = _grid_rows(b) if rows is None else rows
    cells, groups = [], {name: {"customers": 0, "revenue": Decimal(0)} for name in rfm.GROUPS}
    for rs, fs, ms, n, total in rows:
        group = rfm.group_of(int(rs), int(fs), int(ms))
        cells.append({"recency": int(rs), "frequency": int(fs), "monetary": int(ms), "customers": n,
                      "revenue": _money(total), "group": group})
        groups[group]["customers"] += n
        groups[group]["revenue"] += Decimal(total or 0)
    cells.sort(key=lambda c: (c["recency"], c["frequency"], c["monetary"]))
    return {"customers": b.m, "cells": cells,
            "groups": [{"group": g, "customers": v["customers"], "revenue": _money(v["revenue"])}
                       for g, v in groups.items()]}


def pareto(buckets: list[tuple] | None = None) -> dict:
    """ABC classes over the customers ranked by lifetime revenue: A up to 80 %, B to 95 %, C the rest.
    A customer is in the class where its revenue starts (the one who crosses 80 % is in A).

    No running sum over every customer: their count and revenue per one-unit bucket of revenue
    (purchase_total cast to an integer) in one aggregate, the buckets walked from the top to find the (at most
    two) where 80 % and 95 % are crossed, and only the customers of those ranked one by one.
    `buckets`: (bucket, customers, revenue), the highest first, already counted (_one_pass)."""
    buckets = _bucket_rows() if buckets is None else buckets
    customers = sum(n for _, n, _ in buckets)
    revenue = sum((Decimal(t) for _, _, t in buckets), Decimal(0))
    a_until, b_until = revenue * Decimal("0.80"), revenue * Decimal("0.95")
    classes = {k: {"customers": 0, "revenue": Decimal(0)} for k in "ABC"}
    before = Decimal(0)
    for b, n, t in buckets:
        t = Decimal(t)
        # Each customer of the bucket starts somewhere in [before, before + t): a whole class, or split.
        whole = ("A" if before + t < a_until else "B" if before >= a_until and before + t < b_until
                 else "C" if before >= b_until else None)
        if whole:
            classes[whole]["customers"] += n
            classes[whole]["revenue"] += t
        else:
            for k, (m, r) in _split_bucket(int(b), before, a_until, b_until).items():
                classes[k]["customers"] += m
                classes[k]["revenue"] += r
        before += t
    return {"customers": customers, "revenue": _money(revenue),
            "customers_for_80_percent": classes["A"]["customers"],
            "share_for_80_percent": ratio(classes["A"]["customers"], customers),
            "classes": [{"class": k, "customers": v["customers"], "revenue": _money(v["revenue"]),
                         "share_of_customers": ratio(v["customers"], customers),
                         "share_of_revenue": ratio(float(v["revenue"]), float(revenue))} for k, v in classes.items()]}


def _bucket():
    # Any non-decreasing function of the revenue will do: PostgreSQL rounds, SQLite truncates, both
    # keep every value within 1 of its bucket. The integer cast is the cheapest (floor() of a numeric is not).
    return sa.cast(Contact.purchase_total, sa.Integer)


def _split_bucket(b: int, prior: Decimal, a_until: Decimal, b_until: Decimal) -> dict:
    """Classes of the customers of bucket `b`, ranked, `prior` being the revenue of all above."""
    total_col = Contact.purchase_total
    # ROWS frame: a running sum row by row (the default RANGE frame compares peers).
    running = sa.func.sum(total_col).over(order_by=(total_col.desc(), Contact.id), rows=(None, -1))
    ranked = (sa.select(total_col.label("revenue"),
                        (sa.literal(prior, total_col.type) + sa.func.coalesce(running, 0)).label("before"))
              .where(rfm.customer(), total_col > b - 1, total_col < b + 1, _bucket() == b).subquery())
    a_lit, b_lit = (sa.literal(v, total_col.type) for v in (a_until, b_until))
    klass = sa.case((ranked.c.before < a_lit, "A"), (ranked.c.before < b_lit, "B"), else_="C").label("k")
    rows = db.session.execute(sa.select(klass, sa.func.count(), sa.func.sum(ranked.c.revenue))
                              .group_by(sa.text("k"))).all()
    return {k: (n, Decimal(t or 0)) for k, n, t in rows}


def small_with_potential(limit: int = 20, b: rfm.Boundaries | None = None, grid: dict | None = None) -> dict:
    """Low spend (monetary score <= 2) but recent (recency >= 4) and frequent (frequency >= 3): how many,
    what they spent, the most frequent of them, and the segment rule that selects them all.
    `grid`: the RFM grid on the same boundaries, whose cells already hold how many and what they spent."""
    b = b or rfm.boundaries()
    where = rfm.condition(b, SMALL_WITH_POTENTIAL)
    if grid is None:
        n, total = db.session.execute(sa.select(sa.func.count(), sa.func.sum(Contact.purchase_total))
                                      .where(where)).one()
    else:
        cells = [c for c in grid["cells"] if c["monetary"] <= 2 and c["recency"] >= 4 and c["frequency"] >= 3]
        n, total = sum(c["customers"] for c in cells), sum((Decimal(c["revenue"]) for c in cells), Decimal(0))
    return {"customers": n, "revenue": _money(total), "rule": {"rfm": SMALL_WITH_POTENTIAL},
            "top": _top_customers(where, limit)}


def _top_customers(where, limit: int) -> list[dict]:
    """The customers matching `where` who buy most often (then most recently), `limit` of them."""
    rows = db.session.execute(sa.select(Contact.id, Contact.purchase_count, Contact.purchase_total,
                                        Contact.last_purchase_at).where(where)
                              .order_by(Contact.purchase_count.desc(), Contact.last_purchase_at.desc(), Contact.id)
                              .limit(limit)).all()
    return [{"id": i, "purchase_count": c, "purchase_total": _money(t),
             "last_purchase_at": at.isoformat() if at else None} for i, c, t, at in rows]


# ---------------------------------------------------------------- portfolio: lookalikes of the big customers

LOOKALIKE_FIELDS = ("sector", "headcount", "age", "gender", "city", "country", "source", "language")
LOOKALIKE_LIFT = 1.2        # a trait: a value at least this much more frequent among big customers than among all
LOOKALIKE_MIN_SHARE = 0.05  # ... held by at least this share of the big customers (and by MIN_BIG of them)
LOOKALIKE_MIN_BIG = 5
HEADCOUNT_BANDS = ((None, 9, "1-9"), (10, 49, "10-49"), (50, 249, "50-249"), (250, None, "250+"))
AGE_BANDS = ((None, 25, "under 25"), (25, 35, "25-34"), (35, 50, "35-49"), (50, 65, "50-64"), (65, None, "65+"))


def _years_ago(today, years: int):
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


def _trait_columns(today) -> dict:
    """The segment fields a big customer's profile is read on, as SQL values (bands for numbers and ages)."""
    headcount = sa.case(*[(Contact.headcount <= hi, label) for lo, hi, label in HEADCOUNT_BANDS if hi is not None],
                        else_=HEADCOUNT_BANDS[-1][2])
    age = sa.case(*[(Contact.birth_date > _years_ago(today, hi), label) for lo, hi, label in AGE_BANDS
                    if hi is not None], else_=AGE_BANDS[-1][2])
    return {"sector": Contact.sector, "headcount": sa.case((Contact.headcount.is_(None), None), else_=headcount),
            "age": sa.case((Contact.birth_date.is_(None), None), else_=age), "gender": Contact.gender,
            "city": Contact.city, "country": Contact.country, "source": Contact.source, "language": Contact.language}


def _trait_rule(field: str, values: list, today) -> dict:
    """The segment rule (segments/rules.py grammar) selecting the contacts with one of `values` of `field`."""
    if field == "headcount":
        parts = []
        for lo, hi, label in HEADCOUNT_BANDS:
            if label in values:
                parts.append({"field": "headcount", "op": "lte", "value": hi} if lo is None else
                             {"field": "headcount", "op": "gte", "value": lo} if hi is None else
                             {"field": "headcount", "op": "between", "value": [lo, hi]})
        return parts[0] if len(parts) == 1 else {"any": parts}
    if field == "age":
        parts = []
        for lo, hi, label in AGE_BANDS:
            if label in values:
                born = [{"field": "birth_date", "op": "lte", "value": _years_ago(today, lo).isoformat()}] if lo else []
                if hi is not None:
                    born.append({"field": "birth_date", "op": "gt", "value": _years_ago(today, hi).isoformat()})
                else:
                    born.append({"field": "birth_date", "op": "is_set"})
                parts.append(born[0] if len(born) == 1 else {"all": born})
        return parts[0] if len(parts) == 1 else {"any": parts}
    return {"field": field, "op": "in", "value": sorted(values)}


def _trait_counts(columns: dict, big) -> dict[str, list[tuple]]:
    """Per field: (value, customers, big customers) over the customers, in one pass on PostgreSQL."""
    if dialect() != "postgresql":
        return {name: db.session.execute(sa.select(col.label("v"), sa.func.count(), sa.func.count().filter(big))
                                         .where(rfm.customer()).group_by(sa.text("v"))).all()
                for name, col in columns.items()}

    def query(where):
        inner = sa.select(*[col.label(name) for name, col in columns.items()], big.label("big")).where(
            rfm.customer(), where).subquery()
        cols = [inner.c[name] for name in columns]
        return (sa.select(*cols, *[sa.func.grouping(c) for c in cols], sa.func.count(),
                          sa.func.count().filter(inner.c.big))
                .group_by(sa.func.grouping_sets(*[sa.tuple_(c) for c in cols])))

    names, n = list(columns), len(columns)
    sums: dict[tuple, list] = {}
    for rows in _in_parts(query):
        for row in rows:
            # GROUPING(x) is 0 only in the set grouped by x.
            i = next(i for i in range(n) if row[n + i] == 0)
            into = sums.setdefault((names[i], row[i]), [0, 0])
            into[0] += row[2 * n]
            into[1] += row[2 * n + 1]
    out: dict[str, list[tuple]] = {name: [] for name in columns}
    for (name, value), (count, big_count) in sums.items():
        out[name].append((value, count, big_count))
    return out


def lookalikes(limit: int = 20, b: rfm.Boundaries | None = None, today=None) -> dict:
    """Small customers (monetary score <= 2) who look like the big ones (monetary score 5) in the segment
    sense: the profile of the big customers is the values of segment fields (sector, headcount band, age
    band, gender, city, country, source, language) over-represented among them (lift >= LOOKALIKE_LIFT,
    held by at least LOOKALIKE_MIN_SHARE of them); a lookalike has the profile's value on at least two of
    its fields (on its one field if it has one). Answered with the segment rule that selects them, which
    is also what counts them."""
    from segments.services import segment_query

    tune_for_report()
    b = b or rfm.boundaries()
    today = today or utcnow().date()
    big = rfm.condition(b, {"monetary": {"op": "eq", "value": 5}})
    counts = _trait_counts(_trait_columns(today), big)
    customers = b.m
    n_big = sum(big_n for _, _, big_n in next(iter(counts.values()))) if counts else 0
    traits = []
    for field in LOOKALIKE_FIELDS:
        chosen = []
        for value, n, big_n in counts.get(field, []):
            if value is None or not n_big or not customers:
                continue
            share_big, share_all = big_n / n_big, n / customers
            if big_n >= LOOKALIKE_MIN_BIG and share_big >= LOOKALIKE_MIN_SHARE and share_big >= LOOKALIKE_LIFT * share_all:
                chosen.append({"value": value, "customers": n, "big_customers": big_n, "share_of_big": round(share_big, 4),
                               "share_of_customers": round(share_all, 4), "lift": round(share_big / share_all, 2)})
        if chosen:
            chosen.sort(key=lambda t: (-t["lift"], str(t["value"])))
            traits.append({"field": field, "values": chosen,
                           "rule": _trait_rule(field, [t["value"] for t in chosen], today)})
    answer = {"big_customers": n_big, "customers": 0, "revenue": _money(0), "profile": traits, "rule": None, "top": []}
    if not traits:
        return answer
    parts = [t["rule"] for t in traits]
    match = parts[0] if len(parts) == 1 else {"any": [{"all": [parts[i], parts[j]]} for i in range(len(parts))
                                                      for j in range(i + 1, len(parts))]}
    rule = {"all": [{"rfm": {"monetary": {"op": "lte", "value": 2}}}, match]}
    members = Contact.id.in_(segment_query(rule))
    n, total = db.session.execute(sa.select(sa.func.count(), sa.func.sum(Contact.purchase_total))
                                  .where(members)).one()
    return {**answer, "customers": n, "revenue": _money(total), "rule": rule,
            "top": _top_customers(members, limit)}


def portfolio_report() -> dict:
    tune_for_report()
    b = rfm.boundaries()  # read once: the grid and the potential rule share the quintile edges
    b.read_all()
    cells, buckets = _one_pass(b)
    grid = rfm_grid(b, cells)
    return {"rfm": grid, "pareto": pareto(buckets), "small_with_potential": small_with_potential(b=b, grid=grid)}


# ---------------------------------------------------------------- audience

def _month(col):
    if dialect() == "postgresql":
        return sa.func.to_char(col, "YYYY-MM")
    return sa.func.strftime("%Y-%m", col)


def _range(col, start, end) -> list:
    return [c for c in ((col >= start) if start else None, (col < end) if end else None) if c is not None]


def subscriber_growth(start: datetime | None = None, end: datetime | None = None) -> dict:
    """Per channel and month: consents granted, withdrawn, net; and today's confirmed subscribers."""
    month = _month(CE.c.recorded_at).label("month")
    rows = db.session.execute(
        sa.select(CE.c.channel, month, sa.func.count().filter(CE.c.kind == "granted"),
                  sa.func.count().filter(CE.c.kind == "withdrawn"))
        .where(CE.c.topic_id.is_(None), CE.c.kind.in_(("granted", "withdrawn")),
               *_range(CE.c.recorded_at, start, end))
        .group_by(CE.c.channel, sa.text("month")).order_by(CE.c.channel, sa.text("month"))).all()
    current = db.session.execute(sa.select(
        sa.func.count().filter(Contact.email_status == "confirmed"),
        sa.func.count().filter(Contact.sms_status == "confirmed")).where(Contact.erased_at.is_(None))).one()
    return {"from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
            "subscribers": {"email": current[0], "sms": current[1]},
            "months": [{"channel": ch, "month": mo, "subscribed": g, "unsubscribed": w, "net": g - w}
                       for ch, mo, g, w in rows]}


def optin_funnel(start: datetime | None = None, end: datetime | None = None) -> dict:
    """Form views, signups (consent requested) and confirmations (consent granted), by form and by source.
    Hosted forms record their source as "form:<slug>": that is the form; the source of the others
    is what the import, the API or the SMS keyword said (and "form" for all forms together).
    Views are counted per UTC day (see form_views): a day is in [start, end) when it begins in it.
    A form's views are filed under its slug today, its signups under the slug they were made on."""
    from_form = CE.c.source.like("form:%")
    form = sa.case((from_form, sa.func.substr(CE.c.source, 6)), else_=None)
    source = sa.case((from_form, "form"), else_=CE.c.source)
    base = [CE.c.kind.in_(("requested", "granted")), CE.c.topic_id.is_(None), *_range(CE.c.recorded_at, start, end)]

    # One pass: counts per (form, source) pair, a few rows, added up here per form, per source and in all.
    # Grouped by aliases no column has (GROUP BY source would mean the column).
    pairs = db.session.execute(
        sa.select(sa.func.coalesce(form, "").label("form_key"), sa.func.coalesce(source, "").label("source_key"),
                  sa.func.count().filter(CE.c.kind == "requested"), sa.func.count().filter(CE.c.kind == "granted"))
        .where(*base).group_by(sa.text("form_key"), sa.text("source_key"))).all()

    def by(position: int, name: str) -> list[dict]:
        sums: dict[str, list[int]] = {}
        for row in pairs:
            into = sums.setdefault(row[position], [0, 0])
            into[0] += row[2]
            into[1] += row[3]
        return [{name: key or None, "signups": s, "confirmations": c, "confirmation_rate": ratio(c, s)}
                for key, (s, c) in sorted(sums.items())]

    signups, confirmations = sum(r[2] for r in pairs), sum(r[3] for r in pairs)
    views = _view_counts(start, end)
    by_form = {r["form"]: r for r in by(0, "form") if r["form"]}
    for slug in views["by_form"].keys() - by_form.keys():
        by_form[slug] = {"form": slug, "signups": 0, "confirmations": 0, "confirmation_rate": None}
    for slug, row in by_form.items():
        seen = views["by_form"].get(slug, {})
        row["views"] = sum(seen.values())
        row.update({f"views_{s}": seen.get(s, 0) for s in VIEW_SOURCES})
        row["signup_rate"] = ratio(row["signups"], row["views"])
    form_signups = sum(r["signups"] for r in by_form.values())
    return {"from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
            "signups": signups, "confirmations": confirmations, "confirmation_rate": ratio(confirmations, signups),
            "views": views["total"], "form_signups": form_signups, "signup_rate": ratio(form_signups, views["total"]),
            "by_form": [by_form[k] for k in sorted(by_form)], "by_source": by(1, "source"),
            "views_by_source": [{"source": s, "views": views["by_source"].get(s, 0)} for s in VIEW_SOURCES],
            "views_by_day": views["by_day"], "views_by_form_day": views["by_form_day"]}


def _day_on_or_after(moment: datetime) -> date | None:
    """The first UTC day that begins at or after `moment` (None past the calendar's end)."""
    moment = moment.astimezone(timezone.utc)
    day = moment.date()
    if moment == datetime.combine(day, time(), tzinfo=timezone.utc):
        return day
    try:
        return day + timedelta(days=1)
    except OverflowError:
        return None


def _view_counts(start: datetime | None = None, end: datetime | None = None) -> dict:
    """The form view counters over the days that begin in [start, end): total, per form (slug) and
    source, per day, per day and form. Three aggregates."""
    days = []
    if start is not None:
        first = _day_on_or_after(start)
        days.append(FV.c.day >= first if first is not None else sa.false())
    if end is not None and (last := _day_on_or_after(end)) is not None:
        days.append(FV.c.day < last)
    views = sa.func.sum(FV.c.views)
    joined = FV.join(Form.__table__, Form.__table__.c.id == FV.c.form_id)
    slug = Form.__table__.c.slug
    per_form: dict = {}
    by_source: dict = {}
    for name, src, n in db.session.execute(sa.select(slug, FV.c.source, views).select_from(joined).where(*days)
                                           .group_by(slug, FV.c.source)):
        per_form.setdefault(name, {})[src] = int(n)
        by_source[src] = by_source.get(src, 0) + int(n)
    by_day = db.session.execute(sa.select(FV.c.day, views).where(*days).group_by(FV.c.day).order_by(FV.c.day)).all()
    by_form_day = db.session.execute(sa.select(FV.c.day, slug, views).select_from(joined).where(*days)
                                     .group_by(FV.c.day, slug).order_by(FV.c.day, slug)).all()
    return {"total": sum(by_source.values()), "by_form": per_form, "by_source": by_source,
            "by_day": [{"day": d.isoformat(), "views": int(n)} for d, n in by_day],
            "by_form_day": [{"day": d.isoformat(), "form": f, "views": int(n)} for d, f, n in by_form_day]}


def unsubscribe_reasons(start: datetime | None = None, end: datetime | None = None) -> dict:
    """Withdrawn consents per channel and method (link, preferences, sms_keyword, ...) and reason if given."""
    reason = sa.func.coalesce(CE.c.data["reason"].as_string(), "").label("reason")
    rows = db.session.execute(
        sa.select(CE.c.channel, CE.c.method, reason, sa.func.count())
        .where(CE.c.kind == "withdrawn", CE.c.topic_id.is_(None), *_range(CE.c.recorded_at, start, end))
        .group_by(CE.c.channel, CE.c.method, sa.text("reason"))
        .order_by(sa.func.count().desc(), CE.c.channel, CE.c.method)).all()
    return {"from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
            "total": sum(r[3] for r in rows),
            "reasons": [{"channel": ch, "method": me, "reason": re or None, "count": n} for ch, me, re, n in rows]}


def data_freshness(now: datetime | None = None, days: int = STALE_DAYS) -> dict:
    """Share of the (not erased) contacts neither updated nor verified for `days` days: no change to their
    data (updated_at), no consent or status news on either channel (email_status_at, sms_status_at), no
    activity (last_activity_at: a purchase, an open, a click, a signup...). `not_updated` counts the
    first test alone."""
    cutoff = (now or utcnow()) - timedelta(days=days)
    old = Contact.updated_at < cutoff
    unverified = sa.and_(*[sa.or_(col.is_(None), col < cutoff) for col in
                           (Contact.email_status_at, Contact.sms_status_at, Contact.last_activity_at)])
    total, not_updated, stale = db.session.execute(
        sa.select(sa.func.count(), sa.func.count().filter(old), sa.func.count().filter(old, unverified))
        .where(Contact.erased_at.is_(None))).one()
    return {"contacts": total, "stale": stale, "stale_share": ratio(stale, total), "not_updated": not_updated,
            "days": days, "cutoff": cutoff.isoformat(),
            "note": "about 10-12 % of contact data goes stale a year: re-confirm or clean stale contacts"}


def audience_report(start: datetime | None = None, end: datetime | None = None, now: datetime | None = None) -> dict:
    return {"growth": subscriber_growth(start, end), "funnel": optin_funnel(start, end),
            "unsubscribes": unsubscribe_reasons(start, end), "freshness": data_freshness(now)}
