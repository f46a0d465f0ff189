"""Each operator, field kind and behaviour rule on the real database; validation paths."""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from envoi.errors import ValidationError
from tests.segments.conftest import NOW


def f(field, op, value=None):
    rule = {"field": field, "op": op}
    if value is not None:
        rule["value"] = value
    return rule


@pytest.fixture
def people(seed):
    """Four contacts with distinct values; the last has nothing set."""
    ids = {
        "ann": seed.contact(first_name="Ann", city="Lyon", postal_code="69001", headcount=10,
                            birth_date=date(NOW.year - 30, 1, 1), tags=["vip", "shoes"], language="fr",
                            attributes={"shoe_size": 38, "newsletter_fan": True, "member_since": "2020-05-01",
                                        "tier": "gold"},
                            last_activity_at=NOW - timedelta(days=3), lifecycle="customer",
                            purchase_total=Decimal("120.50")),
        "bob": seed.contact(first_name="Bob", city="Paris", postal_code="75011", headcount=250,
                            birth_date=date(NOW.year - 50, 1, 1), tags=["shoes"], language="en",
                            attributes={"shoe_size": 44.5, "newsletter_fan": False, "tier": "silver"},
                            last_activity_at=NOW - timedelta(days=40), purchase_total=Decimal("9.99")),
        "cat": seed.contact(first_name="Cat", city="lyon 3e", postal_code="69003", headcount=50,
                            tags=["100%_real"], attributes={"tier": "Gold"}),
        "dan": seed.contact(),
    }
    seed.commit()
    return ids


def names(people, ids):
    return {k for k, v in people.items() if v in ids}


@pytest.mark.parametrize("rule, expected", [
    (f("city", "eq", "Lyon"), {"ann"}),
    (f("city", "ne", "Lyon"), {"bob", "cat"}),                     # empty city: not in
    ({"not": f("city", "eq", "Lyon")}, {"bob", "cat", "dan"}),      # exact complement
    (f("city", "in", ["Lyon", "Paris"]), {"ann", "bob"}),
    (f("city", "not_in", ["Lyon"]), {"bob", "cat"}),
    (f("city", "contains", "LYON"), {"ann", "cat"}),                # ignores case
    (f("city", "starts_with", "ly"), {"ann", "cat"}),
    (f("city", "lt", "M"), {"ann"}),                                # code-point order: "lyon 3e" > "M"
    (f("postal_code", "between", ["69000", "69999"]), {"ann", "cat"}),
    (f("postal_code", "gte", "7"), {"bob"}),
    (f("city", "is_set"), {"ann", "bob", "cat"}),
    (f("city", "is_not_set"), {"dan"}),
    (f("headcount", "gt", 10), {"bob", "cat"}),
    (f("headcount", "gte", 10), {"ann", "bob", "cat"}),
    (f("headcount", "lt", 50.5), {"ann", "cat"}),
    (f("headcount", "lte", 50), {"ann", "cat"}),
    (f("headcount", "ne", 50), {"ann", "bob"}),
    (f("headcount", "in", [10, 250]), {"ann", "bob"}),
    (f("headcount", "not_in", [10]), {"bob", "cat"}),
    (f("headcount", "between", [11, 250]), {"bob", "cat"}),
    (f("purchase_total", "gt", 100), {"ann"}),
    (f("purchase_total", "eq", 9.99), {"bob"}),
    (f("age", "eq", 30), {"ann"}),
    (f("age", "gte", 31), {"bob"}),
    (f("age", "between", [20, 40]), {"ann"}),
    (f("age", "lt", 30), set()),
    (f("age", "ne", 30), {"bob"}),
    (f("age", "is_not_set"), {"cat", "dan"}),
    (f("birth_date", "lt", f"{NOW.year - 40}-01-01"), {"bob"}),
    (f("last_activity_at", "within_days", 7), {"ann"}),
    (f("last_activity_at", "older_than_days", 7), {"bob"}),
    (f("last_activity_at", "gte", (NOW - timedelta(days=10)).isoformat()), {"ann"}),
    (f("created_at", "within_days", 1), {"ann", "bob", "cat", "dan"}),
    (f("tags", "contains", "VIP"), {"ann"}),                        # tags are lower-case
    (f("tags", "in", ["vip", "100%_real"]), {"ann", "cat"}),
    (f("tags", "not_in", ["vip"]), {"bob", "cat"}),                 # no tags: not in
    (f("tags", "is_set"), {"ann", "bob", "cat"}),
    (f("tags", "is_not_set"), {"dan"}),
    (f("attributes.shoe_size", "gte", 40), {"bob"}),
    (f("attributes.shoe_size", "eq", 38), {"ann"}),
    (f("attributes.shoe_size", "ne", 38), {"bob"}),
    (f("attributes.newsletter_fan", "eq", True), {"ann"}),
    (f("attributes.newsletter_fan", "eq", False), {"bob"}),
    (f("attributes.newsletter_fan", "is_not_set"), {"cat", "dan"}),
    (f("attributes.member_since", "lt", "2021-01-01"), {"ann"}),
    (f("attributes.member_since", "older_than_days", 30), {"ann"}),
    (f("attributes.tier", "eq", "gold"), {"ann"}),
    (f("attributes.tier", "contains", "GOL"), {"ann", "cat"}),
    (f("lifecycle", "eq", "customer"), {"ann"}),
    (f("language", "in", ["fr", "en"]), {"ann", "bob"}),
    ({"all": [f("city", "contains", "lyon"), f("tags", "contains", "vip")]}, {"ann"}),
    ({"any": [f("city", "eq", "Paris"), f("tags", "contains", "vip")]}, {"ann", "bob"}),
    ({"all": []}, {"ann", "bob", "cat", "dan"}),
    ({"any": []}, set()),
    ({"not": {"any": [f("city", "eq", "Paris"), f("headcount", "gt", 20)]}}, {"ann", "dan"}),
])
def test_field_operators(people, members, rule, expected):
    from contacts.services import define_attribute

    for key, kind in (("shoe_size", "number"), ("newsletter_fan", "boolean"), ("member_since", "date"),
                      ("tier", "string")):
        define_attribute(key, kind)
    assert names(people, members(rule)) == expected


def test_like_wildcards_are_literal(people, members):
    assert names(people, members(f("city", "contains", "%"))) == set()
    assert names(people, members(f("city", "starts_with", "_yon"))) == set()


def test_erased_contacts_are_never_members(seed, members):
    from datetime import datetime, timezone

    kept = seed.contact(city="Lyon")
    seed.contact(city="Lyon", erased_at=datetime.now(timezone.utc))
    seed.commit()
    assert members(f("city", "eq", "Lyon")) == {kept}
    assert members({"all": []}) == {kept}


@pytest.mark.parametrize("rule, fields", [
    ({"all": [f("city", "eq", "Lyon"), f("city", "eq", "Lyon"), f("headcount", "gt", "ten")]},
     {"rules.all[2].value": "expected a number"}),
    (f("nope", "eq", 1), {"rules.field": "unknown field 'nope'"}),
    (f("attributes.nope", "eq", 1), {"rules.field": "unknown attribute 'nope' (declare it with POST /api/v1/attributes)"}),
    (f("city", "within_days", 3), {"rules.op": None}),
    (f("tags", "eq", "x"), {"rules.op": None}),
    (f("city", "in", []), {"rules.value": "expected a non-empty list"}),
    (f("city", "in", ["a", 2]), {"rules.value[1]": "expected a string"}),
    (f("headcount", "between", [5, 1]), {"rules.value": "the low bound is above the high bound"}),
    (f("headcount", "between", [5]), {"rules.value": "expected [low, high]"}),
    (f("headcount", "eq", True), {"rules.value": "expected a number"}),
    (f("headcount", "eq", float("inf")), {"rules.value": "expected a finite number"}),
    (f("birth_date", "eq", "yesterday"), {"rules.value": "expected an ISO date YYYY-MM-DD"}),
    (f("created_at", "gt", "soon"), {"rules.value": "expected an ISO 8601 time"}),
    (f("created_at", "within_days", -1), {"rules.value": None}),
    (f("created_at", "lt", "0001-01-01T00:00:00+01:00"), {"rules.value": "expected an ISO 8601 time"}),
    (f("city", "eq", "Ly\x00on"), {"rules.value": "must not contain NUL characters"}),
    (f("lifecycle", "eq", "vip"), {"rules.value": "expected one of prospect, customer, former"}),
    (f("city", "is_set", "x"), {"rules.value": "is_set takes no value"}),
    ({"field": "city", "op": "eq"}, {"rules.value": "required"}),
    ({"field": "city", "op": "eq", "value": "x", "extra": 1}, {"rules.extra": None}),
    ({"every": []}, {"rules.every": None}),
    ({"all": [], "any": []}, {"rules": None}),
    ({"all": "x"}, {"rules.all": "expected a list of rules"}),
    ({"not": [1]}, {"rules.not": None}),
    ([], {"rules": None}),
    ({"purchases": {"count": {"op": "gte", "value": 1.5}}}, {"rules.purchases.count.value": None}),
    ({"purchases": {"within_days": "x"}}, {"rules.purchases.within_days": None}),
    ({"purchases": {"sku": []}}, {"rules.purchases.sku": None}),
    ({"purchases": {"amount": {"op": "around", "value": 1}}}, {"rules.purchases.amount.op": None}),
    ({"rfm": {"group": "vips"}}, {"rules.rfm.group": None}),
    ({"rfm": {"recency": {"op": "gte", "value": 6}}}, {"rules.rfm.recency.value": "expected a score from 1 to 5"}),
    ({"rfm": {}}, {"rules.rfm": None}),
    ({"engagement": {"kind": "liked"}}, {"rules.engagement.kind": None}),
    ({"engagement": {"kind": "opened", "campaign_id": "x"}}, {"rules.engagement.campaign_id": None}),
    ({"subscription": {"channel": "fax"}}, {"rules.subscription.channel": None}),
    ({"subscription": {"channel": "sms", "status": "bounced"}}, {"rules.subscription.status": None}),
    ({"subscription": {"topic": "nope"}}, {"rules.subscription.topic": "unknown topic 'nope'"}),
    ({"subscription": {"status": "confirmed"}}, {"rules.subscription.channel": "required with status"}),
])
def test_validation_names_the_path(ctx, rule, fields):
    from segments.rules import parse

    with pytest.raises(ValidationError) as err:
        parse(rule)
    assert err.value.status == 422
    for path, reason in fields.items():
        assert path in err.value.fields, err.value.fields
        if reason is not None:
            assert err.value.fields[path] == reason


def test_limits(ctx):
    from segments.rules import MAX_CONDITIONS, MAX_DEPTH, parse

    with pytest.raises(ValidationError) as err:
        parse({"any": [f("city", "eq", str(i)) for i in range(MAX_CONDITIONS + 1)]})
    assert err.value.fields == {f"rules.any[{MAX_CONDITIONS}]": f"at most {MAX_CONDITIONS} conditions in a segment"}
    parse({"any": [f("city", "eq", str(i)) for i in range(MAX_CONDITIONS)]})
    deep = f("city", "eq", "x")
    for _ in range(MAX_DEPTH):
        deep = {"not": deep}
    with pytest.raises(ValidationError) as err:
        parse(deep)
    assert list(err.value.fields.values()) == [f"rules nest at most {MAX_DEPTH} levels deep"]
    with pytest.raises(ValidationError):
        parse(f("city", "in", ["x"] * 1001))


def test_purchases(seed, members):
    a, b, c, d = (seed.contact() for _ in range(4))
    seed.purchase(a, sku="TEE", category="shirts", amount="20", days_ago=10)
    seed.purchase(a, sku="TEE", category="shirts", amount="30", days_ago=400)
    seed.purchase(b, sku="BOOT", category="shoes", amount="150", days_ago=5)
    seed.purchase(c, sku="TEE", category="shirts", amount="5", days_ago=500)
    seed.commit()
    assert members({"purchases": {}}) == {a, b, c}
    assert members({"purchases": {"sku": "TEE"}}) == {a, c}
    assert members({"purchases": {"category": ["shoes", "hats"]}}) == {b}
    assert members({"purchases": {"sku": "TEE", "within_days": 365}}) == {a}
    assert members({"purchases": {"older_than_days": 365}}) == {a, c}
    assert members({"purchases": {"count": {"op": "gte", "value": 2}}}) == {a}
    # No matching purchase counts as 0 and amount 0: "fewer than 2" includes them.
    assert members({"purchases": {"count": {"op": "lt", "value": 2}}}) == {b, c, d}
    assert members({"purchases": {"sku": "TEE", "count": {"op": "eq", "value": 0}}}) == {b, d}
    assert members({"purchases": {"amount": {"op": "gte", "value": 50}}}) == {a, b}
    assert members({"purchases": {"amount": {"op": "between", "value": [1, 49.99]}}}) == {c}
    assert members({"purchases": {"within_days": 365, "amount": {"op": "lt", "value": 100}}}) == {a, c, d}
    assert members({"purchases": {"count": {"op": "gte", "value": 1}, "amount": {"op": "gt", "value": 40}}}) == {a, b}
    assert members({"not": {"purchases": {"sku": "TEE"}}}) == {b, d}


def test_engagement(seed, members):
    a, b, c, d = (seed.contact() for _ in range(4))
    seed.event(a, "sent", campaign_id=1, days_ago=3)
    seed.event(a, "opened", campaign_id=1, days_ago=2)
    seed.event(b, "sent", campaign_id=1, days_ago=3)
    seed.event(b, "opened", campaign_id=1, days_ago=3, is_bot=True)     # prefetch: not an open
    seed.event(c, "sent", campaign_id=2, channel="sms", days_ago=60)
    seed.event(c, "clicked", campaign_id=2, channel="sms", days_ago=60)
    seed.commit()
    assert members({"engagement": {"kind": "sent"}}) == {a, b, c}
    assert members({"engagement": {"kind": "opened"}}) == {a}
    assert members({"engagement": {"kind": "opened", "campaign_id": 1}}) == {a}
    assert members({"engagement": {"kind": "sent", "campaign_id": 1}}) == {a, b}
    assert members({"engagement": {"kind": "clicked", "within_days": 30}}) == set()
    assert members({"engagement": {"kind": "clicked", "older_than_days": 30, "channel": "sms"}}) == {c}
    assert members({"all": [{"engagement": {"kind": "sent", "campaign_id": 1}},
                            {"not": {"engagement": {"kind": "opened", "campaign_id": 1}}}]}) == {b}
    assert members({"not": {"engagement": {"kind": "sent", "within_days": 30}}}) == {c, d}


def test_subscription(seed, members):
    from contacts.services import create_topic
    from contacts.models import ContactTopic

    news = create_topic("newsletter", "Newsletter")
    create_topic("offers", "Offers")
    a = seed.contact(email_status="confirmed")
    b = seed.contact(email_status="unsubscribed", sms_status="confirmed")
    c = seed.contact()
    seed.db.session.add_all([ContactTopic(contact_id=a, topic_id=news.id, subscribed=True, updated_at=NOW),
                             ContactTopic(contact_id=b, topic_id=news.id, subscribed=False, updated_at=NOW)])
    seed.commit()
    assert members({"subscription": {"channel": "email", "status": "confirmed"}}) == {a}
    assert members({"subscription": {"channel": "email"}}) == {a}          # status defaults to confirmed
    assert members({"subscription": {"channel": "sms", "status": "confirmed"}}) == {b}
    assert members({"subscription": {"topic": "newsletter"}}) == {a}      # b unsubscribed from the topic
    assert members({"subscription": {"topic": "offers"}}) == set()
    assert members({"subscription": {"topic": "newsletter", "channel": "email"}}) == {a}
    assert members({"not": {"subscription": {"topic": "newsletter"}}}) == {b, c}


def test_rfm_groups_on_a_hand_computed_dataset(seed, members):
    """Ten customers, two per quintile in each dimension; scores and groups worked out by hand.

    recency (days since last purchase)  c1 100, c2 90 ... c10 10   -> r: c1 c2=1, c3 c4=2 ... c9 c10=5
    frequency (count)  c9 1, c5 2, c1 3, c4 4, c6 5, c2 6, c7 7, c3 8, c10 9, c8 10
    monetary (total)   c9 10, c8 20, c6 30, c5 40, c7 50, c2 60, c4 70, c3 80, c1 90, c10 100

        r f m   group              r f m   group
    c1  1 2 5   lost          c6   3 3 2   loyal
    c2  1 3 3   at_risk       c7   4 4 3   loyal
    c3  2 4 4   at_risk       c8   4 5 1   loyal
    c4  2 2 4   hibernating   c9   5 1 1   new
    c5  3 1 2   promising     c10  5 5 5   champions
    """
    from datetime import datetime, timezone

    counts = {9: 1, 5: 2, 1: 3, 4: 4, 6: 5, 2: 6, 7: 7, 3: 8, 10: 9, 8: 10}
    totals = {9: 10, 8: 20, 6: 30, 5: 40, 7: 50, 2: 60, 4: 70, 3: 80, 1: 90, 10: 100}
    c = {i: seed.contact(purchase_count=counts[i], purchase_total=Decimal(totals[i]),
                         last_purchase_at=NOW - timedelta(days=110 - 10 * i),
                         first_purchase_at=NOW - timedelta(days=1000)) for i in range(1, 11)}
    never = seed.contact()  # never bought: no scores, in no group
    # Erased customers are outside the population; counted, it would shift every quintile.
    seed.contact(purchase_count=100, purchase_total=Decimal(1000), last_purchase_at=NOW,
                 erased_at=datetime.now(timezone.utc))
    seed.commit()

    def group(name):
        return {k for k, v in c.items() if v in members({"rfm": {"group": name}})}

    assert group("champions") == {10}
    assert group("loyal") == {6, 7, 8}
    assert group("new") == {9}
    assert group("promising") == {5}
    assert group("at_risk") == {2, 3}
    assert group("hibernating") == {4}
    assert group("lost") == {1}
    assert group("cannot_lose") == set()
    got = members({"rfm": {"group": ["champions", "lost"]}})
    assert got == {c[10], c[1]}

    def scored(rule):
        return {k for k, v in c.items() if v in members({"rfm": rule})}

    assert scored({"recency": {"op": "gte", "value": 4}}) == {7, 8, 9, 10}
    assert scored({"monetary": {"op": "eq", "value": 5}}) == {1, 10}
    assert scored({"frequency": {"op": "between", "value": [2, 3]}}) == {1, 4, 6, 2}
    assert scored({"frequency": {"op": "in", "value": [1, 5]}}) == {9, 5, 10, 8}
    assert scored({"recency": {"op": "lte", "value": 2}, "monetary": {"op": "gte", "value": 4}}) == {1, 3, 4}
    assert scored({"group": "loyal", "monetary": {"op": "ne", "value": 1}}) == {6, 7}
    assert members({"not": {"rfm": {"group": "champions"}}}) == set(c.values()) - {c[10]} | {never}


def test_rfm_with_fewer_customers_than_quintiles(seed, members):
    a = seed.contact(purchase_count=1, purchase_total=Decimal(5), last_purchase_at=NOW - timedelta(days=9))
    b = seed.contact(purchase_count=3, purchase_total=Decimal(50), last_purchase_at=NOW - timedelta(days=1))
    seed.commit()
    # NTILE(5) over two rows: scores 1 and 2 only.
    assert members({"rfm": {"recency": {"op": "eq", "value": 2}}}) == {b}
    assert members({"rfm": {"recency": {"op": "eq", "value": 1}}}) == {a}
    assert members({"rfm": {"recency": {"op": "gte", "value": 3}}}) == set()
    assert members({"rfm": {"group": "lost"}}) == {a}


def test_rfm_without_customers(seed, members):
    seed.contact()
    seed.commit()
    assert members({"rfm": {"group": "champions"}}) == set()
    assert members({"not": {"rfm": {"recency": {"op": "gte", "value": 1}}}}) != set()


def test_rfm_ties_are_broken_by_id(seed, members):
    """Equal values: NTILE over (value, id), so the older contact gets the lower score."""
    ids = [seed.contact(purchase_count=2, purchase_total=Decimal(10), last_purchase_at=NOW - timedelta(days=1))
           for _ in range(5)]
    seed.commit()
    for score, cid in enumerate(ids, 1):
        assert members({"rfm": {"frequency": {"op": "eq", "value": score}}}) == {cid}
        assert members({"rfm": {"monetary": {"op": "eq", "value": score}}}) == {cid}
