"""Campaign content and settings: create, edit, delete, preview, test send.

Sending itself (launch, pause, resume, cancel, stats) lives in campaigns.dispatch. A campaign is
editable while nothing is being sent from it: draft, scheduled or paused.
"""
from __future__ import annotations

from decimal import Decimal
from email.utils import parseaddr

import sqlalchemy as sa
from flask import current_app

from campaigns.models import Campaign
from campaigns.rendering import RenderError, TemplateError, compiled, validate_content
from campaigns.sms import sms_info
from contacts.models import CHANNELS, Contact, Topic
from contacts.services import decode_cursor, encode_cursor
from envoi import MAX_ID
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.types import utcnow

EDITABLE = ("draft", "scheduled", "paused")
FIELDS = ("name", "channel", "segment_id", "topic", "exclude_segment_ids", "sender", "subject", "html", "text",
          "body")
MAX_TEST_RECIPIENTS = 10
LIMITS = {"name": 200, "sender": 300, "subject": 998, "html": 1_000_000, "text": 1_000_000, "body": 10_000}


def _iso(value):
    return value.isoformat() if value else None


def campaign_to_dict(campaign: Campaign) -> dict:
    topic = db.session.get(Topic, campaign.topic_id) if campaign.topic_id else None
    data = {
        "id": campaign.id, "name": campaign.name, "channel": campaign.channel, "segment_id": campaign.segment_id,
        "topic": topic.slug if topic else None, "exclude_segment_ids": list(campaign.exclude_segment_ids or []),
        "sender": campaign.sender, "subject": campaign.subject, "html": campaign.html, "text": campaign.text,
        "body": campaign.body, "status": campaign.status, "status_reason": campaign.status_reason,
        "send_at": _iso(campaign.send_at), "started_at": _iso(campaign.started_at),
        "finished_at": _iso(campaign.finished_at), "targeted": campaign.targeted, "author_id": campaign.author_id,
        "created_at": _iso(campaign.created_at), "updated_at": _iso(campaign.updated_at),
    }
    if campaign.channel == "sms":
        data["sms"] = sms_estimate(campaign)
    return data


def sms_estimate(campaign: Campaign) -> dict:
    """Encoding and segments of the SMS as a sample contact would get it, opt-out mention included."""
    try:
        body = compiled(campaign).sms(_test_contact(None, None))
    except (TemplateError, RenderError):
        optout = current_app.config.get("SMS_OPTOUT_TEXT") or ""
        body = f"{campaign.body or ''}\n{optout}".strip()
    return sms_info(body)


# ---------------------------------------------------------------- reading

def get_campaign(campaign_id: int, *, lock: bool = False) -> Campaign:
    if not isinstance(campaign_id, int) or not 0 < campaign_id <= MAX_ID:
        raise NotFound("campaign not found")
    query = sa.select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        query = query.with_for_update()
    campaign = db.session.scalars(query).one_or_none()
    if campaign is None:
        raise NotFound("campaign not found")
    return campaign


def list_campaigns(cursor: str | None, limit: int, status: str | None = None) -> tuple[list[dict], str | None]:
    """One page of campaigns, newest first (id descending)."""
    before = decode_cursor(cursor)
    query = sa.select(Campaign).order_by(Campaign.id.desc()).limit(limit + 1)
    if before is not None:
        if not before.isdigit() or int(before) > MAX_ID:
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"})
        query = query.where(Campaign.id < int(before))
    if status:
        query = query.where(Campaign.status == status)
    rows = db.session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [campaign_to_dict(c) for c in rows], (encode_cursor(rows[-1].id) if more else None)


# ---------------------------------------------------------------- writing

def _text(data: dict, field: str, errors: dict, required: bool = False) -> str | None:
    value = data.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[field] = "required"
        return None
    if not isinstance(value, str):
        errors[field] = "must be a string"
        return None
    if len(value) > LIMITS[field]:
        errors[field] = f"at most {LIMITS[field]} characters"
        return None
    return value


def _segment_ids(value, field: str, errors: dict) -> list[int]:
    from segments.models import Segment

    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 < i <= MAX_ID for i in ids):
        errors[field] = "expected segment ids" if isinstance(value, list) else "expected a segment id"
        return []
    found = set(db.session.scalars(sa.select(Segment.id).where(Segment.id.in_(ids)))) if ids else set()
    missing = [str(i) for i in ids if i not in found]
    if missing:
        errors[field] = f"no segment {', '.join(missing)}"
    return list(dict.fromkeys(ids))


def _sender(value, errors: dict) -> str | None:
    from contacts.validation import normalise_email

    name, address = parseaddr(value)
    if not address or "\n" in value or "\r" in value:
        errors["sender"] = "expected an address such as 'Shop <news@example.com>'"
        return None
    try:
        normalise_email(address, "sender")
    except ValidationError as err:
        errors.update(err.fields)
        return None
    return value.strip()


def clean_campaign(data: dict) -> dict:
    """Check a whole campaign (after a PATCH is merged); 422 naming every field at fault."""
    errors: dict[str, str] = {}
    out: dict = {}
    out["name"] = _text(data, "name", errors, required=True)
    channel = data.get("channel")
    if channel not in CHANNELS:
        errors["channel"] = f"one of {', '.join(CHANNELS)}"
    out["channel"] = channel
    segment_id = data.get("segment_id")
    out["segment_id"] = None
    if segment_id is not None:
        ids = _segment_ids(segment_id, "segment_id", errors)
        out["segment_id"] = ids[0] if ids and "segment_id" not in errors else None
    topic = data.get("topic")
    out["topic_id"] = None
    if topic is not None:
        if not isinstance(topic, str) or not topic.strip():
            errors["topic"] = "expected a topic slug"
        else:
            found = db.session.scalar(sa.select(Topic.id).where(Topic.slug == topic.strip()))
            if found is None:
                errors["topic"] = f"unknown topic {topic.strip()}"
            out["topic_id"] = found
    if segment_id is None and topic is None:
        errors["audience"] = "give a segment_id and/or a topic"
    exclude = data.get("exclude_segment_ids") or []
    out["exclude_segment_ids"] = _segment_ids(exclude, "exclude_segment_ids", errors) if exclude else []
    sender = data.get("sender")
    out["sender"] = None
    if sender not in (None, ""):
        if channel == "sms":
            errors["sender"] = "SMS are sent from ENVOI_TWILIO_FROM; leave sender empty"
        elif not isinstance(sender, str) or len(sender) > LIMITS["sender"]:
            errors["sender"] = "expected an address such as 'Shop <news@example.com>'"
        else:
            out["sender"] = _sender(sender, errors)
    for field in ("subject", "html", "text", "body"):
        out[field] = _text(data, field, errors)
    if channel == "email":
        if out["subject"] is None and "subject" not in errors:
            errors["subject"] = "required for an email campaign"
        if out["html"] is None and out["text"] is None and "html" not in errors and "text" not in errors:
            errors["html"] = "give html and/or text"
        out["body"] = None
    elif channel == "sms":
        if out["body"] is None and "body" not in errors:
            errors["body"] = "required for an SMS campaign"
        out["subject"] = out["html"] = out["text"] = None
    if channel in CHANNELS:
        try:
            validate_content(channel, *(None if f in errors else out[f] for f in ("subject", "html", "text", "body")))
        except TemplateError as err:
            errors.update(err.fields)
    if errors:
        raise ValidationError("invalid campaign", errors)
    return out


def create_campaign(data: dict, author_id: int | None = None) -> Campaign:
    """A new draft; content and audience are checked (422 with each field and template line)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValidationError("unknown fields", {k: "unknown field" for k in unknown})
    clean = clean_campaign(data)
    now = utcnow()
    campaign = Campaign(**clean, status="draft", author_id=author_id, created_at=now, updated_at=now)
    db.session.add(campaign)
    db.session.commit()
    return campaign


def _as_input(campaign: Campaign) -> dict:
    topic = db.session.get(Topic, campaign.topic_id) if campaign.topic_id else None
    return {"name": campaign.name, "channel": campaign.channel, "segment_id": campaign.segment_id,
            "topic": topic.slug if topic else None, "exclude_segment_ids": list(campaign.exclude_segment_ids or []),
            "sender": campaign.sender, "subject": campaign.subject, "html": campaign.html, "text": campaign.text,
            "body": campaign.body}


def update_campaign(campaign_id: int, data: dict) -> Campaign:
    """Change a draft, scheduled or paused campaign (409 otherwise); the result is checked whole."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValidationError("unknown fields", {k: "unknown field" for k in unknown})
    campaign = get_campaign(campaign_id, lock=True)
    if campaign.status not in EDITABLE:
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: only a draft, scheduled or paused campaign can be edited")
    if "channel" in data and data["channel"] != campaign.channel and campaign.status != "draft":
        db.session.rollback()
        raise Conflict("the channel of a scheduled or paused campaign cannot change")
    merged = {**_as_input(campaign), **data}
    try:
        clean = clean_campaign(merged)
    except ValidationError:
        db.session.rollback()
        raise
    for key, value in clean.items():
        setattr(campaign, key, value)
    campaign.updated_at = utcnow()
    db.session.commit()
    return campaign


def delete_campaign(campaign_id: int) -> None:
    """Only a draft can go: anything sent (or scheduled) is kept as the record of it."""
    campaign = get_campaign(campaign_id, lock=True)
    if campaign.status != "draft":
        db.session.rollback()
        raise Conflict(f"campaign is {campaign.status}: only a draft can be deleted (cancel it instead)")
    db.session.delete(campaign)
    db.session.commit()


# ---------------------------------------------------------------- preview and test send

def _test_contact(email: str | None, phone: str | None) -> Contact:
    """A contact that is not stored: merge fields fall back to their defaults."""
    return Contact(id=None, email=email, phone=phone, tags=[], attributes={}, lifecycle="prospect",
                   email_status="none", sms_status="none", purchase_count=0, purchase_total=Decimal("0"))


def _contact(contact_id) -> Contact:
    if not isinstance(contact_id, int) or isinstance(contact_id, bool) or not 0 < contact_id <= MAX_ID:
        raise ValidationError("invalid contact", {"contact_id": "expected a contact id"})
    contact = db.session.get(Contact, contact_id)
    if contact is None or contact.erased_at is not None:
        raise ValidationError("unknown contact", {"contact_id": f"no contact {contact_id}"})
    return contact


def _render_failed(err: RenderError) -> ValidationError:
    return ValidationError("the template failed for this contact", {err.field: str(err)})


def preview(campaign_id: int, contact_id=None) -> dict:
    """The campaign as `contact_id` (or a contact with no data) would get it."""
    campaign = get_campaign(campaign_id)
    contact = _contact(contact_id) if contact_id is not None else _test_contact(None, None)
    template = compiled(campaign)
    try:
        if campaign.channel == "email":
            return template.render_email(contact)
        body = template.sms(contact)
    except RenderError as err:
        raise _render_failed(err) from None
    return {"body": body, "sms": sms_info(body)}


def send_test(campaign_id: int, to, contact_id=None) -> dict:
    """Send the campaign now to the given addresses or numbers, subject prefixed [TEST]; nothing is
    recorded as a delivery. Personalised as `contact_id` when given, else with empty merge fields."""
    from campaigns import channels
    from contacts.validation import normalise_email, normalise_phone

    campaign = get_campaign(campaign_id)
    if not isinstance(to, list) or not to:
        raise ValidationError("invalid recipients", {"to": "expected a list of addresses or numbers"})
    if len(to) > MAX_TEST_RECIPIENTS:
        raise ValidationError("too many recipients", {"to": f"at most {MAX_TEST_RECIPIENTS}"})
    errors, recipients = {}, []
    region = current_app.config["DEFAULT_REGION"]
    for i, value in enumerate(to):
        field = f"to[{i}]"
        try:
            if not isinstance(value, str):
                raise ValidationError("invalid", {field: "expected a string"})
            recipients.append(normalise_email(value, field) if campaign.channel == "email"
                              else normalise_phone(value, region, field))
        except ValidationError as err:
            errors.update(err.fields or {field: err.message})
    if errors:
        raise ValidationError("invalid recipients", errors)
    base = _contact(contact_id) if contact_id is not None else None
    template = compiled(campaign)
    results = []
    for address in recipients:
        contact = base or _test_contact(address if campaign.channel == "email" else None,
                                        address if campaign.channel == "sms" else None)
        try:
            if campaign.channel == "email":
                provider_id = channels.send_email(
                    template.email(contact, delivery_id=None, to=address, subject_prefix="[TEST] "))
            else:
                provider_id = channels.send_sms(address, "[TEST] " + template.sms(contact))
        except RenderError as err:
            raise _render_failed(err) from None
        except channels.ChannelError as err:
            results.append({"to": address, "sent": False, "error": str(err), "code": err.code})
            continue
        results.append({"to": address, "sent": True, "provider_id": provider_id})
    return {"results": results}
