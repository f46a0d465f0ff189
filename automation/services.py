"""Automation services: define journeys (validated), enable / pause / resume, stats, API events.

The engine (automation/engine.py) runs them: the scheduler's tick enrolls contacts with SQL and
enqueues due runs; workers take each due step once.
"""
from __future__ import annotations

import re
from datetime import datetime

import sqlalchemy as sa
from flask import current_app

from automation.models import (REENTRY, TRIGGER_TYPES, Automation, AutomationEvent, AutomationStep, JourneyRun,
                               JourneyStep)
from contacts.models import AttributeDefinition, Contact, Topic
from envoi import MAX_ID
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.types import utcnow

MAX_STEPS = 50
MAX_WAIT_DAYS = 3650
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


# ------------------------------------------------------------------ validation

def _int(value, path: str, errors: dict, lo: int, hi: int, default=None):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        errors[path] = f"an integer from {lo} to {hi}"
        return default
    return value


def _text(value, path: str, errors: dict, limit: int, required: bool = False):
    if value is None or value == "":
        if required:
            errors[path] = "required"
        return None
    if not isinstance(value, str) or len(value) > limit:
        errors[path] = f"a string of at most {limit} characters"
        return None
    return value


def _clean_rule(rule, path: str, errors: dict):
    from segments.rules import parse

    try:
        parse(rule, path=path)
    except ValidationError as err:
        errors.update(err.fields or {path: str(err)})
    return rule


def clean_trigger(raw, errors: dict) -> dict:
    """The trigger object, checked; errors keyed "trigger.<field>"."""
    if not isinstance(raw, dict):
        errors["trigger"] = "required: an object with a type"
        return {}
    kind = raw.get("type")
    if kind not in TRIGGER_TYPES:
        errors["trigger.type"] = f"one of {', '.join(TRIGGER_TYPES)}"
        return {}
    allowed = {"subscription": {"channel", "topic"}, "anniversary": {"field", "days_before"},
               "purchase": {"sku", "category"}, "winback": {"days"}, "segment": {"segment_id"},
               "tag": {"tag"}, "event": {"name"}}[kind]
    for key in raw:
        if key != "type" and key not in allowed:
            errors[f"trigger.{key}"] = f"unknown for a {kind} trigger"
    out = {"type": kind}
    if kind == "subscription":
        channel = raw.get("channel", "email")
        if channel not in ("email", "sms"):
            errors["trigger.channel"] = "email or sms"
        out["channel"] = channel
        topic = raw.get("topic")
        if topic is not None:
            if not isinstance(topic, str) or db.session.scalar(sa.select(Topic.id).where(Topic.slug == topic)) is None:
                errors["trigger.topic"] = "unknown topic"
            out["topic"] = topic
    elif kind == "anniversary":
        field = raw.get("field", "birth_date")
        if field != "birth_date":
            key = field[len("attributes."):] if isinstance(field, str) and field.startswith("attributes.") else None
            kind_of = db.session.scalar(sa.select(AttributeDefinition.type).where(AttributeDefinition.key == key)) \
                if key else None
            if kind_of != "date":
                errors["trigger.field"] = "birth_date or attributes.<key> of a declared date attribute"
        out["field"] = field
        out["days_before"] = _int(raw.get("days_before"), "trigger.days_before", errors, -365, 365, 0)
    elif kind == "purchase":
        for key in ("sku", "category"):
            value = _text(raw.get(key), f"trigger.{key}", errors, 100)
            if value is not None:
                out[key] = value
    elif kind == "winback":
        out["days"] = _int(raw.get("days"), "trigger.days", errors, 1, 3650)
        if raw.get("days") is None:
            errors["trigger.days"] = "required: days without a purchase"
    elif kind == "segment":
        from segments.models import Segment

        sid = raw.get("segment_id")
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 < sid <= MAX_ID \
                or db.session.get(Segment, sid) is None:
            errors["trigger.segment_id"] = "an existing segment id"
        out["segment_id"] = sid
    elif kind == "tag":
        out["tag"] = _text(raw.get("tag"), "trigger.tag", errors, 100, required=True)
    elif kind == "event":
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errors["trigger.name"] = "required: letters, digits, _ . : - (at most 100)"
        out["name"] = name
    return out


def clean_steps(raw, errors: dict) -> list[dict]:
    """Steps, checked: email/sms content compiles in the sandbox, waits and branches are sound."""
    from campaigns.rendering import TemplateError, validate_content

    if not isinstance(raw, list) or not raw:
        errors["steps"] = "required: a non-empty list of steps"
        return []
    if len(raw) > MAX_STEPS:
        errors["steps"] = f"at most {MAX_STEPS} steps"
        return []
    out = []
    for i, step in enumerate(raw):
        p = f"steps[{i}]"
        if not isinstance(step, dict):
            errors[p] = "must be an object"
            continue
        kind = step.get("kind")
        config: dict = {}
        if kind == "email":
            for key, limit in (("subject", 998), ("html", 1_000_000), ("text", 1_000_000)):
                config[key] = _text(step.get(key), f"{p}.{key}", errors, limit)
            if not config["subject"]:
                errors[f"{p}.subject"] = "required"
            if not (config["html"] or config["text"]):
                errors[f"{p}.html"] = "html or text is required"
            try:
                validate_content("email", config["subject"], config["html"], config["text"], None)
            except TemplateError as err:
                errors.update({f"{p}.{k}": v for k, v in err.fields.items()})
        elif kind == "sms":
            config["body"] = _text(step.get("body"), f"{p}.body", errors, 1600, required=True)
            try:
                validate_content("sms", None, None, None, config["body"])
            except TemplateError as err:
                errors.update({f"{p}.{k}": v for k, v in err.fields.items()})
        elif kind == "wait":
            for key, hi in (("days", MAX_WAIT_DAYS), ("hours", 24 * MAX_WAIT_DAYS), ("minutes", 60 * 24 * 30)):
                value = _int(step.get(key), f"{p}.{key}", errors, 0, hi)
                if value:
                    config[key] = value
            until = step.get("until")
            if until is not None:
                if not isinstance(until, str) or not _TIME.match(until):
                    errors[f"{p}.until"] = "a time of day HH:MM (the contact's timezone)"
                config["until"] = until
            if not config:
                errors[p] = "a wait needs days, hours, minutes and/or until"
        elif kind == "branch":
            if "rule" not in step:
                errors[f"{p}.rule"] = "required: a segment rule evaluated for the contact"
            else:
                config["rule"] = _clean_rule(step["rule"], f"{p}.rule", errors)
            for key, default in (("then", "next"), ("else", "exit")):
                target = step.get(key, default)
                if target in ("next", "exit", "end"):
                    config[key] = target
                elif isinstance(target, int) and not isinstance(target, bool) and i < target <= len(raw):
                    config[key] = target
                else:
                    errors[f"{p}.{key}"] = f'"next", "exit", "end" or a later step position ({i + 1}..{len(raw)})'
        else:
            errors[f"{p}.kind"] = "one of email, sms, wait, branch"
            continue
        unknown = set(step) - {"kind", "subject", "html", "text", "body", "days", "hours", "minutes", "until",
                               "rule", "then", "else"}
        for key in sorted(unknown):
            errors[f"{p}.{key}"] = "unknown field"
        out.append({"kind": kind, "config": config})
    return out


def _apply(automation: Automation, raw: dict, *, partial: bool) -> list[dict] | None:
    errors: dict = {}
    known = {"name", "trigger", "audience", "topic", "reentry", "sender", "steps"}
    for key in raw:
        if key not in known and key not in ("id", "status", "created_at", "updated_at", "enabled_at"):
            errors[key] = "unknown field"
    if not partial or "name" in raw:
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            errors["name"] = "required, at most 200 characters"
        else:
            automation.name = " ".join(name.split())
    if not partial or "trigger" in raw:
        trigger = clean_trigger(raw.get("trigger"), errors)
        automation.trigger, automation.trigger_type = trigger, trigger.get("type")
    if "audience" in raw:
        audience = raw["audience"]
        automation.audience = None if audience in (None, {}) else _clean_rule(audience, "audience", errors)
    if "topic" in raw:
        topic = raw["topic"]
        if topic is None:
            automation.topic_id = None
        else:
            found = db.session.scalar(sa.select(Topic.id).where(Topic.slug == topic)) if isinstance(topic, str) else None
            if found is None:
                errors["topic"] = "unknown topic"
            automation.topic_id = found
    if "reentry" in raw or not partial:
        reentry = raw.get("reentry", "per_occurrence")
        if reentry not in REENTRY:
            errors["reentry"] = f"one of {', '.join(REENTRY)}"
        automation.reentry = reentry
    if "sender" in raw:
        automation.sender = _text(raw["sender"], "sender", errors, 300)
    steps = None
    if not partial or "steps" in raw:
        steps = clean_steps(raw.get("steps"), errors)
    if errors:
        db.session.rollback()
        raise ValidationError("invalid automation", errors)
    return steps


def _set_steps(automation: Automation, steps: list[dict], now: datetime) -> None:
    db.session.execute(sa.delete(AutomationStep).where(AutomationStep.automation_id == automation.id))
    db.session.flush()
    for position, step in enumerate(steps):
        db.session.add(AutomationStep(automation_id=automation.id, position=position, kind=step["kind"],
                                      config=step["config"], updated_at=now))
    automation.uses_email = any(s["kind"] == "email" for s in steps)
    automation.uses_sms = any(s["kind"] == "sms" for s in steps)


def get_automation(automation_id: int) -> Automation:
    automation = db.session.get(Automation, automation_id) \
        if isinstance(automation_id, int) and 0 < automation_id <= MAX_ID else None
    if automation is None:
        raise NotFound("automation not found")
    return automation


def steps_of(automation_id: int) -> list[AutomationStep]:
    return list(db.session.scalars(sa.select(AutomationStep).where(AutomationStep.automation_id == automation_id)
                                   .order_by(AutomationStep.position)))


def automation_to_dict(automation: Automation) -> dict:
    topic = db.session.scalar(sa.select(Topic.slug).where(Topic.id == automation.topic_id)) \
        if automation.topic_id else None
    iso = lambda v: v.isoformat() if v else None  # noqa: E731
    return {"id": automation.id, "name": automation.name, "status": automation.status,
            "trigger": automation.trigger, "audience": automation.audience, "topic": topic,
            "reentry": automation.reentry, "sender": automation.sender,
            "steps": [{"kind": s.kind, **s.config} for s in steps_of(automation.id)],
            "enabled_at": iso(automation.enabled_at), "created_at": iso(automation.created_at),
            "updated_at": iso(automation.updated_at)}


def create_automation(raw: dict, *, now: datetime | None = None) -> Automation:
    """A new automation, in draft: nothing runs until it is enabled."""
    now = now or utcnow()
    automation = Automation(status="draft", created_at=now, updated_at=now)
    steps = _apply(automation, raw, partial=False)
    db.session.add(automation)
    db.session.flush()
    _set_steps(automation, steps, now)
    db.session.commit()
    return automation


def update_automation(automation_id: int, raw: dict, *, now: datetime | None = None) -> Automation:
    """Edit an automation. Steps change only while it is not active (pause it first): contacts
    waiting in a journey stay at their position."""
    now = now or utcnow()
    automation = get_automation(automation_id)
    if "steps" in raw and automation.status == "active":
        db.session.rollback()
        raise Conflict("pause the automation before changing its steps", {"steps": "automation is active"})
    steps = _apply(automation, raw, partial=True)
    if steps is not None:
        _set_steps(automation, steps, now)
    automation.updated_at = now
    db.session.commit()
    return automation


def delete_automation(automation_id: int) -> None:
    automation = get_automation(automation_id)
    if automation.status == "active":
        raise Conflict("pause the automation before deleting it", {"status": "active"})
    # Deliveries of its journeys stay in the contacts' history: detach them from the runs first.
    from campaigns.models import Delivery

    runs = sa.select(JourneyRun.id).where(JourneyRun.automation_id == automation.id)
    db.session.execute(sa.update(Delivery).where(Delivery.journey_run_id.in_(runs))
                       .values(journey_run_id=None).execution_options(synchronize_session=False))
    db.session.delete(automation)
    db.session.commit()


def list_automations(cursor, limit: int) -> tuple[list[dict], str | None]:
    from contacts.services import decode_cursor, encode_cursor

    query = sa.select(Automation).order_by(Automation.id.desc())
    after = decode_cursor(cursor)
    if after is not None:
        try:
            query = query.where(Automation.id < int(after))
        except ValueError:
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"}) from None
    rows = list(db.session.scalars(query.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return [automation_to_dict(a) for a in rows], (encode_cursor(rows[-1].id) if more else None)


def enable(automation_id: int, *, now: datetime | None = None) -> Automation:
    """Start (or restart) enrolling contacts and taking steps. Event-like triggers count from now;
    a paused automation resumes where it was (its events meanwhile are picked up)."""
    now = now or utcnow()
    automation = get_automation(automation_id)
    if automation.status == "active":
        return automation
    if automation.status == "paused":
        return resume(automation_id, now=now)
    if not steps_of(automation.id):
        raise ValidationError("automation has no steps", {"steps": "required"})
    automation.status, automation.enabled_at, automation.updated_at = "active", now, now
    db.session.commit()
    return automation


def pause(automation_id: int, *, now: datetime | None = None) -> Automation:
    """Stop taking steps and enrolling; contacts wait in place."""
    now = now or utcnow()
    automation = get_automation(automation_id)
    if automation.status != "active":
        raise Conflict(f"automation is {automation.status}", {"status": automation.status})
    automation.status, automation.updated_at = "paused", now
    db.session.commit()
    return automation


def resume(automation_id: int, *, now: datetime | None = None) -> Automation:
    """Continue a paused automation: due steps are taken at the next tick."""
    now = now or utcnow()
    automation = get_automation(automation_id)
    if automation.status != "paused":
        raise Conflict(f"automation is {automation.status}", {"status": automation.status})
    automation.status, automation.updated_at = "active", now
    db.session.commit()
    return automation


def stats(automation_id: int) -> dict:
    """Per step: entered (reached it), sent, waiting (there now), exited (left the journey there);
    and the runs by status."""
    automation = get_automation(automation_id)
    steps = steps_of(automation.id)
    r, s = JourneyRun, JourneyStep
    taken = db.session.execute(sa.select(s.position, s.outcome, sa.func.count()).where(
        s.automation_id == automation.id).group_by(s.position, s.outcome)).all()
    at = db.session.execute(sa.select(r.step, r.status, sa.func.count()).where(
        r.automation_id == automation.id).group_by(r.step, r.status)).all()
    per = [{"position": st.position, "kind": st.kind, "entered": 0, "sent": 0, "skipped": 0, "failed": 0,
            "waiting": 0, "exited": 0} for st in steps]
    for position, outcome, n in taken:
        if position < len(per):
            per[position]["entered"] += n
            if outcome in ("sent", "skipped", "failed"):
                per[position][outcome] += n
    runs = {"active": 0, "done": 0, "exited": 0}
    for position, status, n in at:
        runs[status] = runs.get(status, 0) + n
        if position < len(per) and status in ("active", "exited"):
            key = "waiting" if status == "active" else "exited"
            per[position][key] += n
    # A run waiting at (or leaving from) a step it has not taken yet has still reached it.
    untaken = db.session.execute(
        sa.select(r.step, sa.func.count()).where(
            r.automation_id == automation.id, r.status.in_(("active", "exited")),
            ~sa.exists().where(s.run_id == r.id, s.position == r.step)).group_by(r.step)).all()
    for position, n in untaken:
        if position < len(per):
            per[position]["entered"] += n
    return {"id": automation.id, "status": automation.status, "entered": sum(runs.values()), "runs": runs,
            "steps": per}


# ------------------------------------------------------------------ API events

def record_event(raw: dict, *, now: datetime | None = None) -> AutomationEvent:
    """Store an event (`name`, a contact ref, `data`) for the `event` triggers; 422 names the field."""
    from contacts.services import find_contact
    from contacts.validation import normalise_email, normalise_phone, parse_datetime

    now = now or utcnow()
    errors: dict = {}
    for key in raw:
        if key not in ("name", "contact", "data", "occurred_at"):
            errors[key] = "unknown field"
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        errors["name"] = "required: letters, digits, _ . : - (at most 100)"
    data = raw.get("data", {})
    if not isinstance(data, dict):
        errors["data"] = "must be an object"
    elif len(repr(data)) > 10_000:
        errors["data"] = "at most 10 kB"
    occurred_at = now
    if raw.get("occurred_at") is not None:
        try:
            occurred_at = parse_datetime(raw["occurred_at"], "occurred_at")
        except ValidationError as err:
            errors.update(err.fields)
    ref = raw.get("contact")
    contact = None
    if not isinstance(ref, dict) or not any(ref.get(k) for k in ("id", "email", "phone")):
        errors["contact"] = "required: {id} or {email} or {phone}"
    else:
        try:
            if ref.get("id") is not None:
                cid = ref["id"]
                if isinstance(cid, bool) or not isinstance(cid, int) or not 0 < cid <= MAX_ID:
                    raise ValidationError("bad id", {"contact.id": "must be a positive integer"})
                contact = db.session.get(Contact, cid)
            elif ref.get("email"):
                contact = find_contact(email=normalise_email(ref["email"], "contact.email"))
            else:
                region = current_app.config["DEFAULT_REGION"]
                contact = find_contact(phone=normalise_phone(ref["phone"], region, "contact.phone"))
        except ValidationError as err:
            errors.update(err.fields)
    if errors:
        raise ValidationError("invalid event", errors)
    if contact is None or contact.erased_at is not None:
        raise NotFound("no such contact", {"contact": "no such contact"})
    event = AutomationEvent(name=name, contact_id=contact.id, data=data, occurred_at=occurred_at, created_at=now)
    db.session.add(event)
    db.session.commit()
    return event


# ------------------------------------------------------------------ contact merges (contacts.dedupe)

def prepare_merge(survivor_id: int, ids: list[int], *, now: datetime | None = None) -> int:
    """Before the runs of merged contacts move to the survivor: a run whose occurrence another
    contact of the group also has (both had the birthday journey this year) keeps its history
    under a distinct key and stops, so the survivor runs each occurrence once. The caller commits."""
    now = now or utcnow()
    r = JourneyRun.__table__
    other = r.alias("other")
    clash = sa.exists().where(other.c.automation_id == r.c.automation_id,
                              other.c.occurrence_key == r.c.occurrence_key,
                              other.c.contact_id.in_(ids), other.c.id != r.c.id,
                              # the survivor's run wins, else the oldest
                              sa.or_(other.c.contact_id == survivor_id, other.c.id < r.c.id))
    stmt = (sa.update(r).where(r.c.contact_id.in_([i for i in ids if i != survivor_id]), clash)
            .values(occurrence_key=sa.func.substr(r.c.occurrence_key, 1, 150) + sa.literal(":merged:")
                    + sa.cast(r.c.id, sa.String),
                    status=sa.case((r.c.status == "active", "exited"), else_=r.c.status),
                    exit_reason=sa.case((r.c.status == "active", "merged"), else_=r.c.exit_reason),
                    lease_until=None, updated_at=now))
    return db.session.execute(stmt.execution_options(synchronize_session=False)).rowcount or 0
