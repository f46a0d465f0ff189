"""Customer and audience KPIs on small datasets whose answers are worked out by hand."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from contacts import kpis
from contacts.models import ConsentEvent, Contact, Purchase
from envoi.extensions import db

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def contact(i: int, **values) -> int:
    row = Contact(email=f"k{i}@example.org", created_at=NOW, updated_at=values.pop("updated_at", NOW), **values)
    db.session.add(row)
    db.session.flush()
    return row.id


def customers_purchases() -> None:
    purchases = {  # customer: [(when, amount)]
        1: [("2024-06-01", "50"), ("2025-02-01", "100"), ("2025-03-01", "20")],
        2: [("2024-07-01", "30")],                          # last year's customer who did not come back
        3: [("2025-05-05", "200")],                         # new this year
        4: [("2024-05-05", "10"), ("2025-12-31 23:00", "70")],
        5: [("2026-02-01", "999")],                         # after the period
    }
    for i, rows in purchases.items():
        cid = contact(i)
        for when, amount in rows:
            db.session.add(Purchase(contact_id=cid, sku="S", amount=Decimal(amount), currency="EUR",
                                    occurred_at=at(when)))
    db.session.commit()


def test_revenue_per_customer_frequency_and_retention(app, ctx):
    customers_purchases()
    report = kpis.customers_report(at("2025-01-01"), at("2026-01-01"))
    # This year: 1 (120, 2 purchases), 3 (200), 4 (70) -> 390 over 3 customers, 4 purchases.
    # Last year's customers 1, 2, 4; 1 and 4 bought again -> 2/3.
    assert {k: report[k] for k in ("revenue", "customers", "purchases", "revenue_per_customer", "purchase_frequency",
                                   "previous_customers", "retained_customers", "retention")} == {
        "revenue": "390.00", "customers": 3, "purchases": 4, "revenue_per_customer": "130.00",
        "purchase_frequency": 1.3333, "previous_customers": 3, "retained_customers": 2, "retention": 0.6667}
    empty = kpis.customers_report(at("2020-01-01"), at("2020-02-01"))
    assert (empty["customers"], empty["revenue_per_customer"], empty["retention"]) == (0, None, None)


def portfolio_customers() -> dict:
    # (days since last purchase, purchases, total): each one its own quintile on every dimension.
    data = {1: (100, 1, "500"), 2: (50, 2, "300"), 3: (20, 3, "200"), 4: (5, 4, "20"), 5: (1, 5, "30")}
    ids = {}
    for i, (days, count, total) in data.items():
        ids[i] = contact(i, purchase_count=count, purchase_total=Decimal(total),
                         first_purchase_at=NOW - timedelta(days=400), last_purchase_at=NOW - timedelta(days=days))
    contact(9)  # a prospect who never bought: not a customer
    db.session.commit()
    return ids


def test_rfm_grid_pareto_and_small_customers_with_potential(app, ctx):
    ids = portfolio_customers()
    grid = kpis.rfm_grid()
    assert grid["customers"] == 5
    assert [(c["recency"], c["frequency"], c["monetary"], c["customers"], c["revenue"], c["group"])
            for c in grid["cells"]] == [
        (1, 1, 5, 1, "500.00", "lost"), (2, 2, 4, 1, "300.00", "hibernating"), (3, 3, 3, 1, "200.00", "loyal"),
        (4, 4, 1, 1, "20.00", "loyal"), (5, 5, 2, 1, "30.00", "loyal")]
    groups = {g["group"]: (g["customers"], g["revenue"]) for g in grid["groups"]}
    assert groups["loyal"] == (3, "250.00") and groups["lost"] == (1, "500.00") and groups["champions"] == (0, "0.00")

    # Ranked by revenue 500, 300, 200, 30, 20 (1050): the first three make 1000 >= 80 % (840).
    pareto = kpis.pareto()
    assert (pareto["customers"], pareto["revenue"], pareto["customers_for_80_percent"],
            pareto["share_for_80_percent"]) == (5, "1050.00", 3, 0.6)
    assert [(c["class"], c["customers"], c["revenue"]) for c in pareto["classes"]] == [
        ("A", 3, "1000.00"), ("B", 0, "0.00"), ("C", 2, "50.00")]

    # Low spend (m <= 2), recent (r >= 4), frequent (f >= 3): customers 4 and 5.
    potential = kpis.small_with_potential()
    assert (potential["customers"], potential["revenue"]) == (2, "50.00")
    assert [t["id"] for t in potential["top"]] == [ids[5], ids[4]]
    # Its rule is a valid segment rule selecting the same people.
    from segments.services import segment_query

    members = set(db.session.scalars(segment_query(potential["rule"]).with_only_columns(Contact.id)))
    assert members == {ids[4], ids[5]}


def test_pareto_counts_the_customer_who_crosses_80_percent_in_class_a(app, ctx):
    for i, total in enumerate(["500", "200", "100", "100", "50", "50"]):
        contact(i, purchase_count=1, purchase_total=Decimal(total), last_purchase_at=NOW)
    db.session.commit()
    pareto = kpis.pareto()
    # Before each: 0, 500, 700, 800, 900, 950 of 1000: A while < 800, B while < 950, C after.
    assert pareto["customers_for_80_percent"] == 3
    assert [(c["class"], c["customers"], c["revenue"], c["share_of_revenue"]) for c in pareto["classes"]] == [
        ("A", 3, "800.00", 0.8), ("B", 2, "150.00", 0.15), ("C", 1, "50.00", 0.05)]


def test_audience_growth_funnel_unsubscribes_and_freshness(app, ctx):
    c = {i: contact(i, updated_at=NOW - timedelta(days=400 if i in (1, 2) else 10),
                    email_status="confirmed" if i in (2, 3, 5) else "none",
                    sms_status="confirmed" if i == 6 else "none") for i in range(1, 7)}

    def consent(i, channel, kind, method, source, when):
        db.session.add(ConsentEvent(contact_id=c[i], channel=channel, kind=kind, method=method, source=source,
                                    recorded_at=at(when), data={}))

    for i in (1, 2, 3):
        consent(i, "email", "requested", "form", "form:newsletter", "2026-01-10")
    for i in (1, 2):
        consent(i, "email", "granted", "form", "form:newsletter", "2026-01-11")
    consent(4, "email", "requested", "form", "form:promo", "2026-01-12")
    consent(5, "email", "granted", "import", "salon-2025", "2026-02-03")
    consent(1, "email", "withdrawn", "link", "link", "2026-02-20")
    consent(6, "sms", "granted", "sms_keyword", "sms", "2026-01-05")
    consent(6, "sms", "withdrawn", "sms_keyword", "sms", "2026-02-06")
    db.session.commit()

    growth = kpis.subscriber_growth()
    assert growth["subscribers"] == {"email": 3, "sms": 1}
    assert [(m["channel"], m["month"], m["subscribed"], m["unsubscribed"], m["net"]) for m in growth["months"]] == [
        ("email", "2026-01", 2, 0, 2), ("email", "2026-02", 1, 1, 0),
        ("sms", "2026-01", 1, 0, 1), ("sms", "2026-02", 0, 1, -1)]
    assert len(kpis.subscriber_growth(at("2026-02-01"), at("2026-03-01"))["months"]) == 2

    funnel = kpis.optin_funnel()
    assert (funnel["signups"], funnel["confirmations"], funnel["confirmation_rate"]) == (4, 4, 1.0)
    assert [(r["form"], r["signups"], r["confirmations"], r["confirmation_rate"]) for r in funnel["by_form"]] == [
        ("newsletter", 3, 2, 0.6667), ("promo", 1, 0, 0.0)]
    assert [(r["source"], r["signups"], r["confirmations"]) for r in funnel["by_source"]] == [
        ("form", 4, 2), ("salon-2025", 0, 1), ("sms", 0, 1)]

    reasons = kpis.unsubscribe_reasons()
    assert reasons["total"] == 2
    assert sorted((r["channel"], r["method"], r["count"]) for r in reasons["reasons"]) == [
        ("email", "link", 1), ("sms", "sms_keyword", 1)]

    fresh = kpis.data_freshness(now=NOW)
    assert (fresh["contacts"], fresh["stale"], fresh["stale_share"]) == (6, 2, 0.3333)


def test_pareto_by_buckets_equals_ranking_every_customer(app, ctx):
    """Many customers per revenue bucket, ties, halves and zeros: the classes are those of the running
    sum over every customer ranked by revenue (then id), computed here in Python."""
    import random

    rng = random.Random(80)
    totals = [Decimal(rng.choice(["0", "0.50", "1.50", "2.49", "2.50", "10", "10.00", "99.99"])) for _ in range(40)]
    totals += [Decimal(rng.randint(0, 30000)) / 100 for _ in range(160)]
    ids = {}
    for i, total in enumerate(totals):
        ids[i] = contact(i, purchase_count=1, purchase_total=total, last_purchase_at=NOW)
    db.session.commit()
    ranked = sorted(((totals[i], ids[i]) for i in ids), key=lambda t: (-t[0], t[1]))
    revenue = sum(totals)
    expected = {k: [0, Decimal(0)] for k in "ABC"}
    before = Decimal(0)
    for total, _ in ranked:
        k = "A" if before < revenue * Decimal("0.80") else "B" if before < revenue * Decimal("0.95") else "C"
        expected[k][0] += 1
        expected[k][1] += total
        before += total
    got = kpis.pareto()
    assert [(c["class"], c["customers"], c["revenue"]) for c in got["classes"]] == [
        (k, n, f"{r:.2f}") for k, (n, r) in expected.items()]
    assert got["customers_for_80_percent"] == expected["A"][0]
