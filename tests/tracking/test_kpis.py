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

    # The whole report (on PostgreSQL the grid and the Pareto buckets in one pass) says the same.
    report = kpis.portfolio_report()
    assert report == {"rfm": grid, "pareto": pareto, "small_with_potential": potential}


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
    assert (fresh["contacts"], fresh["stale"], fresh["stale_share"], fresh["not_updated"]) == (6, 2, 0.3333, 2)
    # Not updated for 400 days but verified since: a consent news 30 days ago, activity 5 days ago.
    contact(7, updated_at=NOW - timedelta(days=400), email_status_at=NOW - timedelta(days=30))
    contact(8, updated_at=NOW - timedelta(days=400), last_activity_at=NOW - timedelta(days=5))
    # ... and one whose news and activity are as old as its data.
    contact(9, updated_at=NOW - timedelta(days=400), sms_status_at=NOW - timedelta(days=390),
            last_activity_at=NOW - timedelta(days=380))
    db.session.commit()
    fresh = kpis.data_freshness(now=NOW)
    assert (fresh["contacts"], fresh["stale"], fresh["stale_share"], fresh["not_updated"]) == (9, 3, 0.3333, 5)


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
    assert kpis.portfolio_report()["pareto"] == got


def test_the_report_in_one_pass_equals_the_grid_and_pareto_counted_apart(app, ctx):
    """Random customers with many ties on every RFM column: the report's single pass (GROUPING SETS
    on PostgreSQL) gives the cells and buckets of the two separate aggregates."""
    import random

    from segments import rfm

    rng = random.Random(86)
    for i in range(300):
        contact(i, purchase_count=rng.randint(1, 6), purchase_total=Decimal(rng.randint(0, 400)) / 4,
                last_purchase_at=NOW - timedelta(days=rng.randint(0, 30)))
    for i in range(300, 320):  # prospects: never counted
        contact(i, purchase_count=0, purchase_total=Decimal(0))
    db.session.commit()
    b = rfm.boundaries()
    b.read_all()
    cells, buckets = kpis._one_pass(b)
    assert sorted(cells) == sorted(kpis._grid_rows(b)) and sum(c[3] for c in cells) == 300
    assert buckets == kpis._bucket_rows() and sum(n for _, n, _ in buckets) == 300
    assert [x[0] for x in buckets] == sorted((x[0] for x in buckets), reverse=True)
    # read_all (three connections at once on PostgreSQL) reads the edges one by one reads.
    fresh = rfm.boundaries()
    assert {(d, s): fresh.edge(d, s) for d in rfm.DIMENSIONS for s in rfm.SCORES[1:]} == b._edges
    report = kpis.portfolio_report()
    assert report["rfm"] == kpis.rfm_grid() and report["pareto"] == kpis.pareto()


LOOKALIKE_TODAY = datetime(2026, 11, 1).date()


def lookalike_customers() -> dict:
    """25 customers, monetary 10..250 (quintiles of five): 21-25 are the big ones (score 5), 1-10 the small
    ones (score <= 2). The big ones are all retail, 250+ staff, born 1985 (35-49 on LOOKALIKE_TODAY), in Paris
    or Lyon; the others mostly industry or services, 10-49 staff, born 2000, in Nice."""
    ids = {}
    for i in range(1, 26):
        big = i >= 21
        sector = "retail" if big or i in (1, 2, 3) else "services" if i >= 11 else "industry"
        headcount = 300 if big or i in (1, 3, 4, 15) else 20
        born = datetime(1985, 5, 1).date() if big or i == 1 else datetime(2000, 1, 1).date()
        city = ("Paris" if i in (21, 22, 23, 2, 5, 11) else "Lyon") if big or i in (2, 5, 11) else "Nice"
        ids[i] = contact(i, purchase_count=1, purchase_total=Decimal(10 * i), last_purchase_at=NOW - timedelta(days=i),
                         sector=sector, headcount=headcount, birth_date=born, city=city, country="FR")
    contact(99, sector="retail", headcount=500)  # a prospect: no customer, no lookalike
    db.session.commit()
    return ids


def test_lookalikes_of_the_big_customers(app, ctx):
    ids = lookalike_customers()
    got = kpis.lookalikes(today=LOOKALIKE_TODAY)
    assert got["big_customers"] == 5
    # retail: 5 of 5 big, 8 of 25 customers (lift 1 / 0.32 = 3.12); 250+ staff: 5 of 5, 9 of 25 (2.78);
    # born 1985 (35-49): 5 of 5, 6 of 25 (4.17). Paris (3 big) and Lyon (2) have too few big customers,
    # FR is everyone's (lift 1), gender, source and language are unknown.
    assert [(t["field"], [(v["value"], v["customers"], v["big_customers"], v["lift"]) for v in t["values"]])
            for t in got["profile"]] == [("sector", [("retail", 8, 5, 3.12)]), ("headcount", [("250+", 9, 5, 2.78)]),
                                         ("age", [("35-49", 6, 5, 4.17)])]
    # Small ones (1-10) with two of the three: 1 (all three) and 3 (retail, 250+); 2 has retail only,
    # 4 has 250+ only.
    assert (got["customers"], got["revenue"]) == (2, "40.00")
    assert [t["id"] for t in got["top"]] == [ids[1], ids[3]]  # as many purchases: the most recent first
    # The rule is a valid segment rule selecting the same people.
    from segments.services import segment_query

    members = set(db.session.scalars(segment_query(got["rule"]).with_only_columns(Contact.id)))
    assert members == {ids[1], ids[3]}


def test_no_lookalikes_when_the_big_customers_look_like_everyone(app, ctx):
    for i in range(1, 26):
        contact(i, purchase_count=1, purchase_total=Decimal(10 * i), last_purchase_at=NOW, sector="retail")
    db.session.commit()
    got = kpis.lookalikes(today=LOOKALIKE_TODAY)
    assert (got["big_customers"], got["profile"], got["customers"], got["rule"], got["top"]) == (5, [], 0, None, [])


def funnel_dataset() -> dict:
    """Three forms; views per day and source; signups and confirmations on two of them."""
    from datetime import date

    from optin import services
    from optin.models import Form

    forms = {}
    for slug in ("newsletter", "promo", "quiet"):
        form = Form(slug=slug, title=slug, fields=["email"], channels=["email"])
        db.session.add(form)
        db.session.flush()
        forms[slug] = form.id
    db.session.commit()
    views = [("newsletter", "2026-01-09", "hosted", 3), ("newsletter", "2026-01-10", "popup", 5),
             ("newsletter", "2026-01-10", "inline", 2), ("promo", "2026-01-12", "hosted", 4),
             ("quiet", "2026-01-10", "popup", 2), ("newsletter", "2026-02-02", "hosted", 1)]
    for slug, day, source, n in views:
        for _ in range(n):
            services.record_view(forms[slug], source, date.fromisoformat(day))
    c = {i: contact(i) for i in range(1, 6)}

    def consent(i, kind, source, when):
        db.session.add(ConsentEvent(contact_id=c[i], channel="email", kind=kind, method="form", source=source,
                                    recorded_at=at(when), data={}))

    for i in (1, 2, 3):
        consent(i, "requested", "form:newsletter", "2026-01-10")
    for i in (1, 2):
        consent(i, "granted", "form:newsletter", "2026-01-11")
    consent(4, "requested", "form:promo", "2026-01-12")
    consent(5, "granted", "salon-2025", "2026-01-13")
    db.session.commit()
    return forms


def test_funnel_views_signups_and_confirmations_by_form(app, ctx):
    funnel_dataset()
    funnel = kpis.optin_funnel()
    # Views: newsletter 3 + 5 + 2 + 1 = 11 (hosted 4, inline 2, popup 5), promo 4, quiet 2: 17.
    # Form signups: newsletter 3, promo 1 -> 4 of 17 views; the import's confirmation is no form's.
    assert {k: funnel[k] for k in ("signups", "confirmations", "confirmation_rate", "views", "form_signups",
                                   "signup_rate")} == {
        "signups": 4, "confirmations": 3, "confirmation_rate": 0.75, "views": 17, "form_signups": 4,
        "signup_rate": 0.2353}
    assert funnel["by_form"] == [
        {"form": "newsletter", "signups": 3, "confirmations": 2, "confirmation_rate": 0.6667, "views": 11,
         "views_hosted": 4, "views_inline": 2, "views_popup": 5, "signup_rate": 0.2727},
        {"form": "promo", "signups": 1, "confirmations": 0, "confirmation_rate": 0.0, "views": 4,
         "views_hosted": 4, "views_inline": 0, "views_popup": 0, "signup_rate": 0.25},
        {"form": "quiet", "signups": 0, "confirmations": 0, "confirmation_rate": None, "views": 2,
         "views_hosted": 0, "views_inline": 0, "views_popup": 2, "signup_rate": 0.0}]
    assert [(r["source"], r["signups"], r["confirmations"]) for r in funnel["by_source"]] == [
        ("form", 4, 2), ("salon-2025", 0, 1)]
    assert funnel["views_by_source"] == [{"source": "hosted", "views": 8}, {"source": "inline", "views": 2},
                                         {"source": "popup", "views": 7}]
    assert funnel["views_by_day"] == [{"day": "2026-01-09", "views": 3}, {"day": "2026-01-10", "views": 9},
                                      {"day": "2026-01-12", "views": 4}, {"day": "2026-02-02", "views": 1}]
    assert [(r["day"], r["form"], r["views"]) for r in funnel["views_by_form_day"]] == [
        ("2026-01-09", "newsletter", 3), ("2026-01-10", "newsletter", 7), ("2026-01-10", "quiet", 2),
        ("2026-01-12", "promo", 4), ("2026-02-02", "newsletter", 1)]

    # January from the 10th: the 9th's and February's views are out; the signups all in.
    january = kpis.optin_funnel(at("2026-01-10"), at("2026-02-01"))
    assert (january["views"], january["form_signups"], january["signup_rate"]) == (13, 4, 0.3077)
    assert [(r["form"], r["views"], r["signups"], r["signup_rate"]) for r in january["by_form"]] == [
        ("newsletter", 7, 3, 0.4286), ("promo", 4, 1, 0.25), ("quiet", 2, 0, 0.0)]
    # Views are per UTC day: a day is in the range when it begins in it (the 10th and the 11th here).
    partial = kpis.optin_funnel(at("2026-01-09 12:00"), at("2026-01-11 06:00"))
    assert (partial["views"], [d["day"] for d in partial["views_by_day"]]) == (9, ["2026-01-10"])
    assert [(r["form"], r["views"], r["signups"], r["confirmations"]) for r in partial["by_form"]] == [
        ("newsletter", 7, 3, 2), ("quiet", 2, 0, 0)]
    # Nothing in the range: no views, no rate.
    empty = kpis.optin_funnel(at("2025-01-01"), at("2025-02-01"))
    assert (empty["views"], empty["signup_rate"], empty["by_form"], empty["views_by_day"]) == (0, None, [], [])
