"""Property: for random rule trees over random contacts, purchases and message events, the SQL
the compiler builds selects exactly the contacts a plain-Python reading of the rule selects.

The evaluator below is written from the rule documentation (DESIGN.md, segments/rules.py and
segments/rfm.py docstrings), not from the compiler. It runs on SQLite by default and on
PostgreSQL with ENVOI_TEST_DATABASE_URL set. Amounts are multiples of 0.25 so that sums are
exact on SQLite (which adds decimals as binary floats); strings are ASCII (SQLite's lower()).
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
TODAY = NOW.date()

CITIES = ["Lyon", "lyon", "Paris", "Nice", "LYON 3e"]
CITY_VALUES = CITIES + ["L", "ly", "P", "n", "3E"]
TAGS = ["vip", "new", "shoes"]
TIERS = ["gold", "Gold", "silver"]
STATUSES = ["none", "pending", "confirmed", "unsubscribed"]
SKUS, CATEGORIES = ["A", "B", "C"], ["x", "y"]
KINDS = ["sent", "opened", "clicked"]
GROUPS = ["champions", "loyal", "new", "promising", "cannot_lose", "at_risk", "hibernating", "lost"]

quarter = st.integers(0, 800).map(lambda n: Decimal(n) / 4)
days = st.integers(0, 900)
moment = st.builds(lambda d, h: NOW - timedelta(days=d, hours=h), days, st.integers(0, 23))
birth = st.dates(date(1930, 1, 1), TODAY)

# --- random data ------------------------------------------------------------------------------

purchase_st = st.fixed_dictionaries({"sku": st.sampled_from(SKUS), "category": st.sampled_from(CATEGORIES),
                                     "amount": quarter.filter(lambda a: a > 0), "occurred_at": moment})
event_st = st.fixed_dictionaries({"kind": st.sampled_from(KINDS), "campaign_id": st.sampled_from([None, 1, 2]),
                                  "is_bot": st.booleans(), "occurred_at": moment})
attributes_st = st.fixed_dictionaries({}, optional={
    "size": st.one_of(st.integers(30, 48), st.sampled_from([38.5, 41.5])),
    "tier": st.sampled_from(TIERS), "fan": st.booleans(),
    "since": st.dates(date(2015, 1, 1), TODAY).map(date.isoformat)})
contact_st = st.fixed_dictionaries({
    "city": st.one_of(st.none(), st.sampled_from(CITIES)),
    "headcount": st.one_of(st.none(), st.integers(0, 300)),
    "birth_date": st.one_of(st.none(), birth),
    "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=3).map(sorted),
    "attributes": attributes_st,
    "email_status": st.sampled_from(STATUSES),
    "last_activity_at": st.one_of(st.none(), moment),
    "erased": st.sampled_from([False, False, False, True]),
    "purchases": st.lists(purchase_st, max_size=3),
    "events": st.lists(event_st, max_size=2),
})
dataset_st = st.lists(contact_st, min_size=4, max_size=12)

# --- random rules -----------------------------------------------------------------------------

FIELDS = {
    "city": ("string", st.sampled_from(CITY_VALUES)),
    "email_status": ("string", st.sampled_from(STATUSES)),
    "headcount": ("number", st.one_of(st.integers(-1, 301), st.sampled_from([49.5, 150.5]))),
    "purchase_total": ("number", quarter.map(float)),
    "purchase_count": ("number", st.integers(0, 4)),
    "age": ("number", st.integers(0, 100)),
    "birth_date": ("date", birth.map(date.isoformat)),
    "last_activity_at": ("datetime", moment.map(datetime.isoformat)),
    "last_purchase_at": ("datetime", moment.map(datetime.isoformat)),
    "tags": ("list", st.sampled_from(TAGS)),
    "attributes.size": ("number", st.one_of(st.integers(30, 48), st.just(38.5))),
    "attributes.tier": ("string", st.sampled_from(TIERS + ["g", "SIL"])),
    "attributes.fan": ("boolean", st.booleans()),
    "attributes.since": ("date", st.dates(date(2015, 1, 1), TODAY).map(date.isoformat)),
}
OPS = {
    "string": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "starts_with", "between",
               "is_set", "is_not_set"],
    "number": ["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between", "is_set", "is_not_set"],
    "date": ["eq", "ne", "lt", "lte", "gt", "gte", "between", "is_set", "is_not_set", "within_days",
             "older_than_days"],
    "datetime": ["lt", "lte", "gt", "gte", "between", "is_set", "is_not_set", "within_days", "older_than_days"],
    "boolean": ["eq", "ne", "is_set", "is_not_set"],
    "list": ["contains", "in", "not_in", "is_set", "is_not_set"],
}


@st.composite
def field_rule(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    kind, values = FIELDS[name]
    op = draw(st.sampled_from(OPS[kind]))
    rule = {"field": name, "op": op}
    if op in ("within_days", "older_than_days"):
        rule["value"] = draw(st.integers(0, 3000) if kind == "date" else days)
    elif op in ("in", "not_in"):
        rule["value"] = draw(st.lists(values, min_size=1, max_size=3))
    elif op == "between":
        pair = sorted(draw(st.lists(values, min_size=2, max_size=2)),
                      key=lambda v: datetime.fromisoformat(v) if kind == "datetime" else v)
        rule["value"] = pair
    elif op not in ("is_set", "is_not_set"):
        rule["value"] = draw(values)
    return rule


def comparison(values, ops=("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between")):
    @st.composite
    def build(draw):
        op = draw(st.sampled_from(ops))
        if op in ("in", "not_in"):
            return {"op": op, "value": draw(st.lists(values, min_size=1, max_size=3))}
        if op == "between":
            return {"op": op, "value": sorted(draw(st.lists(values, min_size=2, max_size=2)))}
        return {"op": op, "value": draw(values)}

    return build()


purchases_rule = st.fixed_dictionaries({}, optional={
    "sku": st.one_of(st.sampled_from(SKUS), st.lists(st.sampled_from(SKUS), min_size=1, max_size=2)),
    "category": st.sampled_from(CATEGORIES),
    "within_days": days, "older_than_days": days,
    "count": comparison(st.integers(0, 3)),
    "amount": comparison(quarter.map(float)),
}).map(lambda d: {"purchases": d})
score = st.integers(1, 5)
rfm_rule = st.one_of(
    st.one_of(st.sampled_from(GROUPS), st.lists(st.sampled_from(GROUPS), min_size=1, max_size=3)).map(
        lambda g: {"rfm": {"group": g}}),
    st.fixed_dictionaries({}, optional={"recency": comparison(score), "frequency": comparison(score),
                                        "monetary": comparison(score)}).filter(bool).map(lambda d: {"rfm": d}),
)
engagement_rule = st.fixed_dictionaries({"kind": st.sampled_from(KINDS)}, optional={
    "campaign_id": st.sampled_from([1, 2]), "within_days": days, "older_than_days": days}).map(
    lambda d: {"engagement": d})
subscription_rule = st.sampled_from(STATUSES).map(lambda s: {"subscription": {"channel": "email", "status": s}})

leaf = st.one_of(field_rule(), field_rule(), purchases_rule, rfm_rule, engagement_rule, subscription_rule)
rules_st = st.recursive(leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3).map(lambda rs: {"all": rs}),
    st.lists(inner, max_size=3).map(lambda rs: {"any": rs}),
    inner.map(lambda r: {"not": r})), max_leaves=8)

# --- the plain-Python reading of a rule ---------------------------------------------------------


def age(born: date) -> int:
    return TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))


def compare(x, op, v) -> bool:
    if op == "eq":
        return x == v
    if op == "ne":
        return x != v
    if op == "lt":
        return x < v
    if op == "lte":
        return x <= v
    if op == "gt":
        return x > v
    if op == "gte":
        return x >= v
    if op == "in":
        return x in v
    if op == "not_in":
        return x not in v
    if op == "between":
        return v[0] <= x <= v[1]
    raise AssertionError(op)


def field_value(c: dict, name: str):
    if name == "age":
        return age(c["birth_date"]) if c["birth_date"] else None
    if name.startswith("attributes."):
        return c["attributes"].get(name.split(".", 1)[1])
    return c[name]


def typed(kind: str, name: str, v):
    """The rule's value in the type the contact's value has."""
    if isinstance(v, list):
        return [typed(kind, name, x) for x in v]
    if kind == "number":
        return Decimal(str(v))
    if kind == "date":
        return date.fromisoformat(v)
    if kind == "datetime":
        return datetime.fromisoformat(v)
    return v


def eval_field(c: dict, rule: dict) -> bool:
    name, op = rule["field"], rule["op"]
    kind = FIELDS[name][0]
    x = field_value(c, name)
    if kind == "list":
        if op == "is_set":
            return bool(x)
        if op == "is_not_set":
            return not x
        if op == "contains":
            return rule["value"] in x
        if op == "in":
            return any(t in x for t in rule["value"])
        return bool(x) and not any(t in x for t in rule["value"])
    if op == "is_set":
        return x is not None
    if op == "is_not_set":
        return x is None
    if x is None:
        return False  # two-valued logic: an empty field fails every comparison
    if kind == "date" and isinstance(x, str):
        x = date.fromisoformat(x)
    if op in ("within_days", "older_than_days"):
        edge = NOW - timedelta(days=rule["value"])
        edge = edge.date() if kind == "date" else edge
        return x >= edge if op == "within_days" else x < edge
    if op == "contains":
        return rule["value"].lower() in x.lower()
    if op == "starts_with":
        return x.lower().startswith(rule["value"].lower())
    if kind == "number":
        x = Decimal(str(x))
    return compare(x, op, typed(kind, name, rule["value"]))


def rfm_scores(contacts: list[dict]) -> dict[int, tuple[int, int, int]]:
    """NTILE(5) by (value, id) ascending over non-erased contacts who bought."""
    customers = [c for c in contacts if not c["erased"] and c["purchase_count"] > 0]
    m = len(customers)
    q, rem = divmod(m, 5)
    sizes = [q + (1 if k < rem else 0) for k in range(5)]
    bucket_of_position = [k + 1 for k in range(5) for _ in range(sizes[k])]
    out = {c["id"]: [0, 0, 0] for c in customers}
    for i, key in enumerate(("last_purchase_at", "purchase_count", "purchase_total")):
        for pos, c in enumerate(sorted(customers, key=lambda c: (c[key], c["id"]))):
            out[c["id"]][i] = bucket_of_position[pos]
    return {k: tuple(v) for k, v in out.items()}


def group_of(r, f, m) -> str:
    table = [("champions", r >= 4 and f >= 4 and m >= 4), ("loyal", r >= 3 and f >= 3),
             ("new", r >= 4 and f == 1), ("promising", r >= 3 and f <= 2),
             ("cannot_lose", r == 1 and f >= 4 and m >= 4), ("at_risk", r <= 2 and f >= 3),
             ("hibernating", r == 2 and f <= 2), ("lost", r == 1 and f <= 2)]
    return next(name for name, hit in table if hit)


def evaluate(rule: dict, c: dict, scores: dict) -> bool:
    if "all" in rule:
        return all(evaluate(r, c, scores) for r in rule["all"])
    if "any" in rule:
        return any(evaluate(r, c, scores) for r in rule["any"])
    if "not" in rule:
        return not evaluate(rule["not"], c, scores)
    if "field" in rule:
        return eval_field(c, rule)
    if "purchases" in rule:
        p = rule["purchases"]
        skus = p["sku"] if isinstance(p.get("sku"), list) else [p["sku"]] if "sku" in p else None
        hits = [x for x in c["purchases"]
                if (skus is None or x["sku"] in skus)
                and ("category" not in p or x["category"] == p["category"])
                and ("within_days" not in p or x["occurred_at"] >= NOW - timedelta(days=p["within_days"]))
                and ("older_than_days" not in p or x["occurred_at"] < NOW - timedelta(days=p["older_than_days"]))]
        if "count" not in p and "amount" not in p:
            return bool(hits)
        ok = True
        if "count" in p:
            ok &= compare(Decimal(len(hits)), p["count"]["op"], typed("number", "", p["count"]["value"]))
        if "amount" in p:
            total = sum((x["amount"] for x in hits), Decimal(0))
            ok &= compare(total, p["amount"]["op"], typed("number", "", p["amount"]["value"]))
        return ok
    if "rfm" in rule:
        if c["id"] not in scores:
            return False
        r, f, m = scores[c["id"]]
        spec = rule["rfm"]
        if "group" in spec:
            groups = spec["group"] if isinstance(spec["group"], list) else [spec["group"]]
            if group_of(r, f, m) not in groups:
                return False
        for value, dim in ((r, "recency"), (f, "frequency"), (m, "monetary")):
            if dim in spec and not compare(value, spec[dim]["op"], spec[dim]["value"]):
                return False
        return True
    if "engagement" in rule:
        e = rule["engagement"]
        return any(ev["kind"] == e["kind"] and not ev["is_bot"]
                   and ("campaign_id" not in e or ev["campaign_id"] == e["campaign_id"])
                   and ("within_days" not in e or ev["occurred_at"] >= NOW - timedelta(days=e["within_days"]))
                   and ("older_than_days" not in e or ev["occurred_at"] < NOW - timedelta(days=e["older_than_days"]))
                   for ev in c["events"])
    if "subscription" in rule:
        return c["email_status"] == rule["subscription"]["status"]
    raise AssertionError(rule)


# --- the property -------------------------------------------------------------------------------


def load(dataset: list[dict]) -> list[dict]:
    """Insert the contacts (aggregates derived from their purchases), purchases and events."""
    from contacts.models import Contact, Purchase
    from envoi.extensions import db
    from segments.models import MessageEvent

    session = db.session
    for table in (MessageEvent, Purchase, Contact):
        session.execute(sa.delete(table))
    contacts = []
    for i, raw in enumerate(dataset, 1):
        c = dict(raw, id=i)
        buys = c["purchases"]
        c["purchase_count"] = len(buys)
        c["purchase_total"] = sum((p["amount"] for p in buys), Decimal(0))
        c["last_purchase_at"] = max((p["occurred_at"] for p in buys), default=None)
        contacts.append(c)
    session.execute(sa.insert(Contact), [{
        "id": c["id"], "email": f"p{c['id']}@example.org", "city": c["city"], "headcount": c["headcount"],
        "birth_date": c["birth_date"], "tags": c["tags"], "attributes": c["attributes"],
        "email_status": c["email_status"], "last_activity_at": c["last_activity_at"], "lifecycle": "prospect",
        "sms_status": "none", "created_at": NOW, "updated_at": NOW, "erased_at": NOW if c["erased"] else None,
        "purchase_count": c["purchase_count"], "purchase_total": c["purchase_total"],
        "first_purchase_at": min((p["occurred_at"] for p in c["purchases"]), default=None),
        "last_purchase_at": c["last_purchase_at"]} for c in contacts])
    purchases = [{"contact_id": c["id"], "currency": "EUR", "quantity": 1, "created_at": NOW, **p}
                 for c in contacts for p in c["purchases"]]
    if purchases:
        session.execute(sa.insert(Purchase), purchases)
    events = [{"contact_id": c["id"], "channel": "email", "data": {}, **e} for c in contacts for e in c["events"]]
    if events:
        session.execute(sa.insert(MessageEvent), events)
    session.commit()
    return contacts


@pytest.fixture
def declared(ctx):
    from contacts.services import define_attribute

    for key, kind in (("size", "number"), ("tier", "string"), ("fan", "boolean"), ("since", "date")):
        define_attribute(key, kind)
    return ctx


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dataset=dataset_st, rules=st.lists(rules_st, min_size=8, max_size=8))
def test_sql_matches_python_evaluation(declared, dataset, rules):
    from envoi.extensions import db
    from segments.services import segment_query

    contacts = load(dataset)
    scores = rfm_scores(contacts)
    for rule in rules:
        expected = {c["id"] for c in contacts if not c["erased"] and evaluate(rule, c, scores)}
        got = set(db.session.scalars(segment_query(rule, now=NOW)))
        assert got == expected, rule
