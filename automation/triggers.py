"""Triggers as SQL: each active automation enrolls its new contacts with one INSERT ... SELECT.

The occurrence key makes enrollment idempotent: the UNIQUE (automation, contact, occurrence)
constraint absorbs a rerun of the tick (ON CONFLICT DO NOTHING / INSERT OR IGNORE), so a birthday
enters once a year ("birth_date:2027"), a purchase follow-up once per order ("order:<ref>"), a
win-back once per lapse ("winback:<purchase count>"), a confirmation once per consent event.

Event-like triggers (consents, purchases, API events, lapses) look at rows recorded since the
automation's `checked_at` (minus an overlap for transactions that committed late); date and
membership triggers (anniversary, segment, tag) look at the contacts as they are now.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

import sqlalchemy as sa

from automation.models import Automation, AutomationEvent, JourneyRun
from contacts.models import ConsentEvent, Contact, ContactTopic, Purchase, Topic
from envoi.extensions import db
from envoi.types import UTCDateTime

OVERLAP = timedelta(hours=1)
R = JourneyRun.__table__


def _postgres() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def _key(prefix: str, column):
    return sa.literal(prefix) + sa.cast(column, sa.String)


def _month_days(target: date) -> list[str]:
    """MM-DD strings that have their anniversary on `target` (29 Feb counts on 28 Feb in other years)."""
    days = [target.strftime("%m-%d")]
    if target.month == 2 and target.day == 28:
        try:
            date(target.year, 2, 29)
        except ValueError:
            days.append("02-29")
    return days


def _source(automation: Automation, now: datetime):
    """(select of contact_id, occurrence_key, ref_id; extra WHERE conditions) of the trigger."""
    t = automation.trigger or {}
    kind = automation.trigger_type
    ts = lambda v: sa.literal(v, UTCDateTime())  # noqa: E731
    lower = None
    if automation.checked_at is not None:
        lower = automation.checked_at - OVERLAP
    elif automation.enabled_at is not None:
        lower = automation.enabled_at
    if kind == "subscription":
        ce = ConsentEvent
        where = [ce.kind == "granted", ce.channel == t.get("channel", "email"), ce.recorded_at <= ts(now)]
        if lower is not None:
            where.append(ce.recorded_at > ts(lower))
        if t.get("topic"):
            where.append(ce.topic_id == sa.select(Topic.id).where(Topic.slug == t["topic"]).scalar_subquery())
        else:
            where.append(ce.topic_id.is_(None))
        return (sa.select(ce.contact_id.label("contact_id"), _key("consent:", ce.id).label("k"), ce.id.label("ref"))
                .where(*where)), ce.contact_id
    if kind == "purchase":
        p = Purchase
        where = [p.created_at <= ts(now)]
        if lower is not None:
            where.append(p.created_at > ts(lower))
        if t.get("sku"):
            where.append(p.sku == t["sku"])
        if t.get("category"):
            where.append(p.category == t["category"])
        order = sa.func.coalesce(p.order_ref, sa.literal("#") + sa.cast(p.id, sa.String))
        return (sa.select(p.contact_id.label("contact_id"), (sa.literal("order:") + order).label("k"),
                          p.id.label("ref")).where(*where)), p.contact_id
    if kind == "event":
        e = AutomationEvent
        where = [e.name == t.get("name"), e.created_at <= ts(now)]
        if lower is not None:
            where.append(e.created_at > ts(lower))
        return (sa.select(e.contact_id.label("contact_id"), _key("event:", e.id).label("k"), e.id.label("ref"))
                .where(*where)), e.contact_id
    c = Contact
    if kind == "winback":
        threshold = now - timedelta(days=int(t["days"]))
        where = [c.purchase_count > 0, c.last_purchase_at.isnot(None), c.last_purchase_at <= ts(threshold)]
        if automation.checked_at is not None:  # the first tick takes everyone already lapsed
            where.append(c.last_purchase_at > ts(automation.checked_at - timedelta(days=int(t["days"])) - OVERLAP))
        return (sa.select(c.id.label("contact_id"), _key("winback:", c.purchase_count).label("k"),
                          sa.cast(sa.null(), sa.BigInteger).label("ref")).where(*where)), None
    if kind == "anniversary":
        target = (now + timedelta(days=int(t.get("days_before") or 0))).date()
        field = t.get("field", "birth_date")
        if field == "birth_date":
            md = (sa.func.to_char(c.birth_date, "MM-DD") if _postgres()
                  else sa.func.strftime("%m-%d", c.birth_date))
        else:
            md = sa.func.substr(c.attributes[field[len("attributes."):]].as_string(), 6, 5)
        return (sa.select(c.id.label("contact_id"), sa.literal(f"{field}:{target.year}").label("k"),
                          sa.cast(sa.null(), sa.BigInteger).label("ref")).where(md.in_(_month_days(target)))), None
    if kind == "segment":
        from segments.models import Segment
        from segments.rules import compile_rules

        segment = db.session.get(Segment, t.get("segment_id"))
        if segment is None:
            return None, None
        return (sa.select(c.id.label("contact_id"), sa.literal(f"segment:{segment.id}").label("k"),
                          sa.cast(sa.null(), sa.BigInteger).label("ref")).where(compile_rules(segment.rules, now=now))), None
    if kind == "tag":
        from contacts.query import has_tag

        return (sa.select(c.id.label("contact_id"), sa.literal(f"tag:{t.get('tag')}").label("k"),
                          sa.cast(sa.null(), sa.BigInteger).label("ref")).where(has_tag(t.get("tag")))), None
    return None, None


def _eligible(automation: Automation, now: datetime) -> list:
    """Conditions on contacts: not erased, reachable on a channel the journey writes on, audience, topic."""
    from segments.rules import compile_rules

    c = Contact
    where = [c.erased_at.is_(None)]
    reachable = []
    if automation.uses_email:
        reachable.append(sa.and_(c.email_status == "confirmed", c.email.isnot(None)))
    if automation.uses_sms:
        reachable.append(sa.and_(c.sms_status == "confirmed", c.phone.isnot(None)))
    if reachable:
        where.append(sa.or_(*reachable))
    if automation.audience:
        where.append(compile_rules(automation.audience, now=now))
    if automation.topic_id is not None:
        where.append(c.id.in_(sa.select(ContactTopic.contact_id).where(
            ContactTopic.topic_id == automation.topic_id, ContactTopic.subscribed.is_(True))))
    return where


def enroll(automation: Automation, now: datetime) -> int:
    """Enroll the contacts the trigger names since the last check: one INSERT ... SELECT. Returns
    the number of new runs (0 on a rerun: the occurrences are already there)."""
    source, contact_col = _source(automation, now)
    if source is None:
        return 0
    if contact_col is not None:  # a join from the events to the contacts
        source = source.join(Contact, Contact.id == contact_col)
    source = source.where(*_eligible(automation, now))
    sub = source.subquery()
    key = sub.c.k if automation.reentry != "once" else sa.literal("once")
    rows = sa.select(sa.literal(automation.id, sa.BigInteger), sub.c.contact_id, key, sub.c.ref,
                     sa.literal("active"), sa.literal(0), sa.literal(now, UTCDateTime()),
                     sa.literal(now, UTCDateTime()), sa.literal(now, UTCDateTime()))
    if automation.reentry == "not_while_active":
        rows = rows.where(~sa.exists().where(R.c.automation_id == automation.id, R.c.contact_id == sub.c.contact_id,
                                             R.c.status == "active"))
    columns = ["automation_id", "contact_id", "occurrence_key", "ref_id", "status", "step", "next_step_at",
               "entered_at", "updated_at"]
    if _postgres():
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(R).from_select(columns, rows).on_conflict_do_nothing(
            index_elements=["automation_id", "contact_id", "occurrence_key"])
        # psycopg's rowcount of INSERT ... SELECT comes back -1 through SQLAlchemy: count in SQL.
        inserted = stmt.returning(R.c.id).cte("inserted")
        return db.session.scalar(sa.select(sa.func.count()).select_from(inserted)) or 0
    else:
        stmt = sa.insert(R).from_select(columns, rows).prefix_with("OR IGNORE")
    return db.session.execute(stmt).rowcount or 0
