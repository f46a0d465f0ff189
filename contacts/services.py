"""Services of the customer file. Each takes primitives, owns its transaction, raises domain errors."""
from __future__ import annotations

import base64
import hmac
from datetime import datetime

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.exc import IntegrityError

from contacts.errors import Conflict, NotFound, Suppressed, ValidationError
from contacts.models import (ACTION_KINDS, ATTRIBUTE_TYPES, PERSONAL_FIELDS, Action, AttributeDefinition,
                             ConsentEvent, Contact, ContactTopic, Purchase, Suppression, Topic)
from contacts.query import has_tag, quick_search
from contacts.validation import (clean_contact, clean_tags, normalise_email, normalise_phone, parse_amount,
                                 parse_datetime)
from envoi import MAX_ID
from envoi.extensions import db
from envoi.types import in_values, utcnow

# Statuses after which only a consent given later may confirm again.
OPTED_OUT = {"unsubscribed", "bounced", "complained", "invalid"}
USER_ACTIONS = ("call", "meeting", "mailing", "postal_mailing", "note", "sms")


def consent_predates_opt_out(wanted: str, current: str, since, consent: dict | None) -> bool:
    """Confirming someone who opted out needs a consent given after the opt-out (API and imports)."""
    return wanted == "confirmed" and current in OPTED_OUT and since is not None \
        and consent is not None and consent["at"] <= since


# --- reference data ---------------------------------------------------------------------------

def attribute_types() -> dict[str, str]:
    return dict(db.session.execute(sa.select(AttributeDefinition.key, AttributeDefinition.type)).all())


def define_attribute(key: str, type_: str, label: str = "") -> AttributeDefinition:
    import re

    if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", key):
        raise ValidationError("invalid attribute", {"key": "lower-case letters, digits and _, starting with a letter"})
    if type_ not in ATTRIBUTE_TYPES:
        raise ValidationError("invalid attribute", {"type": f"one of {', '.join(ATTRIBUTE_TYPES)}"})
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise ValidationError("invalid attribute", {"label": "a string of at most 200 characters"})
    if db.session.scalar(sa.select(AttributeDefinition.id).where(AttributeDefinition.key == key)):
        raise Conflict("attribute exists", {"key": "already declared"})
    attr = AttributeDefinition(key=key, type=type_, label=label or "")
    db.session.add(attr)
    db.session.commit()
    return attr


def create_topic(slug: str, name: str, description: str = "") -> Topic:
    import re

    if not isinstance(slug, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", slug):
        raise ValidationError("invalid topic", {"slug": "lower-case letters, digits and -"})
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("invalid topic", {"name": "required"})
    if db.session.scalar(sa.select(Topic.id).where(Topic.slug == slug)):
        raise Conflict("topic exists", {"slug": "already used"})
    topic = Topic(slug=slug, name=name.strip()[:200], description=description or "")
    db.session.add(topic)
    db.session.commit()
    return topic


def update_topic(topic_id: int, data: dict) -> Topic:
    topic = db.session.get(Topic, topic_id) or _missing("topic", topic_id)
    if "name" in data:
        if not data["name"] or not str(data["name"]).strip():
            raise ValidationError("invalid topic", {"name": "required"})
        topic.name = str(data["name"]).strip()[:200]
    if "description" in data:
        topic.description = data["description"] or ""
    db.session.commit()
    return topic


def delete_topic(topic_id: int) -> None:
    topic = db.session.get(Topic, topic_id) or _missing("topic", topic_id)
    db.session.delete(topic)
    db.session.commit()


def topic_ids(slugs, field: str = "topics") -> dict[str, int]:
    slugs = list(slugs)
    found = dict(db.session.execute(sa.select(Topic.slug, Topic.id).where(Topic.slug.in_(slugs))).all()) if slugs else {}
    unknown = [s for s in slugs if s not in found]
    if unknown:
        raise ValidationError("unknown topic", {field: f"unknown topic(s): {', '.join(unknown)}"})
    return found


def _missing(what: str, ident):
    raise NotFound(f"no {what} {ident}")


# --- suppression (erased people) --------------------------------------------------------------

def suppression_hash(kind: str, value: str, key: bytes | None = None) -> str:
    # hmac.digest: the same HMAC-SHA256 in one C call (a batch hashes hundreds of addresses).
    key = current_app.config["SECRET_KEY"].encode() if key is None else key
    return hmac.digest(key, f"{kind}:{value}".encode(), "sha256").hex()


def suppressed_values(emails=(), phones=()) -> set[str]:
    """Which of these (normalised) addresses and numbers were erased and may not come back."""
    key = current_app.config["SECRET_KEY"].encode()
    wanted = {suppression_hash("email", e, key): e for e in emails if e}
    wanted.update({suppression_hash("phone", p, key): p for p in phones if p})
    if not wanted:
        return set()
    hits = db.session.scalars(sa.select(Suppression.value_hash).where(
        in_values(Suppression.value_hash, list(wanted), db.session.get_bind().dialect.name)))
    return {wanted[h] for h in hits}


def lift_suppression(kind: str, value: str) -> None:
    """The person came back by themselves (a signup they confirm): the block no longer applies."""
    db.session.execute(sa.delete(Suppression).where(Suppression.value_hash == suppression_hash(kind, value)))


# --- contacts ---------------------------------------------------------------------------------

def get_contact(contact_id: int) -> Contact:
    contact = db.session.get(Contact, contact_id) if 0 < contact_id <= MAX_ID else None
    if contact is None or contact.erased_at is not None:
        raise NotFound(f"no contact {contact_id}")
    return contact


def find_contact(email: str | None = None, phone: str | None = None) -> Contact | None:
    if email:
        found = db.session.scalar(sa.select(Contact).where(Contact.email == email))
        if found is not None:
            return found
    if phone:
        return db.session.scalar(sa.select(Contact).where(Contact.phone == phone))
    return None


def upsert_contact(raw: dict, *, method: str = "api", author_id: int | None = None,
                   context: dict | None = None) -> tuple[Contact, bool]:
    """Create or update the contact with this email or phone; never creates a second one.

    Concurrent calls for one address converge: the loser of the insert race retries as an update.
    Returns (contact, created).
    """
    clean = clean_contact(raw, attribute_types=attribute_types(), region=current_app.config["DEFAULT_REGION"])
    blocked = suppressed_values([clean.get("email")], [clean.get("phone")])
    if blocked:
        field = "email" if clean.get("email") in blocked else "phone"
        raise Suppressed("this person asked for their data to be erased", {field: "erased at the person's request; only they can sign up again"})
    for attempt in range(3):
        try:
            contact = _locate_for_upsert(clean)
            created = contact is None
            if created:
                contact = Contact(tags=[], attributes={}, lifecycle="prospect")
                db.session.add(contact)
            _apply(contact, clean, method=method, author_id=author_id, context=context or {}, created=created)
            db.session.commit()
            return contact, created
        except IntegrityError:
            # Someone inserted the same address or number between our read and our write.
            db.session.rollback()
    raise Conflict("the contact changed concurrently; retry", {})


def _locate_for_upsert(clean: dict) -> Contact | None:
    email, phone = clean.get("email"), clean.get("phone")
    by_email = db.session.scalar(sa.select(Contact).where(Contact.email == email).with_for_update()) if email else None
    by_phone = db.session.scalar(sa.select(Contact).where(Contact.phone == phone).with_for_update()) if phone else None
    if by_email is not None and by_phone is not None and by_email.id != by_phone.id:
        raise Conflict("email and phone belong to two different contacts",
                       {"phone": f"already the phone of contact {by_phone.id}; merge them with flask contacts dedupe"})
    return by_email or by_phone


def update_contact(contact_id: int, raw: dict, *, method: str = "api", author_id: int | None = None) -> Contact:
    """PATCH: change only the given fields."""
    contact = get_contact(contact_id)
    clean = clean_contact(raw, attribute_types=attribute_types(), region=current_app.config["DEFAULT_REGION"],
                          partial=True)
    email = clean.get("email", contact.email)
    phone = clean.get("phone", contact.phone)
    if not email and not phone:
        raise ValidationError("invalid contact", {"email": "an email or a phone is required"})
    for field in ("email", "phone"):
        value = clean.get(field)
        if value and value != getattr(contact, field):
            if suppressed_values(*(([value], []) if field == "email" else ([], [value]))):
                raise Suppressed("erased address", {field: "erased at the person's request"})
            other = db.session.scalar(sa.select(Contact.id).where(getattr(Contact, field) == value))
            if other is not None:
                raise Conflict(f"{field} already used", {field: f"already used by contact {other}"})
    try:
        _apply(contact, clean, method=method, author_id=author_id, context={}, created=False)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("email or phone taken concurrently", {}) from None
    return contact


def _apply(contact: Contact, clean: dict, *, method: str, author_id, context: dict, created: bool) -> bool:
    """Write normalised values onto the contact; record consents. Returns whether anything changed."""
    now = utcnow()
    changed = created
    for field in ("email", "phone", *PERSONAL_FIELDS):
        if field in clean and getattr(contact, field) != clean[field]:
            if field == "lifecycle" and clean[field] is None:
                continue
            setattr(contact, field, clean[field])
            changed = True
    tags = list(contact.tags or [])
    if "tags" in clean:
        tags = list(clean["tags"])
    tags = sorted(set(tags) | set(clean.get("add_tags", ())) - set(clean.get("remove_tags", ())))
    if tags != list(contact.tags or []):
        contact.tags = tags
        changed = True
    if "attributes" in clean:
        attrs = dict(contact.attributes or {})
        for key, value in clean["attributes"].items():
            if value is None:
                attrs.pop(key, None)
            else:
                attrs[key] = value
        if attrs != (contact.attributes or {}):
            contact.attributes = attrs
            changed = True
    if created:
        db.session.flush()  # we need the id for consents and topics
    consent = clean.get("consent")
    for channel in ("email", "sms"):
        wanted = clean.get(f"{channel}_status")
        if wanted:
            changed |= _set_status(contact, channel, wanted, consent, method, author_id, context, now)
    if "topics" in clean:
        changed |= _set_topics(contact, clean["topics"], consent, method, context, now)
    if changed:
        contact.updated_at = now
    return changed


def _set_status(contact, channel, wanted, consent, method, author_id, context, now) -> bool:
    current = getattr(contact, f"{channel}_status")
    if wanted == current:
        return False
    since = getattr(contact, f"{channel}_status_at")
    if consent_predates_opt_out(wanted, current, since, consent):
        raise Conflict("consent predates the opt-out",
                       {f"{channel}_status": f"{current} since {since.isoformat()}; the consent given at "
                                             f"{consent['at'].isoformat()} is older"})
    setattr(contact, f"{channel}_status", wanted)
    setattr(contact, f"{channel}_status_at", now)
    if wanted in ("confirmed", "unsubscribed"):
        _consent_event(contact, channel, None, "granted" if wanted == "confirmed" else "withdrawn", consent,
                       method, context, now, data={"author_id": author_id} if author_id else {})
    return True


def _set_topics(contact, slugs, consent, method, context, now) -> bool:
    ids = topic_ids(slugs)
    links = {link.topic_id: link for link in contact.topic_links}
    changed = False
    for topic_id in ids.values():
        link = links.get(topic_id)
        if link is None:
            contact.topic_links.append(ContactTopic(topic_id=topic_id, subscribed=True, updated_at=now))
        elif not link.subscribed:
            link.subscribed, link.updated_at = True, now
        else:
            continue
        changed = True
        _consent_event(contact, "email", topic_id, "granted", consent, method, context, now)
    for topic_id, link in links.items():
        if link.subscribed and topic_id not in ids.values():
            link.subscribed, link.updated_at = False, now
            changed = True
            _consent_event(contact, "email", topic_id, "withdrawn", consent, method, context, now)
    return changed


def _consent_event(contact, channel, topic_id, kind, consent, method, context, now, data=None):
    """Append proof: the claimed consent (source, time, text) and where the request came from."""
    consent = consent or {}
    db.session.add(ConsentEvent(
        contact_id=contact.id, channel=channel, topic_id=topic_id, kind=kind, method=method,
        source=consent.get("source") or context.get("source") or method, text=consent.get("text"),
        consented_at=consent.get("at") or now, recorded_at=now, ip=context.get("ip"),
        user_agent=context.get("user_agent"), page_url=context.get("page_url"), data=data or {},
    ))


def contact_topics(contact_ids) -> dict[int, list[str]]:
    rows = db.session.execute(
        sa.select(ContactTopic.contact_id, Topic.slug).join(Topic, Topic.id == ContactTopic.topic_id)
        .where(ContactTopic.contact_id.in_(list(contact_ids)), ContactTopic.subscribed.is_(True))
        .order_by(Topic.slug)
    ).all()
    out: dict[int, list[str]] = {}
    for cid, slug in rows:
        out.setdefault(cid, []).append(slug)
    return out


def contact_to_dict(contact: Contact, topics: list[str] | None = None) -> dict:
    return {
        "id": contact.id, "email": contact.email, "phone": contact.phone,
        **{f: (getattr(contact, f).isoformat() if f == "birth_date" and contact.birth_date else getattr(contact, f))
           for f in PERSONAL_FIELDS},
        "tags": list(contact.tags or []), "attributes": dict(contact.attributes or {}),
        "topics": topics if topics is not None else contact_topics([contact.id]).get(contact.id, []),
        "email_status": contact.email_status, "sms_status": contact.sms_status,
        "purchase_count": contact.purchase_count, "purchase_total": str(contact.purchase_total),
        "first_purchase_at": _iso(contact.first_purchase_at), "last_purchase_at": _iso(contact.last_purchase_at),
        "last_activity_at": _iso(contact.last_activity_at),
        "created_at": _iso(contact.created_at), "updated_at": _iso(contact.updated_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# --- listing ----------------------------------------------------------------------------------

def encode_cursor(value) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, field: str = "cursor") -> str | None:
    if not cursor:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except Exception:  # noqa: BLE001 - any garbage is the same user error
        raise ValidationError("invalid cursor", {field: "not a cursor returned by this API"}) from None


def contact_filters(filters: dict) -> list:
    """SQL conditions for the list filters; the keys are the query parameters."""
    conds = [Contact.erased_at.is_(None)]
    region = current_app.config["DEFAULT_REGION"]
    if filters.get("email"):
        conds.append(Contact.email == normalise_email(filters["email"]))
    if filters.get("phone"):
        conds.append(Contact.phone == normalise_phone(filters["phone"], region))
    if filters.get("city"):
        conds.append(sa.func.lower(Contact.city) == filters["city"].strip().lower())
    for key in ("postal_code", "country", "lifecycle", "email_status", "sms_status", "source", "language"):
        if filters.get(key):
            value = filters[key].strip()
            conds.append(getattr(Contact, key) == (value.upper() if key in ("postal_code", "country") else value))
    if filters.get("tag"):
        errors: dict = {}
        tags = clean_tags([filters["tag"]], errors, "tag")
        if errors:
            raise ValidationError("invalid filter", errors)
        if tags:  # a blank tag (spaces only) filters nothing, like an absent one
            conds.append(has_tag(tags[0]))
    if filters.get("topic"):
        topic_id = topic_ids([filters["topic"]], "topic")[filters["topic"]]
        conds.append(sa.exists().where(ContactTopic.contact_id == Contact.id, ContactTopic.topic_id == topic_id,
                                       ContactTopic.subscribed.is_(True)))
    if filters.get("q"):
        conds.append(quick_search(filters["q"], region))
    if filters.get("updated_since"):
        conds.append(Contact.updated_at >= parse_datetime(filters["updated_since"], "updated_since"))
    if filters.get("segment") is not None:
        conds.append(_segment_condition(filters["segment"]))
    return conds


def _segment_condition(segment_id):
    """Members of a saved segment, evaluated now (segments are live, never cached)."""
    from segments.models import Segment
    from segments.services import segment_query

    try:
        ident = int(segment_id)
    except (TypeError, ValueError):
        ident = 0
    segment = db.session.get(Segment, ident) if 0 < ident <= MAX_ID else None
    if segment is None:
        raise ValidationError("unknown segment", {"segment": f"no segment {segment_id}"})
    # Filtering by the member predicate itself keeps the keyset page an index walk.
    return Contact.id.in_(segment_query(segment.rules))


def list_contacts(filters: dict, cursor: str | None, limit: int) -> tuple[list[dict], str | None]:
    """One keyset page (id order) of the contacts matching the filters."""
    after = decode_cursor(cursor)
    conds = contact_filters(filters)
    if after is not None:
        try:
            if not 0 <= int(after) <= MAX_ID:
                raise ValueError
            conds.append(Contact.id > int(after))
        except ValueError:
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"}) from None
    rows = db.session.scalars(sa.select(Contact).where(*conds).order_by(Contact.id).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    topics = contact_topics([c.id for c in rows]) if rows else {}
    items = [contact_to_dict(c, topics.get(c.id, [])) for c in rows]
    return items, (encode_cursor(rows[-1].id) if more else None)


# --- actions, purchases, timeline --------------------------------------------------------------

def record_action(contact_id: int, kind: str, *, data: dict | None = None, occurred_at=None,
                  author_id: int | None = None) -> Action:
    """Log an interaction (call, meeting, note ...) on the contact's timeline."""
    if kind not in USER_ACTIONS:
        raise ValidationError("invalid action", {"kind": f"one of {', '.join(USER_ACTIONS)}"})
    contact = get_contact(contact_id)
    when = parse_datetime(occurred_at, "occurred_at") if occurred_at else utcnow()
    if data is not None and not isinstance(data, dict):
        raise ValidationError("invalid action", {"data": "must be an object"})
    action = Action(contact_id=contact.id, kind=kind, occurred_at=when, author_id=author_id, data=data or {})
    db.session.add(action)
    if contact.last_activity_at is None or when > contact.last_activity_at:
        contact.last_activity_at = when
    db.session.commit()
    return action


def log_action(contact_id: int, kind: str, data: dict | None = None, author_id: int | None = None) -> None:
    """Add a system action to the current transaction (signup, import, merge ...); the caller commits."""
    assert kind in ACTION_KINDS, kind
    db.session.add(Action(contact_id=contact_id, kind=kind, author_id=author_id, data=data or {}))


def _clean_purchase(raw, index: int, region: str) -> dict:
    p = f"[{index}]"
    if not isinstance(raw, dict):
        raise ValidationError("invalid purchase", {p: "must be an object"})
    errors: dict = {}
    allowed = {"contact", "contact_id", "email", "phone", "sku", "name", "category", "quantity", "amount",
               "currency", "occurred_at", "order_ref", "store"}
    for key in raw:
        if key not in allowed:
            errors[f"{p}.{key}"] = "unknown field"
    ref = dict(raw.get("contact") or {})
    for key in ("contact_id", "email", "phone"):
        if raw.get(key) is not None:
            ref[key.replace("contact_", "")] = raw[key]
    clean: dict = {}
    try:
        if ref.get("id") is not None:
            if isinstance(ref["id"], bool) or not 0 < int(ref["id"]) <= MAX_ID:
                raise ValueError
            clean["contact_id"] = int(ref["id"])
        elif ref.get("email"):
            clean["email"] = normalise_email(ref["email"], f"{p}.contact.email")
        elif ref.get("phone"):
            clean["phone"] = normalise_phone(ref["phone"], region, f"{p}.contact.phone")
        else:
            errors[f"{p}.contact"] = "give the contact's id, email or phone"
    except (ValidationError, TypeError, ValueError) as err:
        errors.update(getattr(err, "fields", None) or {f"{p}.contact.id": "must be an integer"})
    sku = raw.get("sku")
    if not isinstance(sku, str) or not sku.strip() or len(sku) > 100:
        errors[f"{p}.sku"] = "required, at most 100 characters"
    clean["sku"] = (sku or "").strip() if isinstance(sku, str) else None
    for key, size in (("name", 300), ("category", 100), ("order_ref", 100)):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > size):
            errors[f"{p}.{key}"] = f"a string of at most {size} characters"
        clean[key] = value.strip() if isinstance(value, str) and value.strip() else None
    quantity = raw.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        errors[f"{p}.quantity"] = "a whole number, 1 or more"
    clean["quantity"] = quantity
    try:
        clean["amount"] = parse_amount(raw.get("amount"), f"{p}.amount")
    except ValidationError as err:
        errors.update(err.fields)
    currency = raw.get("currency")
    if not isinstance(currency, str) or len(currency.strip()) != 3 or not currency.strip().isalpha():
        errors[f"{p}.currency"] = "an ISO 4217 code such as EUR"
    else:
        clean["currency"] = currency.strip().upper()
    try:
        clean["occurred_at"] = parse_datetime(raw.get("occurred_at"), f"{p}.occurred_at") \
            if raw.get("occurred_at") is not None else utcnow()
    except ValidationError as err:
        errors.update(err.fields)
    store = raw.get("store", "web")
    if store not in ("web", "store", "phone", "other"):
        errors[f"{p}.store"] = "one of web, store, phone, other"
    clean["store"] = store
    if errors:
        raise ValidationError("invalid purchase", errors)
    return clean


def record_purchases(items: list) -> dict:
    """Record purchases (all or none); an order line already recorded is skipped, not doubled.

    A purchase for an unknown email or phone creates the contact as a customer. The contact's
    purchase aggregates are recomputed from the purchases, so concurrent batches stay exact.
    """
    if not isinstance(items, list) or not items:
        raise ValidationError("invalid purchases", {"_": "expected a purchase or a non-empty list of purchases"})
    if len(items) > 10000:
        raise ValidationError("too many purchases", {"_": "at most 10000 per request"})
    region = current_app.config["DEFAULT_REGION"]
    errors: dict = {}
    cleaned = []
    for i, raw in enumerate(items):
        try:
            cleaned.append(_clean_purchase(raw, i, region))
        except ValidationError as err:
            errors.update(err.fields)
    if errors:
        raise ValidationError("invalid purchases", errors)
    for attempt in range(3):
        try:
            result = _store_purchases(cleaned)
            db.session.commit()
            return result
        except IntegrityError:
            db.session.rollback()
    raise Conflict("purchases changed concurrently; retry", {})


def _store_purchases(cleaned: list[dict]) -> dict:
    ids_by_ref: dict = {}
    for i, item in enumerate(cleaned):
        if "contact_id" in item:
            cid = item["contact_id"]
            contact = db.session.get(Contact, cid)
            if contact is None or contact.erased_at is not None:
                raise NotFound(f"no contact {cid}", {f"[{i}].contact.id": "no such contact"})
        else:
            key = ("email", item["email"]) if "email" in item else ("phone", item["phone"])
            if key not in ids_by_ref:
                contact = find_contact(**{key[0]: key[1]})
                if contact is None:
                    if suppressed_values(*(([key[1]], []) if key[0] == "email" else ([], [key[1]]))):
                        raise Suppressed("erased", {f"[{i}].contact.{key[0]}": "erased at the person's request"})
                    contact = Contact(tags=[], attributes={}, lifecycle="customer", source="purchase",
                                      **{key[0]: key[1]})
                    db.session.add(contact)
                    db.session.flush()
                ids_by_ref[key] = contact.id
            cid = ids_by_ref[key]
        item["contact_id"] = cid
    # Serialise writers per contact (in id order, so no deadlock): the aggregates recomputed
    # below then see every purchase committed before ours.
    db.session.execute(sa.select(Contact.id).where(Contact.id.in_(sorted({i["contact_id"] for i in cleaned})))
                       .order_by(Contact.id).with_for_update())
    created, duplicates, out = 0, 0, []
    seen: set = set()
    for item in cleaned:
        ref = (item["order_ref"], item["sku"])
        if item["order_ref"] is not None:
            if ref in seen or db.session.scalar(sa.select(Purchase.id).where(
                    Purchase.order_ref == item["order_ref"], Purchase.sku == item["sku"])):
                duplicates += 1
                continue
            seen.add(ref)
        purchase = Purchase(**{k: v for k, v in item.items() if k not in ("email", "phone")})
        db.session.add(purchase)
        created += 1
        out.append(purchase)
    db.session.flush()
    refresh_purchase_aggregates({p.contact_id for p in out})
    return {"created": created, "duplicates": duplicates, "ids": [p.id for p in out]}


def refresh_purchase_aggregates(contact_ids) -> None:
    """Recompute count, total, first and last purchase from the purchases themselves."""
    if not contact_ids:
        return
    p = Purchase
    stats = sa.select(p.contact_id, sa.func.count(p.id), sa.func.coalesce(sa.func.sum(p.amount), 0),
                      sa.func.min(p.occurred_at), sa.func.max(p.occurred_at)) \
        .where(p.contact_id.in_(list(contact_ids))).group_by(p.contact_id)
    for cid, count, total, first, last in db.session.execute(stats).all():
        contact = db.session.get(Contact, cid)
        contact.purchase_count, contact.purchase_total = count, total
        contact.first_purchase_at, contact.last_purchase_at = first, last
        if contact.lifecycle == "prospect":
            contact.lifecycle = "customer"
        if contact.last_activity_at is None or (last and last > contact.last_activity_at):
            contact.last_activity_at = last


def timeline(contact_id: int, cursor: str | None, limit: int) -> tuple[list[dict], str | None]:
    """Everything that happened to a contact, newest first: actions, consents, purchases, and the
    mailings and SMS of campaigns (from the deliveries)."""
    get_contact(contact_id)
    before = None
    if cursor:
        raw = decode_cursor(cursor)
        try:
            at, kind, ident = raw.split("|")
            before = (datetime.fromisoformat(at), kind, int(ident))
        except ValueError:
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"}) from None
    sources = (
        ("action", Action, Action.occurred_at,
         lambda a: {"kind": a.kind, "author_id": a.author_id, "data": a.data}),
        ("consent", ConsentEvent, ConsentEvent.recorded_at,
         lambda e: {"kind": e.kind, "channel": e.channel, "topic_id": e.topic_id, "method": e.method,
                    "source": e.source, "text": e.text, "consented_at": _iso(e.consented_at)}),
        ("purchase", Purchase, Purchase.occurred_at,
         lambda p: {"kind": "purchase", "sku": p.sku, "name": p.name, "category": p.category,
                    "quantity": p.quantity, "amount": str(p.amount), "currency": p.currency,
                    "order_ref": p.order_ref, "store": p.store}),
    )
    merged = []
    for name, model, col, render in sources:
        q = sa.select(model).where(model.contact_id == contact_id)
        if before is not None:
            q = q.where(col <= before[0])
        for row in db.session.scalars(q.order_by(col.desc(), model.id.desc()).limit(limit + 1 + 50)):
            at = getattr(row, col.key)
            key = (at, name, row.id)
            if before is not None and not key < before:
                continue
            merged.append((key, {"type": name, "id": row.id, "at": at.isoformat(), **render(row)}))
    merged += _delivery_entries(contact_id, before, limit + 1 + 50)
    merged.sort(key=lambda kv: kv[0], reverse=True)
    page = merged[:limit]
    nxt = None
    if len(merged) > limit:
        at, name, ident = page[-1][0]
        nxt = encode_cursor(f"{at.isoformat()}|{name}|{ident}")
    return [item for _, item in page], nxt


def _delivery_entries(contact_id: int, before, limit: int) -> list:
    """Mailings and SMS of campaigns, read from the deliveries (the delivery row is the action log).

    A message is dated when it was sent, else when its row last changed (queued, skipped, failed).
    """
    from campaigns.models import Campaign, Delivery

    at = sa.func.coalesce(Delivery.sent_at, Delivery.updated_at)
    # Journey steps' messages have no campaign (Delivery.journey_run_id): outer join.
    q = (sa.select(Delivery, Campaign.name, at.label("at")).outerjoin(Campaign, Campaign.id == Delivery.campaign_id)
         .where(Delivery.contact_id == contact_id, at.isnot(None)))
    if before is not None:
        q = q.where(at <= before[0])
    entries = []
    for delivery, campaign_name, when in db.session.execute(q.order_by(at.desc(), Delivery.id.desc()).limit(limit)):
        when = delivery.sent_at or delivery.updated_at  # typed (UTC-aware) whatever the backend
        key = (when, "delivery", delivery.id)
        if before is not None and not key < before:
            continue
        entries.append((key, {"type": "delivery", "id": delivery.id, "at": when.isoformat(),
                              "kind": "mailing" if delivery.channel == "email" else "sms",
                              "campaign_id": delivery.campaign_id, "campaign_name": campaign_name,
                              "journey_run_id": delivery.journey_run_id,
                              "channel": delivery.channel, "status": delivery.status,
                              "sent_at": _iso(delivery.sent_at), "error": delivery.error,
                              "error_code": delivery.error_code}))
    return entries


# --- GDPR -------------------------------------------------------------------------------------

def export_contact(contact_id: int) -> dict:
    """Everything stored about the person (RGPD right of access), as JSON-ready data."""
    contact = get_contact(contact_id)
    cid = contact.id

    def rows(model, order):
        return db.session.scalars(sa.select(model).where(model.contact_id == cid).order_by(order)).all()

    topic_names = dict(db.session.execute(sa.select(Topic.id, Topic.slug)).all())
    return {
        "contact": contact_to_dict(contact),
        "consents": [{"at": _iso(e.recorded_at), "channel": e.channel, "topic": topic_names.get(e.topic_id),
                      "kind": e.kind, "method": e.method, "source": e.source, "text": e.text,
                      "consented_at": _iso(e.consented_at), "ip": e.ip, "user_agent": e.user_agent,
                      "page_url": e.page_url} for e in rows(ConsentEvent, ConsentEvent.id)],
        "actions": [{"at": _iso(a.occurred_at), "kind": a.kind, "data": a.data} for a in rows(Action, Action.id)],
        "purchases": [{"at": _iso(p.occurred_at), "sku": p.sku, "name": p.name, "category": p.category,
                       "quantity": p.quantity, "amount": str(p.amount), "currency": p.currency,
                       "order_ref": p.order_ref, "store": p.store} for p in rows(Purchase, Purchase.id)],
        "exported_at": utcnow().isoformat(),
    }


def erase_contact(contact_id: int, *, method: str = "api", author_id: int | None = None) -> None:
    """Anonymise the contact (RGPD right to erasure).

    Personal data goes; counts stay (actions, purchases and consents keep their kind, time and
    amounts), and a keyed hash of the address and number blocks their re-import.
    """
    contact = get_contact(contact_id)
    now = utcnow()
    for kind in ("email", "phone"):
        value = getattr(contact, kind)
        if value:
            digest = suppression_hash(kind, value)
            if not db.session.scalar(sa.select(Suppression.id).where(Suppression.value_hash == digest)):
                db.session.add(Suppression(kind=kind, value_hash=digest, reason="erased"))
    for field in ("email", "phone", *PERSONAL_FIELDS):
        if field != "lifecycle":
            setattr(contact, field, None)
    contact.tags, contact.attributes = [], {}
    for channel in ("email", "sms"):
        if getattr(contact, f"{channel}_status") != "none":
            setattr(contact, f"{channel}_status", "unsubscribed")
            setattr(contact, f"{channel}_status_at", now)
    contact.erased_at = contact.updated_at = now
    db.session.execute(sa.delete(ContactTopic).where(ContactTopic.contact_id == contact.id))
    db.session.execute(sa.update(Action).where(Action.contact_id == contact.id).values(data={}))
    from segments.models import MessageEvent

    db.session.execute(sa.update(MessageEvent).where(MessageEvent.contact_id == contact.id).values(data={}))
    from campaigns.models import ShortLink  # SMS links made for this person (their URL may be personal)

    db.session.execute(sa.delete(ShortLink).where(ShortLink.contact_id == contact.id))
    # The one sanctioned rewrite of consent proof: what and when stay, who and where go.
    db.session.execute(sa.update(ConsentEvent).where(ConsentEvent.contact_id == contact.id)
                       .values(ip=None, user_agent=None, page_url=None, source=None, data={}))
    db.session.add(Action(contact_id=contact.id, kind="erase", author_id=author_id, data={"method": method}))
    db.session.commit()
