"""Segment rules: JSON -> validated tree -> one SQLAlchemy boolean expression over contacts.

Grammar (documented in DESIGN.md, "Segment rules"):

    {"all": [rule, ...]}  {"any": [rule, ...]}  {"not": rule}
    {"field": NAME, "op": OP, "value": ...}
    {"purchases": {"sku": S|[S], "category": C|[C], "within_days": N, "older_than_days": N,
                   "count": {"op", "value"}, "amount": {"op", "value"}}}
    {"rfm": {"group": G|[G], "recency"|"frequency"|"monetary": {"op", "value"}}}
    {"engagement": {"kind": K, "campaign_id": ID, "channel": CH, "within_days": N, "older_than_days": N}}
    {"subscription": {"channel": CH, "status": S}}   {"subscription": {"topic": SLUG}}

Logic is two-valued: every leaf compiles to an expression that is TRUE or FALSE, never NULL.
A field condition other than is_set / is_not_set is FALSE when the field is empty (NULL, a
missing attribute, no tags), so `not` is the exact complement of its rule.

Validation collects every problem as {path: reason}, e.g. {"rules.all[2].value": "expected a
number"}, raised as one ValidationError (HTTP 422). The SQL is built only from the columns
and tables named below: a rule selects among them, it never names SQL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import sqlalchemy as sa

from contacts.models import (ATTRIBUTE_TYPES, CHANNELS, EMAIL_STATUSES, LIFECYCLES, SMS_STATUSES, Contact,
                             ContactTopic, Purchase, Topic)
from contacts.query import json_list_contains
from envoi.errors import ValidationError
from envoi.extensions import db
from segments.models import MESSAGE_EVENT_KINDS, MessageEvent
from segments import rfm

MAX_CONDITIONS = 200
MAX_DEPTH = 10
MAX_LIST = 1000
MAX_TEXT = 1000
MAX_DAYS = 36500
MAX_NUMBER = Decimal("1e15")

OPS_BY_KIND = {
    "string": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "contains", "starts_with", "between",
               "is_set", "is_not_set"),
    "number": ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between", "is_set", "is_not_set"),
    "date": ("eq", "ne", "lt", "lte", "gt", "gte", "between", "is_set", "is_not_set", "within_days",
             "older_than_days"),
    "datetime": ("eq", "ne", "lt", "lte", "gt", "gte", "between", "is_set", "is_not_set", "within_days",
                 "older_than_days"),
    "boolean": ("eq", "ne", "is_set", "is_not_set"),
    "list": ("contains", "in", "not_in", "is_set", "is_not_set"),
}
ALL_OPS = sorted({op for ops in OPS_BY_KIND.values() for op in ops})
COMPARE_OPS = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "between")
# Fields whose values come from a closed list: a value outside it is a user error, not an empty segment.
ENUMS = {"lifecycle": LIFECYCLES, "email_status": EMAIL_STATUSES, "sms_status": SMS_STATUSES}
# Columns that are not segmentation material: erased contacts are never in a segment anyway.
HIDDEN_COLUMNS = {"erased_at", "tags", "attributes"}
ENGAGEMENT_KEYS = ("kind", "campaign_id", "channel", "within_days", "older_than_days")
PURCHASE_KEYS = ("sku", "category", "within_days", "older_than_days", "count", "amount")


def _column_kind(column) -> str | None:
    t = column.type
    if isinstance(t, sa.TypeDecorator):
        t = t.impl
    if isinstance(t, sa.DateTime):
        return "datetime"
    if isinstance(t, sa.Date):
        return "date"
    if isinstance(t, (sa.Integer, sa.Numeric)):
        return "number"
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.String):
        return "string"
    return None


def contact_fields() -> dict[str, str]:
    """Every contact column a rule may name, with its kind; plus age and tags."""
    out = {c.name: _column_kind(c) for c in Contact.__table__.columns if c.name not in HIDDEN_COLUMNS}
    out = {k: v for k, v in out.items() if v}
    out["age"] = "number"
    out["tags"] = "list"
    return out


# --- the validated tree -------------------------------------------------------------------------

@dataclass
class Node:
    kind: str                      # all, any, not, field, purchases, rfm, engagement, subscription
    children: list = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class Catalog:
    """What the database declares that rules may name: attribute types, topic ids."""

    attributes: dict[str, str]
    topics: dict[str, int]

    @classmethod
    def load(cls) -> "Catalog":
        from contacts.models import AttributeDefinition

        attrs = dict(db.session.execute(sa.select(AttributeDefinition.key, AttributeDefinition.type)).all())
        topics = dict(db.session.execute(sa.select(Topic.slug, Topic.id)).all())
        return cls(attrs, topics)


class _Parser:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.fields = contact_fields()
        self.errors: dict[str, str] = {}
        self.conditions = 0

    def fail(self, path: str, reason: str) -> None:
        self.errors.setdefault(path, reason)

    def rule(self, raw, path: str, depth: int) -> Node | None:
        if depth > MAX_DEPTH:
            self.fail(path, f"rules nest at most {MAX_DEPTH} levels deep")
            return None
        if not isinstance(raw, dict):
            self.fail(path, "expected an object: {all|any|not|field|purchases|rfm|engagement|subscription ...}")
            return None
        if "field" in raw or "op" in raw:
            return self.condition(raw, path)
        if len(raw) != 1:
            self.fail(path, "expected exactly one of all, any, not, field, purchases, rfm, engagement, subscription")
            return None
        (key, value), = raw.items()
        if key in ("all", "any"):
            if not isinstance(value, list):
                self.fail(f"{path}.{key}", "expected a list of rules")
                return None
            children = [self.rule(r, f"{path}.{key}[{i}]", depth + 1) for i, r in enumerate(value)]
            return Node(key, [c for c in children if c is not None])
        if key == "not":
            child = self.rule(value, f"{path}.not", depth + 1)
            return Node("not", [child]) if child is not None else None
        handler = {"purchases": self.purchases, "rfm": self.rfm, "engagement": self.engagement,
                   "subscription": self.subscription}.get(key)
        if handler is None:
            self.fail(f"{path}.{key}", "unknown rule; expected all, any, not, field, purchases, rfm, engagement "
                                       "or subscription")
            return None
        self._count(path)
        if not isinstance(value, dict):
            self.fail(f"{path}.{key}", "expected an object")
            return None
        return handler(value, f"{path}.{key}")

    def _count(self, path: str) -> None:
        self.conditions += 1
        if self.conditions == MAX_CONDITIONS + 1:
            self.fail(path, f"at most {MAX_CONDITIONS} conditions in a segment")

    def _unknown_keys(self, raw: dict, allowed, path: str) -> None:
        for key in raw:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key; expected {', '.join(allowed)}")

    # -- field conditions --

    def condition(self, raw: dict, path: str) -> Node | None:
        self._count(path)
        self._unknown_keys(raw, ("field", "op", "value"), path)
        name, op = raw.get("field"), raw.get("op")
        if not isinstance(name, str) or not name:
            self.fail(f"{path}.field", "required: a contact field, age, tags or attributes.<key>")
            return None
        if name.startswith("attributes."):
            key = name[len("attributes."):]
            kind = self.catalog.attributes.get(key)
            if kind not in ATTRIBUTE_TYPES:
                self.fail(f"{path}.field", f"unknown attribute {key!r} (declare it with POST /api/v1/attributes)")
                return None
        else:
            kind = self.fields.get(name)
            if kind is None:
                self.fail(f"{path}.field", f"unknown field {name!r}")
                return None
        if op not in OPS_BY_KIND[kind]:
            self.fail(f"{path}.op", f"operator {op!r} does not apply to {name} ({kind}); "
                                    f"expected one of {', '.join(OPS_BY_KIND[kind])}")
            return None
        if op in ("is_set", "is_not_set"):
            if raw.get("value") is not None:
                self.fail(f"{path}.value", f"{op} takes no value")
            return Node("field", data={"field": name, "kind": kind, "op": op})
        if "value" not in raw:
            self.fail(f"{path}.value", "required")
            return None
        value = self.operand(op, kind, raw["value"], f"{path}.value", name)
        if value is None:
            return None
        return Node("field", data={"field": name, "kind": kind, "op": op, "value": value})

    def operand(self, op: str, kind: str, value, path: str, name: str = ""):
        """The checked value(s) of a comparison, in Python types; None after a recorded error."""
        if op in ("within_days", "older_than_days"):
            return self.days(value, path)
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(path, "expected a non-empty list")
                return None
            if len(value) > MAX_LIST:
                self.fail(path, f"at most {MAX_LIST} values")
                return None
            items = [self.scalar(kind, v, f"{path}[{i}]", name) for i, v in enumerate(value)]
            return None if any(i is None for i in items) else items
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                self.fail(path, "expected [low, high]")
                return None
            low, high = (self.scalar(kind, v, f"{path}[{i}]", name) for i, v in enumerate(value))
            if low is None or high is None:
                return None
            if low > high:
                self.fail(path, "the low bound is above the high bound")
                return None
            return [low, high]
        if kind == "list" and op == "contains":
            return self.scalar("list", value, path, name)
        return self.scalar(kind, value, path, name)

    def scalar(self, kind: str, value, path: str, name: str = ""):
        if kind in ("string", "list"):
            if not isinstance(value, str) or isinstance(value, bool):
                self.fail(path, "expected a string")
                return None
            if len(value) > MAX_TEXT:
                self.fail(path, f"at most {MAX_TEXT} characters")
                return None
            if "\x00" in value:
                self.fail(path, "must not contain NUL characters")
                return None
            if kind == "list":  # tags are stored trimmed and lower-cased
                value = " ".join(value.split()).lower()
            if name in ENUMS and value not in ENUMS[name]:
                self.fail(path, f"expected one of {', '.join(ENUMS[name])}")
                return None
            return value
        if kind == "number":
            return self.number(value, path)
        if kind == "boolean":
            if not isinstance(value, bool):
                self.fail(path, "expected true or false")
                return None
            return value
        if kind == "date":
            if isinstance(value, str):
                try:
                    return date.fromisoformat(value.strip())
                except ValueError:
                    pass
            self.fail(path, "expected an ISO date YYYY-MM-DD")
            return None
        if kind == "datetime":
            if isinstance(value, str):
                try:
                    parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                except ValueError:
                    parsed = None
                if parsed is not None:
                    if parsed.tzinfo is None:
                        parsed = parsed.replace(tzinfo=timezone.utc)
                    try:
                        return parsed.astimezone(timezone.utc)
                    except OverflowError:
                        pass
            self.fail(path, "expected an ISO 8601 time")
            return None
        raise AssertionError(kind)

    def number(self, value, path: str) -> Decimal | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(path, "expected a number")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, "expected a finite number")
            return None
        number = Decimal(str(value))
        if abs(number) >= MAX_NUMBER:
            self.fail(path, "out of range")
            return None
        return number

    def days(self, value, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAYS:
            self.fail(path, f"expected a whole number of days between 0 and {MAX_DAYS}")
            return None
        return value

    def comparison(self, raw, path: str, kind: str = "number", ops=COMPARE_OPS, check=None) -> dict | None:
        """{"op": ..., "value": ...} of an aggregate or a score."""
        if not isinstance(raw, dict):
            self.fail(path, 'expected {"op": ..., "value": ...}')
            return None
        self._unknown_keys(raw, ("op", "value"), path)
        op = raw.get("op")
        if op not in ops:
            self.fail(f"{path}.op", f"expected one of {', '.join(ops)}")
            return None
        if "value" not in raw:
            self.fail(f"{path}.value", "required")
            return None
        value = self.operand(op, kind, raw["value"], f"{path}.value")
        if value is None:
            return None
        if check is not None:
            for v in (value if isinstance(value, list) else [value]):
                reason = check(v)
                if reason:
                    self.fail(f"{path}.value", reason)
                    return None
        return {"op": op, "value": value}

    def one_or_many(self, value, path: str) -> list[str] | None:
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_LIST or not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT
                                                          and "\x00" not in v for v in values):
            self.fail(path, f"expected a string or a non-empty list of at most {MAX_LIST} strings")
            return None
        return values

    # -- behaviour --

    def purchases(self, raw: dict, path: str) -> Node | None:
        self._unknown_keys(raw, PURCHASE_KEYS, path)
        data: dict = {}
        ok = True
        for key in ("sku", "category"):
            if key in raw:
                data[key] = self.one_or_many(raw[key], f"{path}.{key}")
                ok &= data[key] is not None
        for key in ("within_days", "older_than_days"):
            if key in raw:
                data[key] = self.days(raw[key], f"{path}.{key}")
                ok &= data[key] is not None
        if "count" in raw:
            data["count"] = self.comparison(raw["count"], f"{path}.count",
                                            check=lambda v: None if v == int(v) and v >= 0 else
                                            "expected a whole number >= 0")
            ok &= data["count"] is not None
        if "amount" in raw:
            data["amount"] = self.comparison(raw["amount"], f"{path}.amount")
            ok &= data["amount"] is not None
        return Node("purchases", data=data) if ok else None

    def rfm(self, raw: dict, path: str) -> Node | None:
        self._unknown_keys(raw, ("group", *rfm.DIMENSIONS), path)
        if not raw:
            self.fail(path, f"expected group or one of {', '.join(rfm.DIMENSIONS)}")
            return None
        data: dict = {}
        ok = True
        if "group" in raw:
            groups = self.one_or_many(raw["group"], f"{path}.group")
            bad = [g for g in groups or [] if g not in rfm.GROUPS]
            if bad:
                self.fail(f"{path}.group", f"unknown group {bad[0]!r}; expected one of {', '.join(rfm.GROUPS)}")
            data["group"] = groups if groups and not bad else None
            ok &= data["group"] is not None
        for dim in rfm.DIMENSIONS:
            if dim in raw:
                data[dim] = self.comparison(raw[dim], f"{path}.{dim}",
                                            check=lambda v: None if v == int(v) and 1 <= v <= 5 else
                                            "expected a score from 1 to 5")
                ok &= data[dim] is not None
        return Node("rfm", data=data) if ok else None

    def engagement(self, raw: dict, path: str) -> Node | None:
        self._unknown_keys(raw, ENGAGEMENT_KEYS, path)
        data: dict = {}
        ok = True
        if raw.get("kind") not in MESSAGE_EVENT_KINDS:
            self.fail(f"{path}.kind", f"expected one of {', '.join(MESSAGE_EVENT_KINDS)}")
            ok = False
        data["kind"] = raw.get("kind")
        if "campaign_id" in raw:
            cid = raw["campaign_id"]
            if isinstance(cid, bool) or not isinstance(cid, int) or not 0 < cid < 2**63:
                self.fail(f"{path}.campaign_id", "expected a campaign id")
                ok = False
            data["campaign_id"] = cid
        if "channel" in raw:
            if raw["channel"] not in CHANNELS:
                self.fail(f"{path}.channel", f"expected one of {', '.join(CHANNELS)}")
                ok = False
            data["channel"] = raw["channel"]
        for key in ("within_days", "older_than_days"):
            if key in raw:
                data[key] = self.days(raw[key], f"{path}.{key}")
                ok &= data[key] is not None
        return Node("engagement", data=data) if ok else None

    def subscription(self, raw: dict, path: str) -> Node | None:
        self._unknown_keys(raw, ("channel", "status", "topic"), path)
        data: dict = {}
        ok = True
        if not raw:
            self.fail(path, "expected channel (and status) or topic")
            return None
        if "status" in raw and "channel" not in raw:
            self.fail(f"{path}.channel", "required with status")
            ok = False
        if "channel" in raw:
            channel = raw["channel"]
            if channel not in CHANNELS:
                self.fail(f"{path}.channel", f"expected one of {', '.join(CHANNELS)}")
                return None
            statuses = EMAIL_STATUSES if channel == "email" else SMS_STATUSES
            status = raw.get("status", "confirmed")
            if status not in statuses:
                self.fail(f"{path}.status", f"expected one of {', '.join(statuses)}")
                ok = False
            data.update(channel=channel, status=status)
        if "topic" in raw:
            topic = raw["topic"]
            if not isinstance(topic, str) or topic not in self.catalog.topics:
                self.fail(f"{path}.topic", f"unknown topic {topic!r}" if isinstance(topic, str) else
                          "expected a topic slug")
                ok = False
            else:
                data["topic_id"] = self.catalog.topics[topic]
        return Node("subscription", data=data) if ok else None


def parse(raw, catalog: Catalog | None = None, path: str = "rules") -> Node:
    """Validate a rule tree; raise ValidationError naming every bad path."""
    parser = _Parser(catalog or Catalog.load())
    node = parser.rule(raw, path, 1)
    if parser.errors or node is None:
        raise ValidationError("invalid segment rules", parser.errors or {path: "invalid rule"})
    return node


# --- compilation ----------------------------------------------------------------------------------

class Compiler:
    """Turns a validated tree into a SQL expression over `contacts`, at one instant `now`."""

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime.now(timezone.utc)
        self.today = self.now.date()
        self.postgres = db.session.get_bind().dialect.name == "postgresql"
        self._boundaries: rfm.Boundaries | None = None

    def compile(self, node: Node):
        if node.kind == "all":
            return sa.and_(sa.true(), *(self.compile(c) for c in node.children)) if node.children else sa.true()
        if node.kind == "any":
            return sa.or_(sa.false(), *(self.compile(c) for c in node.children)) if node.children else sa.false()
        if node.kind == "not":
            return sa.not_(self.compile(node.children[0]))
        return getattr(self, f"_{node.kind}")(node.data)

    # -- fields --

    def _field(self, d: dict):
        name, kind, op = d["field"], d["kind"], d["op"]
        if name == "age":
            return self._age(op, d.get("value"))
        if name == "tags":
            return self._tags(op, d.get("value"))
        if name.startswith("attributes."):
            expr = self._attribute(name[len("attributes."):], kind)
        else:
            expr = Contact.__table__.c[name]
        present = expr.isnot(None)
        if op == "is_set":
            return present
        if op == "is_not_set":
            return expr.is_(None)
        # The presence guard comes first: FALSE AND NULL is FALSE, so the leaf is never NULL.
        return sa.and_(present, self._compare(expr, kind, op, d["value"]))

    def _attribute(self, key: str, kind: str):
        element = Contact.attributes[key]
        if kind == "number":
            return element.as_float()
        if kind == "boolean":
            return element.as_boolean()
        return element.as_string()  # strings, and dates as ISO text (which sorts like dates)

    def _compare(self, expr, kind: str, op: str, value):
        if kind == "number":
            value = [_number(expr, v) for v in value] if isinstance(value, list) else _number(expr, value)
        if kind == "date" and not isinstance(expr.type, sa.Date):  # a date attribute, stored as ISO text
            value = [v.isoformat() for v in value] if isinstance(value, list) else \
                (value.isoformat() if isinstance(value, date) else value)
        if op in ("within_days", "older_than_days"):
            edge = self.now - timedelta(days=value)
            if kind == "date":
                edge = edge.date()
                edge = edge if isinstance(expr.type, sa.Date) else edge.isoformat()
            return expr >= edge if op == "within_days" else expr < edge
        if op == "contains":
            return expr.icontains(value, autoescape=True)
        if op == "starts_with":
            return expr.istartswith(value, autoescape=True)
        if kind == "string" and op in ("lt", "lte", "gt", "gte", "between"):
            # Code-point order on both backends, whatever the database's collation.
            expr = sa.collate(expr, "C") if self.postgres else expr
        return _apply(expr, op, value)

    def _age(self, op: str, value):
        """age conditions as birth_date ranges: index-friendly, and the same on every backend."""
        bd = Contact.birth_date
        if op == "is_set":
            return bd.isnot(None)
        if op == "is_not_set":
            return bd.is_(None)

        def at_least(n: int):  # age >= n
            return bd <= _years_before(self.today, n)

        def below(n: int):  # age < n
            return bd > _years_before(self.today, n)

        def eq(n):
            if n != int(n):
                return sa.false()
            n = int(n)
            return sa.and_(at_least(n), below(n + 1))

        ceil = lambda v: math.ceil(v)  # noqa: E731
        floor = lambda v: math.floor(v)  # noqa: E731
        if op == "eq":
            cond = eq(value)
        elif op == "ne":
            cond = sa.not_(eq(value))
        elif op == "in":
            cond = sa.or_(*(eq(v) for v in value))
        elif op == "not_in":
            cond = sa.not_(sa.or_(*(eq(v) for v in value)))
        elif op == "gte":
            cond = at_least(ceil(value))
        elif op == "gt":
            cond = at_least(floor(value) + 1)
        elif op == "lte":
            cond = below(floor(value) + 1)
        elif op == "lt":
            cond = below(ceil(value))
        elif op == "between":
            cond = sa.and_(at_least(ceil(value[0])), below(floor(value[1]) + 1))
        else:
            raise AssertionError(op)
        return sa.and_(bd.isnot(None), cond)

    def _tags(self, op: str, value):
        tags = Contact.tags
        nonempty = sa.func.jsonb_array_length(tags) > 0 if self.postgres else sa.func.json_array_length(tags) > 0
        if op == "is_set":
            return nonempty
        if op == "is_not_set":
            return sa.not_(nonempty)
        if op == "contains":
            return json_list_contains(tags, value)
        if self.postgres:
            from sqlalchemy.dialects.postgresql import JSONB, array

            any_of = sa.type_coerce(tags, JSONB).has_any(array(value))
        else:
            each = sa.func.json_each(tags).table_valued("value")
            any_of = sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value.in_(value)))
        if op == "in":
            return any_of
        return sa.and_(nonempty, sa.not_(any_of))  # not_in: has tags, none of these

    # -- behaviour --

    def _purchases(self, d: dict):
        p = Purchase.__table__
        where = []
        if "sku" in d:
            where.append(p.c.sku.in_(d["sku"]))
        if "category" in d:
            where.append(p.c.category.in_(d["category"]))
        if "within_days" in d:
            where.append(p.c.occurred_at >= self.now - timedelta(days=d["within_days"]))
        if "older_than_days" in d:
            where.append(p.c.occurred_at < self.now - timedelta(days=d["older_than_days"]))
        if "count" not in d and "amount" not in d:
            return sa.exists(sa.select(sa.literal(1)).where(p.c.contact_id == Contact.id, *where))
        tests = []
        if "count" in d:
            tests.append((sa.func.count(), d["count"]))
        if "amount" in d:
            tests.append((sa.func.sum(p.c.amount), d["amount"]))
        holds = sa.and_(*(_apply(agg, t["op"], [_number(agg, v) for v in t["value"]] if isinstance(t["value"], list)
                                 else _number(agg, t["value"])) for agg, t in tests))
        # A contact with no matching purchase has count 0 and amount 0: it matches when
        # the aggregate test holds for zero, so compile to "no group fails" in that case.
        zero_holds = all(_holds(0, t["op"], t["value"]) for _, t in tests)
        groups = sa.select(p.c.contact_id).where(*where).group_by(p.c.contact_id)
        if zero_holds:
            return Contact.id.not_in(groups.having(sa.not_(holds)))
        return Contact.id.in_(groups.having(holds))

    def _rfm(self, d: dict):
        if self._boundaries is None:
            self._boundaries = rfm.boundaries()
        return rfm.condition(self._boundaries, d)

    def _engagement(self, d: dict):
        e = MessageEvent.__table__
        where = [e.c.contact_id == Contact.id, e.c.kind == d["kind"], e.c.is_bot.is_(sa.false())]
        if "campaign_id" in d:
            where.append(e.c.campaign_id == d["campaign_id"])
        if "channel" in d:
            where.append(e.c.channel == d["channel"])
        if "within_days" in d:
            where.append(e.c.occurred_at >= self.now - timedelta(days=d["within_days"]))
        if "older_than_days" in d:
            where.append(e.c.occurred_at < self.now - timedelta(days=d["older_than_days"]))
        return sa.exists(sa.select(sa.literal(1)).where(*where))

    def _subscription(self, d: dict):
        conds = []
        if "channel" in d:
            conds.append(getattr(Contact, f"{d['channel']}_status") == d["status"])
        if "topic_id" in d:
            ct = ContactTopic.__table__
            conds.append(sa.exists(sa.select(sa.literal(1)).where(
                ct.c.contact_id == Contact.id, ct.c.topic_id == d["topic_id"], ct.c.subscribed.is_(sa.true()))))
        return sa.and_(*conds)


def _number(expr, value: Decimal):
    """A typed literal, so each backend compares numbers as numbers (no driver guessing)."""
    t = expr.type
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        return sa.literal(value, sa.Numeric(30, 6))
    if value == value.to_integral_value():
        return sa.literal(int(value), sa.BigInteger())
    return sa.literal(float(value), sa.Float())


def _apply(expr, op: str, value):
    if op == "eq":
        return expr == value
    if op == "ne":
        return expr != value
    if op == "lt":
        return expr < value
    if op == "lte":
        return expr <= value
    if op == "gt":
        return expr > value
    if op == "gte":
        return expr >= value
    if op == "in":
        return expr.in_(value)
    if op == "not_in":
        return expr.not_in(value)
    if op == "between":
        return sa.and_(expr >= value[0], expr <= value[1])
    raise AssertionError(op)


def _holds(x, op: str, value) -> bool:
    """The comparison in Python (used for the zero case of aggregates and for RFM scores)."""
    return {"eq": lambda: x == value, "ne": lambda: x != value, "lt": lambda: x < value,
            "lte": lambda: x <= value, "gt": lambda: x > value, "gte": lambda: x >= value,
            "in": lambda: x in value, "not_in": lambda: x not in value,
            "between": lambda: value[0] <= x <= value[1]}[op]()


def _years_before(day: date, years: int) -> date:
    """The same day `years` earlier; 29 February becomes 28 February in a common year."""
    year = day.year - years
    if year < 1:
        return date.min
    if year > 9999:
        return date.max
    try:
        return day.replace(year=year)
    except ValueError:
        return day.replace(year=year, day=28)


def compile_rules(raw, *, catalog: Catalog | None = None, now: datetime | None = None):
    """Validate and compile: the boolean expression over contacts (erasure not included)."""
    return Compiler(now).compile(parse(raw, catalog))

