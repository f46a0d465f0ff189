"""Opt-in services: forms, signup (double opt-in), confirmation, unsubscribe, preferences, SMS
keywords, expiry of unconfirmed signups. Plain functions that own their transaction."""
from __future__ import annotations

import logging
import re
import time
from datetime import date, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy import event, orm
from flask import current_app, render_template
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from contacts.models import (PERSONAL_FIELDS, Action, AttributeDefinition, ConsentEvent, Contact, ContactTopic,
                             Topic)
from contacts.services import attribute_types, lift_suppression, topic_ids
from contacts.validation import clean_contact, normalise_phone
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.tasks import enqueue_after_commit
from envoi.types import utcnow
from optin import ratelimit, tokens
from optin.i18n import DEFAULT_LANG, LANGS, lang_of, texts
from optin.models import POPUP_TRIGGERS, VIEW_SOURCES, Form, FormView

log = logging.getLogger(__name__)

FORM_FIELDS = ("email", "phone", *PERSONAL_FIELDS)
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
READ_ONLY = {"id", "created_at", "updated_at"}
FORM_KEYS = {"slug", "title", "fields", "attributes", "channels", "topics", "double_opt_in", "consent_text",
             "consent_version", "redirect_url", "confirm_redirect_url", "allowed_origins", "popup"}
POPUP_NUMBERS = {"delay_seconds": (0, 3600), "scroll_percent": (0, 100), "frequency_days": (0, 3650)}
# Request keys that are not contact data: bot traps, tokens, where the form was shown.
CONTROL_KEYS = {"website", "_token", "_csrf", "page", "lang"}
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
START_WORDS = {"START", "YES", "UNSTOP"}
HELP_WORDS = {"HELP", "INFO"}


# --------------------------------------------------------------------------- forms

def _url_or_none(value, field: str, errors: dict) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or len(value) > 1000:
        errors[field] = "an http(s) URL of at most 1000 characters"
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in value for c in "\r\n\t "):
        errors[field] = "an http(s) URL"
        return None
    return value.strip()


def _origin(value, field: str, errors: dict) -> str | None:
    if not isinstance(value, str):
        errors[field] = "an origin such as https://www.example.org"
        return None
    raw = value.strip().rstrip("/")
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        errors[field] = "an origin such as https://www.example.org (bad port)"
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
            or parts.fragment or parts.username or parts.password or "@" in raw:
        errors[field] = "an origin (scheme://host[:port]) with no path, such as https://www.example.org"
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _string_list(data: dict, key: str, errors: dict) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors[key] = "must be a list of strings"
        return None
    out: list[str] = []
    for item in value:
        if item not in out:
            out.append(item)
    return out


def clean_form(data: dict, current: Form | None = None) -> dict:
    """Check a form payload (whole for POST, partial for PATCH); 422 naming every bad field."""
    errors: dict[str, str] = {}
    out: dict = {}
    for key in data:
        if key not in FORM_KEYS and key not in READ_ONLY:
            errors[key] = "unknown field"
    partial = current is not None
    if "slug" in data or not partial:
        slug = data.get("slug")
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
            errors["slug"] = "lower-case letters, digits, - and _ (at most 100)"
        out["slug"] = slug
    if "title" in data or not partial:
        title = data.get("title")
        if not isinstance(title, str) or not title.strip() or len(title) > 200:
            errors["title"] = "required, at most 200 characters"
        else:
            out["title"] = title.strip()
    if "fields" in data or not partial:
        fields = _string_list(data, "fields", errors) if data.get("fields") is not None else ["email"]
        if fields is not None:
            bad = [f for f in fields if f not in FORM_FIELDS]
            if bad:
                errors["fields"] = f"unknown field(s) {', '.join(bad)}; allowed: {', '.join(FORM_FIELDS)}"
            elif "email" not in fields and "phone" not in fields:
                errors["fields"] = "must collect email or phone"
            out["fields"] = fields
    if "attributes" in data or not partial:
        attrs = _string_list(data, "attributes", errors)
        if attrs is not None:
            declared = set(db.session.scalars(sa.select(AttributeDefinition.key)
                                              .where(AttributeDefinition.key.in_(attrs)))) if attrs else set()
            unknown = [a for a in attrs if a not in declared]
            if unknown:
                errors["attributes"] = f"not declared: {', '.join(unknown)} (POST /api/v1/attributes first)"
            out["attributes"] = attrs
    if "channels" in data or not partial:
        channels = _string_list(data, "channels", errors) if data.get("channels") is not None else ["email"]
        if channels is not None:
            if not channels or any(c not in ("email", "sms") for c in channels):
                errors["channels"] = "one or both of email, sms"
            out["channels"] = channels
    if "topics" in data or not partial:
        topics = _string_list(data, "topics", errors)
        if topics is not None:
            try:
                topic_ids(topics)
            except ValidationError as err:
                errors.update(err.fields)
            out["topics"] = topics
    if "double_opt_in" in data or not partial:
        value = data.get("double_opt_in", True)
        if not isinstance(value, bool):
            errors["double_opt_in"] = "true or false"
        out["double_opt_in"] = value
    if "consent_text" in data or not partial:
        text = data.get("consent_text") or ""
        if not isinstance(text, str) or len(text) > 5000:
            errors["consent_text"] = "a text of at most 5000 characters"
        out["consent_text"] = text
    if "consent_version" in data or not partial:
        version = data.get("consent_version", "1")
        if isinstance(version, int) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version.strip() or len(version) > 50:
            errors["consent_version"] = "a version label of at most 50 characters"
        else:
            out["consent_version"] = version.strip()
    for key in ("redirect_url", "confirm_redirect_url"):
        if key in data or not partial:
            out[key] = _url_or_none(data.get(key), key, errors)
    if "allowed_origins" in data or not partial:
        origins = data.get("allowed_origins") or []
        if not isinstance(origins, list):
            errors["allowed_origins"] = "a list of origins such as https://www.example.org"
        else:
            clean = []
            for i, item in enumerate(origins):
                origin = _origin(item, f"allowed_origins[{i}]", errors)
                if origin and origin not in clean:
                    clean.append(origin)
            out["allowed_origins"] = clean
    if "popup" in data or not partial:
        out["popup"] = _clean_popup(data.get("popup"), errors)
    # Cross-field rules, on the values the form will have.
    fields = out.get("fields", current.fields if current else None)
    channels = out.get("channels", current.channels if current else None)
    if fields is not None and channels is not None and "fields" not in errors and "channels" not in errors:
        if "email" in channels and "email" not in fields:
            errors["channels"] = "the email channel needs the email field"
        elif "sms" in channels and "phone" not in fields:
            errors["channels"] = "the sms channel needs the phone field"
    if errors:
        raise ValidationError("invalid form", errors)
    return out


def _clean_popup(value, errors: dict) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors["popup"] = "an object {trigger, delay_seconds, scroll_percent, frequency_days}"
        return {}
    popup = {"trigger": value.get("trigger", "inline"), "delay_seconds": 5, "scroll_percent": 50,
             "frequency_days": 7}
    if popup["trigger"] not in POPUP_TRIGGERS:
        errors["popup.trigger"] = f"one of {', '.join(POPUP_TRIGGERS)}"
    for key in value:
        if key != "trigger" and key not in POPUP_NUMBERS:
            errors[f"popup.{key}"] = "unknown field"
    for key, (lo, hi) in POPUP_NUMBERS.items():
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi:
                errors[f"popup.{key}"] = f"a whole number from {lo} to {hi}"
            else:
                popup[key] = number
    return popup


def form_to_dict(form: Form) -> dict:
    return {"id": form.id, "slug": form.slug, "title": form.title, "fields": list(form.fields or []),
            "attributes": list(form.attributes or []), "channels": list(form.channels or []),
            "topics": list(form.topics or []), "double_opt_in": form.double_opt_in,
            "consent_text": form.consent_text, "consent_version": form.consent_version,
            "redirect_url": form.redirect_url, "confirm_redirect_url": form.confirm_redirect_url,
            "allowed_origins": list(form.allowed_origins or []), "popup": dict(form.popup or {}),
            "created_at": form.created_at.isoformat() if form.created_at else None,
            "updated_at": form.updated_at.isoformat() if form.updated_at else None}


def create_form(data: dict) -> Form:
    clean = clean_form(data)
    if db.session.scalar(sa.select(Form.id).where(Form.slug == clean["slug"])):
        raise Conflict("form exists", {"slug": "already used"})
    now = utcnow()
    form = Form(**clean, created_at=now, updated_at=now)
    db.session.add(form)
    _commit_unique_slug()
    return form


def _commit_unique_slug() -> None:
    """Commit; a slug taken meanwhile by a concurrent request is a 409, not a 500."""
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("form exists", {"slug": "already used"}) from None


def get_form(form_id: int) -> Form:
    form = db.session.get(Form, form_id)
    if form is None:
        raise NotFound(f"no form {form_id}")
    return form


def form_by_slug(slug: str) -> Form:
    form = db.session.scalar(sa.select(Form).where(Form.slug == slug)) if SLUG.fullmatch(slug or "") else None
    if form is None:
        raise NotFound("no such form")
    return form


def update_form(form_id: int, data: dict) -> Form:
    form = get_form(form_id)
    clean = clean_form(data, current=form)
    if "slug" in clean and clean["slug"] != form.slug and \
            db.session.scalar(sa.select(Form.id).where(Form.slug == clean["slug"])):
        raise Conflict("form exists", {"slug": "already used"})
    for key, value in clean.items():
        setattr(form, key, value)
    form.updated_at = utcnow()
    _commit_unique_slug()
    return form


def delete_form(form_id: int) -> None:
    db.session.delete(get_form(form_id))
    db.session.commit()


# Signups read their form from a per-process cache: a copy (detached from any session) is used as
# long as the forms' version in Redis has not moved (read by the signup's one rate-limit round trip;
# bumped after the commit of any ORM change to a form, wherever it is made), and at most
# FORM_CACHE_SECONDS (a backstop for rows changed by plain SQL).
FORM_CACHE_SECONDS = 60.0


class FormChanged(Exception):
    """A form changed since the cached copy was read: reload it and redo the signup."""


def _form_cache() -> dict:
    return current_app.extensions.setdefault("envoi_form_cache", {})


def signup_form(slug: str, *, fresh: bool = False) -> tuple[Form, int]:
    """The form for a signup POST and the forms' version it was read at (cached per process)."""
    cache = _form_cache()
    entry = None if fresh else cache.get(slug)
    now = time.monotonic()
    if entry is not None and now - entry[2] < FORM_CACHE_SECONDS:
        return entry[0], entry[1]
    version = ratelimit.forms_version()  # before the row: an edit in between shows as a newer version
    cache.pop(slug, None)
    form = form_by_slug(slug)
    db.session.expunge(form)  # a read-only copy: no commit expires it, no flush writes it
    cache[slug] = (form, version, now)
    return form, version


def forms_changed() -> None:
    """After a form's commit: this process drops its copies, the others see a new version."""
    _form_cache().clear()
    try:
        ratelimit.bump_forms_version()
    except Exception:  # noqa: BLE001 - the change is committed; other processes catch up within the backstop
        log.warning("could not bump the forms' version in Redis", exc_info=True)


@event.listens_for(Form, "after_insert")
@event.listens_for(Form, "after_update")
@event.listens_for(Form, "after_delete")
def _form_written(_mapper, connection, _target) -> None:
    orm.Session.object_session(_target).info["envoi_forms_changed"] = True


@event.listens_for(orm.Session, "after_commit")
def _after_form_commit(session) -> None:
    if session.info.pop("envoi_forms_changed", False):
        forms_changed()


@event.listens_for(orm.Session, "after_rollback")
def _after_form_rollback(session) -> None:
    session.info.pop("envoi_forms_changed", None)


def list_forms(after: int | None, limit: int) -> tuple[list[Form], int | None]:
    q = sa.select(Form).order_by(Form.id).limit(limit + 1)
    if after:
        q = q.where(Form.id > after)
    rows = db.session.scalars(q).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


# --------------------------------------------------------------------------- form views

_VIEW_STATEMENTS: dict = {}


def _view_statement(dialect: str):
    """INSERT ... ON CONFLICT (form, day, source) DO UPDATE SET views = views + 1, built once per dialect."""
    stmt = _VIEW_STATEMENTS.get(dialect)
    if stmt is None:
        table = FormView.__table__
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(table).values(form_id=sa.bindparam("form_id", type_=table.c.form_id.type),
                                    day=sa.bindparam("day", type_=table.c.day.type),
                                    source=sa.bindparam("source", type_=table.c.source.type), views=1)
        stmt = _VIEW_STATEMENTS[dialect] = stmt.on_conflict_do_update(
            index_elements=[table.c.form_id, table.c.day, table.c.source], set_={"views": table.c.views + 1})
    return stmt


def record_view(form_id: int, source: str, day: date | None = None) -> None:
    """Count one showing of a form on `day` (default: today, UTC) from `source` (hosted, inline or
    popup): one statement, its own transaction. Nothing about the visitor is stored."""
    if source not in VIEW_SOURCES:
        raise ValidationError("unknown view source", {"source": f"expected one of {', '.join(VIEW_SOURCES)}"})
    stmt = _view_statement(db.session.get_bind().dialect.name)
    try:
        db.session.execute(stmt, {"form_id": form_id, "day": day or utcnow().date(), "source": source})
        db.session.commit()
    except IntegrityError:  # the form was deleted since it was read
        db.session.rollback()
        raise NotFound("no such form") from None


# --------------------------------------------------------------------------- signup

def field_names(form: Form) -> list[str]:
    """The request keys a form accepts: its contact fields, then `attributes.<key>`."""
    return [*form.fields, *(f"attributes.{key}" for key in form.attributes or [])]


def required_fields(form: Form) -> set[str]:
    if "email" in form.fields and ("phone" not in form.fields or "sms" not in form.channels):
        return {"email"}
    if "phone" in form.fields and "email" not in form.fields:
        return {"phone"}
    return set()


def clean_signup(form: Form, raw: dict) -> dict:
    """The submitted values the form collects, validated: {"email", "phone", personal fields,
    "attributes": {...}} (absent when empty). A key the form does not collect is a 422."""
    errors: dict[str, str] = {}
    flat: dict = {}
    for key, value in raw.items():
        if key in CONTROL_KEYS:
            continue
        if key == "attributes" and isinstance(value, dict):
            for attr, attr_value in value.items():
                flat[f"attributes.{attr}"] = attr_value
            continue
        flat[key] = value
    allowed = set(field_names(form))
    values: dict = {}
    attrs: dict = {}
    for key, value in flat.items():
        if key not in allowed:
            errors[key] = "not collected by this form"
            continue
        if isinstance(value, str):
            value = value.strip()
        if value in (None, ""):
            continue
        if key.startswith("attributes."):
            attrs[key.split(".", 1)[1]] = value
        else:
            values[key] = value
    if errors:
        raise ValidationError("invalid signup", errors)
    if attrs:
        values["attributes"] = attrs
    required = required_fields(form)
    for key in required:
        if key not in values:
            errors[key] = "required"
    if not required and "email" not in values and "phone" not in values:
        errors["email"] = "an email or a phone is required"
    try:
        # The declared types are read only when the signup carries attributes (one query saved).
        types = attribute_types() if "attributes" in values else {}
        clean = clean_contact(values, attribute_types=types, region=current_app.config["DEFAULT_REGION"], partial=True)
    except ValidationError as err:
        errors.update(err.fields)
        clean = {}
    if errors:
        raise ValidationError("invalid signup", errors)
    return {"clean": clean, "raw": values}


def _address_allowed(kind: str, address: str) -> bool:
    """At most SIGNUP_RATE_PER_ADDRESS confirmation messages per address (shared by every process)."""
    return ratelimit.hit(None, [(kind, address)]).allowed[(kind, address)]


def _addresses_allowed(pairs: list[tuple[str, str]]) -> dict:
    return ratelimit.hit(None, pairs).allowed if pairs else {}


def request_optin(form: Form | int, raw: dict, context: dict, lang: str = DEFAULT_LANG, *, throttle=None) -> dict:
    """A signup on a form: validate, throttle per address, record the request and send the
    confirmation (double opt-in) or grant at once. The outcome never says whether the address was
    known: {"status": "requested" | "granted" | "throttled"}.

    `throttle(pairs)` answers which (channel, address) may get a confirmation message; it is called
    once, before anything is written (the signup view also counts the IP in that same call)."""
    form = get_form(form) if isinstance(form, int) else form
    signup = clean_signup(form, raw)
    clean = signup["clean"]
    channels = [c for c in form.channels if clean.get("email" if c == "email" else "phone")]
    if not channels:
        raise ValidationError("invalid signup", {"email" if "email" in form.fields else "phone": "required"})
    pairs = [(c, clean["email"] if c == "email" else clean["phone"]) for c in channels] if form.double_opt_in else []
    allowed = (throttle or _addresses_allowed)(pairs)
    if form.double_opt_in:
        channels = [c for c, address in pairs if allowed.get((c, address))]
        if not channels:
            return {"status": "throttled"}
        if len(channels) == 1 and len([k for k in ("email", "phone") if clean.get(k)]) == 1:
            contact_id = _insert_new_signup(form, signup, channels[0], context, lang)
            if contact_id is not None:
                return {"status": "requested"}
    topics = topic_ids(form.topics or []) if form.topics and not form.double_opt_in else {}
    for _ in range(3):
        try:
            result = _store_signup(form, signup, channels, sorted(topics.values()), context, lang)
            db.session.commit()
            return result
        except IntegrityError:
            # Another signup inserted this address between our read and our write: retry as an update.
            db.session.rollback()
    raise Conflict("the contact changed concurrently; retry", {})


def _insert_new_signup(form: Form, signup: dict, channel: str, context: dict, lang: str) -> int | None:
    """The common case, a double opt-in signup of an address nobody has: the contact, its requested
    consent event and its signup action in one statement on PostgreSQL (three in a transaction on
    SQLite), committed, the confirmation queued. None (nothing written) when the address is
    already someone's."""
    from workers.optin import send_confirmation

    now = utcnow()
    field = "email" if channel == "email" else "phone"
    contact_row = {field: signup["clean"][field], f"{channel}_status": "pending", f"{channel}_status_at": now,
                   "tags": [], "attributes": {}, "lifecycle": "prospect", "created_at": now, "updated_at": now}
    event_row = _event_row(channel, "requested", "form", context, text=form.consent_text, source=f"form:{form.slug}",
                           data=_evidence(form, signup, lang), now=now)
    action_row = {"kind": "signup", "occurred_at": now, "created_at": now,
                  "data": _signup_action_data(form, [channel], created=True)}
    params = {**{f"c_{k}": v for k, v in contact_row.items()}, **{f"e_{k}": v for k, v in event_row.items()},
              **{f"a_{k}": v for k, v in action_row.items()}}
    engine = db.session.get_bind()
    first, *others = _signup_statements(engine.dialect.name, field, channel)
    if not others:
        # PostgreSQL: one statement is one transaction of its own; in autocommit it costs one round
        # trip (no BEGIN, no COMMIT), on a pooled connection of its own.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            contact_id = conn.execute(first, params).scalar()
        if contact_id is not None:
            send_confirmation.send(contact_id, channel, form.id, lang)  # committed already
        return contact_id
    conn = db.session.connection()  # Core statements: no ORM execution machinery
    contact_id = conn.execute(first, params).scalar()
    if contact_id is None:
        return None
    params["contact_id"] = contact_id
    for statement in others:
        conn.execute(statement, params)
    enqueue_after_commit(send_confirmation, contact_id, channel, form.id, lang)
    db.session.commit()
    return contact_id


def _find(field: str, value: str | None) -> Contact | None:
    if not value:
        return None
    return db.session.scalar(sa.select(Contact).where(getattr(Contact, field) == value).with_for_update())


def _new_contact(initial: dict, now, **identity) -> Contact:
    """A new contact, inserted with the state the signup gives it (no UPDATE right after the INSERT)."""
    contact = Contact(tags=[], attributes={}, lifecycle="prospect", created_at=now, updated_at=now, **initial,
                      **identity)
    db.session.add(contact)
    db.session.flush()
    return contact


def _targets(email: str | None, phone: str | None, need_sms: bool, initial: dict, now) -> tuple[dict, set]:
    """The contact each channel's consent goes to, and the ids of the contacts created for it.

    Only an empty identifier is filled in on an existing contact; nothing is overwritten.
    `initial[channel]` is the state a contact created for that channel starts with."""
    by_email, by_phone = _find("email", email), _find("phone", phone)
    created: set = set()
    if not need_sms:
        phone = phone if by_phone is None else None  # a number that is someone's is not copied
    if email and phone and by_email is None and by_phone is None:
        contact = _new_contact({**initial.get("email", {}), **initial.get("sms", {})}, now, email=email, phone=phone)
        created.add(contact.id)
        return {"email": contact, "sms": contact}, created
    targets: dict = {}
    if email:
        target = by_email
        if target is None and by_phone is not None and by_phone.email is None:
            target, by_phone.email = by_phone, email
        if target is None:
            target = _new_contact(initial.get("email", {}), now, email=email)
            created.add(target.id)
        targets["email"] = target
    if phone and not need_sms:
        if targets.get("email") is not None and targets["email"].phone is None:
            targets["email"].phone = phone
    elif phone:
        target = by_phone
        if target is None and targets.get("email") is not None and targets["email"].phone is None:
            target = targets["email"]
            target.phone = phone
        if target is None:
            target = _new_contact(initial.get("sms", {}), now, phone=phone)
            created.add(target.id)
        targets["sms"] = target
    db.session.flush()
    return targets, created


def _event_row(channel: str, kind: str, method: str, context: dict, *, topic_id=None, text=None, source=None,
               data=None, now=None) -> dict:
    now = now or utcnow()
    return {"channel": channel, "topic_id": topic_id, "kind": kind, "method": method,
            "source": (source or context.get("source") or method)[:300], "text": text, "consented_at": now,
            "recorded_at": now, "ip": context.get("ip") or None,
            "user_agent": (context.get("user_agent") or "")[:500] or None,
            "page_url": (context.get("page_url") or "")[:1000] or None, "data": data or {}}


def _event(contact_id: int, channel: str, kind: str, method: str, context: dict, **kwargs) -> None:
    db.session.add(ConsentEvent(contact_id=contact_id, **_event_row(channel, kind, method, context, **kwargs)))


def _action(contact_id: int, kind: str, data: dict) -> None:
    db.session.add(Action(contact_id=contact_id, kind=kind, data=data))


def _store_signup(form: Form, signup: dict, channels: list[str], topic_id_list: list[int], context: dict,
                  lang: str) -> dict:
    from workers.optin import send_confirmation

    clean = signup["clean"]
    now = utcnow()
    initial = {c: {f"{c}_status": "pending", f"{c}_status_at": now} for c in channels} if form.double_opt_in else {}
    targets, created = _targets(clean.get("email"), clean.get("phone"), "sms" in channels, initial, now)
    source = f"form:{form.slug}"
    evidence = _evidence(form, signup, lang)
    status = "requested"
    touched: dict[int, list[str]] = {}
    for channel in channels:
        contact = targets[channel]
        touched.setdefault(contact.id, []).append(channel)
        if form.double_opt_in:
            if getattr(contact, f"{channel}_status") != "confirmed":
                setattr(contact, f"{channel}_status", "pending")
            if getattr(contact, f"{channel}_status") == "pending":
                setattr(contact, f"{channel}_status_at", now)  # expiry counts from the latest request
            _event(contact.id, channel, "requested", "form", context, text=form.consent_text, source=source,
                   data=evidence, now=now)
            enqueue_after_commit(send_confirmation, contact.id, channel, form.id, lang)
        else:
            status = "granted"
            _event(contact.id, channel, "requested", "form", context, text=form.consent_text, source=source,
                   data=evidence, now=now)
            _grant(contact, channel, form, topic_id_list, signup["raw"], context, now,
                   overwrite=contact.id in created, text=form.consent_text)
        contact.updated_at = now
    for contact_id, chans in touched.items():
        _action(contact_id, "signup", _signup_action_data(form, chans, created=contact_id in created))
    return {"status": status}


_SIGNUP_STATEMENTS: dict = {}


def _signup_statements(dialect: str, field: str, channel: str) -> tuple:
    """The INSERTs of a new signup, built once (named parameters c_*, e_*, a_*): on PostgreSQL one
    statement (data-modifying CTEs: the event and the action exist only if the contact was
    inserted); elsewhere the contact's INSERT ... ON CONFLICT DO NOTHING RETURNING id, then the two
    others with `contact_id`."""
    key = (dialect, field, channel)
    if key in _SIGNUP_STATEMENTS:
        return _SIGNUP_STATEMENTS[key]
    contacts, events, actions = Contact.__table__, ConsentEvent.__table__, Action.__table__
    event_cols = ["channel", "topic_id", "kind", "method", "source", "text", "consented_at", "recorded_at", "ip",
                  "user_agent", "page_url", "data"]
    action_cols = ["kind", "occurred_at", "created_at", "data"]
    contact_values = {c.key: sa.bindparam(f"c_{c.key}", c.default.arg, type_=c.type)
                      for c in contacts.c if c.default is not None and c.default.is_scalar}
    for name in (field, f"{channel}_status", f"{channel}_status_at", "tags", "attributes", "lifecycle", "created_at",
                 "updated_at"):
        contact_values[name] = sa.bindparam(f"c_{name}", type_=contacts.c[name].type)
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    new = insert(contacts).values(contact_values).on_conflict_do_nothing().returning(contacts.c.id)

    def params(table, prefix, cols):
        return [sa.bindparam(f"{prefix}_{k}", type_=table.c[k].type) for k in cols]

    if dialect == "postgresql":
        created = new.cte("new_contact")

        def child(table, prefix, cols):
            values = sa.select(created.c.id, *params(table, prefix, cols))
            return table.insert().from_select(["contact_id", *cols], values, include_defaults=False) \
                .cte(f"new_{table.name}")

        statements = (sa.select(created.c.id).add_cte(child(events, "e", event_cols), child(actions, "a", action_cols)),)
    else:
        contact_id = sa.bindparam("contact_id", type_=events.c.contact_id.type)
        statements = (new, events.insert().values(dict(zip(["contact_id", *event_cols],
                                                              [contact_id, *params(events, "e", event_cols)]))),
                      actions.insert().values(dict(zip(["contact_id", *action_cols],
                                                       [contact_id, *params(actions, "a", action_cols)]))))
    _SIGNUP_STATEMENTS[key] = statements
    return statements


def _evidence(form: Form, signup: dict, lang: str) -> dict:
    """What a requested consent event keeps of a signup (the values wait there for the confirmation)."""
    return {"form_id": form.id, "form": form.slug, "consent_version": form.consent_version,
            "values": _json_ready(signup["raw"]), "topics": list(form.topics or []), "lang": lang}


def _signup_action_data(form: Form, channels: list[str], *, created: bool) -> dict:
    return {"form": form.slug, "channels": channels, "created": created, "double_opt_in": form.double_opt_in}


def _json_ready(values: dict) -> dict:
    return {k: (v if isinstance(v, (str, int, float, bool, dict, list)) or v is None else str(v))
            for k, v in values.items()}


def _apply_values(contact: Contact, raw: dict, *, overwrite: bool) -> None:
    """Apply submitted personal values (never email/phone: those identify the contact).

    `overwrite` False only fills empty fields. Values that no longer validate are dropped."""
    values = {k: v for k, v in raw.items() if k in PERSONAL_FIELDS or k == "attributes"}
    if not values:
        return
    types = attribute_types()
    region = current_app.config["DEFAULT_REGION"]
    clean: dict = {}
    for _ in range(2):
        try:
            clean = clean_contact(values, attribute_types=types, region=region, partial=True)
            break
        except ValidationError as err:
            for key in err.fields:
                root = key.split(".", 1)
                if root[0] == "attributes" and len(root) == 2 and isinstance(values.get("attributes"), dict):
                    values["attributes"].pop(root[1], None)
                else:
                    values.pop(key, None)
    for field in PERSONAL_FIELDS:
        if field in clean and clean[field] is not None and (overwrite or getattr(contact, field) in (None, "")):
            setattr(contact, field, clean[field])
    if clean.get("attributes"):
        attrs = dict(contact.attributes or {})
        for key, value in clean["attributes"].items():
            if value is not None and (overwrite or key not in attrs):
                attrs[key] = value
        contact.attributes = attrs


def _grant(contact: Contact, channel: str, form: Form | None, topic_id_list: list[int], raw: dict, context: dict,
           now, *, overwrite: bool, text: str | None) -> bool:
    """Channel confirmed, topics subscribed (email), values applied; events for each change."""
    changed = False
    source = f"form:{form.slug}" if form else "form"
    data = {"form_id": form.id, "consent_version": form.consent_version} if form else {}
    if getattr(contact, f"{channel}_status") != "confirmed":
        setattr(contact, f"{channel}_status", "confirmed")
        setattr(contact, f"{channel}_status_at", now)
        _event(contact.id, channel, "granted", "form", context, text=text, source=source, data=data, now=now)
        changed = True
    if channel == "email" and topic_id_list:
        links = {link.topic_id: link for link in db.session.scalars(
            sa.select(ContactTopic).where(ContactTopic.contact_id == contact.id))}
        for topic_id in topic_id_list:
            link = links.get(topic_id)
            if link is not None and link.subscribed:
                continue
            if link is None:
                db.session.add(ContactTopic(contact_id=contact.id, topic_id=topic_id, subscribed=True, updated_at=now))
            else:
                link.subscribed, link.updated_at = True, now
            _event(contact.id, "email", "granted", "form", context, topic_id=topic_id, text=text, source=source,
                   data=data, now=now)
            changed = True
    if changed:
        _apply_values(contact, raw, overwrite=overwrite)
        address = contact.email if channel == "email" else contact.phone
        if address:
            lift_suppression("email" if channel == "email" else "phone", address)
        contact.updated_at = now
    return changed


# --------------------------------------------------------------------------- confirmation

def _requested_event(contact_id: int, channel: str, form_id: int | None) -> ConsentEvent | None:
    events = db.session.scalars(
        sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact_id, ConsentEvent.channel == channel,
                                      ConsentEvent.kind == "requested", ConsentEvent.topic_id.is_(None))
        .order_by(ConsentEvent.id.desc()).limit(20)).all()
    for event in events:
        if (event.data or {}).get("form_id") == form_id:
            return event
    return events[0] if events else None


def confirm_subscription(token: str, context: dict) -> Form | None:
    """Confirm the consent a confirmation link stands for. Confirming twice is a success.

    Raises tokens.TokenExpired / tokens.TokenInvalid, NotFound for an erased contact."""
    payload = tokens.read_confirm_token(token)
    return _confirm(payload["contact_id"], payload["channel"], payload["topic_ids"], payload["form_id"], context,
                    method="form")


def _confirm(contact_id: int, channel: str, topic_id_list: list[int], form_id: int | None, context: dict,
             method: str) -> Form | None:
    contact = db.session.scalar(sa.select(Contact).where(Contact.id == contact_id).with_for_update())
    if contact is None or contact.erased_at is not None:
        db.session.rollback()
        raise NotFound("this subscription no longer exists")
    form = db.session.get(Form, form_id) if form_id else None
    existing = set(db.session.scalars(sa.select(Topic.id).where(Topic.id.in_(topic_id_list)))) if topic_id_list else set()
    topic_id_list = [t for t in topic_id_list if t in existing]
    requested = _requested_event(contact.id, channel, form_id)
    raw = dict((requested.data or {}).get("values") or {}) if requested else {}
    text = requested.text if requested is not None else (form.consent_text if form else None)
    now = utcnow()
    changed = _grant(contact, channel, form, topic_id_list, raw, context, now, overwrite=True, text=text)
    if changed:
        _action(contact.id, "confirmation", {"channel": channel, "form": form.slug if form else None,
                                             "method": method})
    db.session.commit()
    return form


def resend_confirmation(token: str, lang: str) -> None:
    """A new confirmation link for an expired one, if the signup is still pending (rate limited
    per address like a signup). Says nothing either way."""
    try:
        payload = tokens.read_confirm_token(token)
    except tokens.TokenExpired as err:
        payload = err.payload
    from workers.optin import send_confirmation

    contact = db.session.get(Contact, payload["contact_id"])
    channel = payload["channel"]
    if contact is None or contact.erased_at is not None or getattr(contact, f"{channel}_status") != "pending":
        return
    address = contact.email if channel == "email" else contact.phone
    if not address or not _address_allowed(channel, address):
        return
    send_confirmation.send(contact.id, channel, payload["form_id"], lang)


def send_confirmation(contact_id: int, channel: str, form_id: int | None, lang: str) -> str:
    """Send the confirmation email or SMS of a pending signup (run by the worker). Returns what
    happened: "sent" or the reason it was skipped. Channel errors propagate (the actor retries
    transient ones)."""
    from campaigns.channels import send_email, send_sms
    from campaigns.mime import compose

    contact = db.session.get(Contact, contact_id)
    if contact is None or contact.erased_at is not None:
        return "no contact"
    if getattr(contact, f"{channel}_status") not in ("pending", "confirmed"):
        return f"status {getattr(contact, f'{channel}_status')}"
    form = db.session.get(Form, form_id) if form_id else None
    topic_slugs = list(form.topics or []) if form else []
    ids = sorted(db.session.scalars(sa.select(Topic.id).where(Topic.slug.in_(topic_slugs)))) if topic_slugs else []
    if getattr(contact, f"{channel}_status") == "confirmed":
        subscribed = set(db.session.scalars(sa.select(ContactTopic.topic_id).where(
            ContactTopic.contact_id == contact.id, ContactTopic.subscribed.is_(True))))
        if channel == "sms" or set(ids) <= subscribed:
            return "already confirmed"
    lang = lang if lang in LANGS else DEFAULT_LANG
    url = tokens.confirm_url(tokens.confirm_token(contact.id, channel, ids, form_id))
    title = form.title if form else "Envoi"
    t = texts(lang)
    email, phone, consent_text = contact.email, contact.phone, (form.consent_text if form else "")
    db.session.rollback()  # end the read transaction before talking to the outside world
    if channel == "email":
        ctx = {"lang": lang, "title": title, "url": url, "consent_text": consent_text,
               "postal_address": current_app.config.get("POSTAL_ADDRESS", ""),
               "max_days": max(1, current_app.config["OPTIN_TOKEN_MAX_AGE"] // 86400)}
        subject = render_template("email/optin_confirm/subject.txt", **ctx).strip()
        msg = compose(email, subject, render_template("email/optin_confirm/body.txt", **ctx),
                      render_template("email/optin_confirm/body.html", **ctx))
        send_email(msg)
    else:
        send_sms(phone, t["sms_confirm"].format(title=title, url=url))
    return "sent"


# --------------------------------------------------------------------------- unsubscribe

def unsubscribe(contact_id: int, channel: str, context: dict, *, campaign_id: int | None = None,
                method: str = "link") -> bool:
    """Channel status unsubscribed, ConsentEvent(withdrawn), Action(unsubscribe); idempotent.
    Returns whether anything changed."""
    contact = db.session.scalar(sa.select(Contact).where(Contact.id == contact_id).with_for_update())
    if contact is None or contact.erased_at is not None or getattr(contact, f"{channel}_status") == "unsubscribed":
        db.session.rollback()
        return False
    now = utcnow()
    setattr(contact, f"{channel}_status", "unsubscribed")
    setattr(contact, f"{channel}_status_at", now)
    contact.updated_at = now
    _event(contact.id, channel, "withdrawn", method, context, now=now,
           data={"campaign_id": campaign_id} if campaign_id else {})
    _action(contact.id, "unsubscribe", {"channel": channel, "method": method, "campaign_id": campaign_id})
    if campaign_id:
        from campaigns.models import Campaign
        from segments.models import MessageEvent

        if db.session.get(Campaign, campaign_id) is not None:
            db.session.add(MessageEvent(contact_id=contact.id, campaign_id=campaign_id, channel=channel,
                                        kind="unsubscribed", occurred_at=now, data={"method": method}))
    db.session.commit()
    return True


def contact_for_token(contact_id: int) -> Contact | None:
    contact = db.session.get(Contact, contact_id)
    return None if contact is None or contact.erased_at is not None else contact


# --------------------------------------------------------------------------- SMS keywords

def sms_keyword(from_number: str, body: str, params: dict) -> str | None:
    """An inbound SMS: STOP words unsubscribe the number, START words (re)confirm it, HELP words
    ask for help. Returns the reply text, or None for no reply."""
    word = " ".join((body or "").split()).upper()
    if word not in STOP_WORDS | START_WORDS | HELP_WORDS:
        return None
    try:
        phone = normalise_phone(from_number or "", current_app.config["DEFAULT_REGION"], "From")
    except ValidationError:
        phone = None
    contact = db.session.scalar(sa.select(Contact).where(Contact.phone == phone).with_for_update()) if phone else None
    default = "fr" if current_app.config["DEFAULT_REGION"] in ("FR", "BE", "CH", "LU", "MC") else DEFAULT_LANG
    lang = lang_of(contact.language, default) if contact is not None else default
    t = texts(lang)
    context = {"source": "sms", "user_agent": "twilio-inbound"}
    data = {"keyword": word, "message_sid": (params.get("MessageSid") or "")[:64]}
    if word in HELP_WORDS:
        db.session.rollback()
        return t["sms_help"].format(title=current_app.config.get("SMS_SENDER_NAME") or "Envoi")
    if contact is None or contact.erased_at is not None:
        db.session.rollback()
        return None
    now = utcnow()
    if word in STOP_WORDS:
        if contact.sms_status != "unsubscribed":
            contact.sms_status, contact.sms_status_at, contact.updated_at = "unsubscribed", now, now
            _event(contact.id, "sms", "withdrawn", "sms_keyword", context, data=data, now=now)
            _action(contact.id, "unsubscribe", {"channel": "sms", "method": "sms_keyword", "keyword": word})
        db.session.commit()
        return None  # the carrier / Twilio confirms a STOP itself
    if contact.sms_status in ("pending", "unsubscribed"):
        requested = _requested_event(contact.id, "sms", None) if contact.sms_status == "pending" else None
        raw = dict((requested.data or {}).get("values") or {}) if requested else {}
        contact.sms_status, contact.sms_status_at, contact.updated_at = "confirmed", now, now
        _event(contact.id, "sms", "granted", "sms_keyword", context, data=data, now=now,
               text=requested.text if requested else None)
        if raw:
            _apply_values(contact, raw, overwrite=True)
        _action(contact.id, "confirmation", {"channel": "sms", "method": "sms_keyword", "keyword": word})
        db.session.commit()
        return t["sms_started"]
    db.session.rollback()
    return t["sms_started"] if contact.sms_status == "confirmed" else None


# --------------------------------------------------------------------------- preferences

def preferences(contact_id: int) -> dict:
    contact = contact_for_token(contact_id)
    if contact is None:
        raise NotFound("no such subscriber")
    subscribed = set(db.session.scalars(sa.select(ContactTopic.topic_id).where(
        ContactTopic.contact_id == contact.id, ContactTopic.subscribed.is_(True))))
    topics = db.session.scalars(sa.select(Topic).order_by(Topic.name)).all()
    return {"contact": contact, "email_on": contact.email_status in ("confirmed", "pending"),
            "sms_on": contact.sms_status in ("confirmed", "pending"),
            "topics": [{"slug": t.slug, "name": t.name, "description": t.description, "on": t.id in subscribed}
                       for t in topics]}


def update_preferences(contact_id: int, channels: dict, topic_slugs: set, context: dict) -> dict:
    """Channels on/off and topic subscriptions from the preference centre; every change is a
    ConsentEvent (method link) and the whole is one Action(preferences)."""
    contact = db.session.scalar(sa.select(Contact).where(Contact.id == contact_id).with_for_update())
    if contact is None or contact.erased_at is not None:
        db.session.rollback()
        raise NotFound("no such subscriber")
    now = utcnow()
    changes: dict = {}
    for channel, wanted in channels.items():
        address = contact.email if channel == "email" else contact.phone
        status = getattr(contact, f"{channel}_status")
        if not address:
            continue
        if wanted and status in ("none", "pending", "unsubscribed"):
            new, kind = "confirmed", "granted"
        elif not wanted and status in ("confirmed", "pending"):
            new, kind = "unsubscribed", "withdrawn"
        else:
            continue
        setattr(contact, f"{channel}_status", new)
        setattr(contact, f"{channel}_status_at", now)
        _event(contact.id, channel, kind, "link", context, source="preferences", now=now)
        changes[channel] = new
    all_topics = dict(db.session.execute(sa.select(Topic.slug, Topic.id)).all())
    links = {link.topic_id: link for link in db.session.scalars(
        sa.select(ContactTopic).where(ContactTopic.contact_id == contact.id))}
    for slug, topic_id in all_topics.items():
        wanted = slug in topic_slugs
        link = links.get(topic_id)
        on = link is not None and link.subscribed
        if wanted == on:
            continue
        if link is None:
            db.session.add(ContactTopic(contact_id=contact.id, topic_id=topic_id, subscribed=True, updated_at=now))
        else:
            link.subscribed, link.updated_at = wanted, now
        _event(contact.id, "email", "granted" if wanted else "withdrawn", "link", context, topic_id=topic_id,
               source="preferences", now=now)
        changes[f"topic:{slug}"] = "subscribed" if wanted else "unsubscribed"
    if changes:
        contact.updated_at = now
        _action(contact.id, "preferences", {"changes": changes})
    db.session.commit()
    return changes


# --------------------------------------------------------------------------- expiry

def expire_pending_signups(now=None, batch: int = 500) -> dict:
    """Signups still unconfirmed after OPTIN_PENDING_DAYS: the pending status goes back to none,
    the submitted values kept with the request are scrubbed, and a contact that exists only
    because of that signup loses its personal data. The requested ConsentEvents stay as evidence
    (time, method, text, IP, page)."""
    now = now or utcnow()
    cutoff = now - timedelta(days=current_app.config["OPTIN_PENDING_DAYS"])
    expired = anonymised = 0
    last = 0
    while True:
        rows = db.session.scalars(
            sa.select(Contact).where(
                Contact.id > last, Contact.erased_at.is_(None),
                sa.or_(sa.and_(Contact.email_status == "pending", Contact.email_status_at < cutoff),
                       sa.and_(Contact.sms_status == "pending", Contact.sms_status_at < cutoff)))
            .order_by(Contact.id).limit(batch).with_for_update()).all()
        if not rows:
            break
        for contact in rows:
            last = contact.id
            for channel in ("email", "sms"):
                at = getattr(contact, f"{channel}_status_at")
                if getattr(contact, f"{channel}_status") == "pending" and at is not None and at < cutoff:
                    # Someone who had opted out stays opted out; the rest go back to no consent.
                    withdrew = db.session.scalar(sa.select(ConsentEvent.id).where(
                        ConsentEvent.contact_id == contact.id, ConsentEvent.channel == channel,
                        ConsentEvent.kind == "withdrawn", ConsentEvent.topic_id.is_(None)).limit(1))
                    setattr(contact, f"{channel}_status", "unsubscribed" if withdrew else "none")
                    setattr(contact, f"{channel}_status_at", now)
            expired += 1
            # The one sanctioned rewrite of consent proof: the unconfirmed personal values go.
            db.session.execute(sa.update(ConsentEvent).where(
                ConsentEvent.contact_id == contact.id, ConsentEvent.kind == "requested").values(
                data={"expired": True}))
            if _only_a_signup(contact):
                _anonymise(contact, now)
                anonymised += 1
            contact.updated_at = now
        db.session.commit()
    return {"expired": expired, "anonymised": anonymised}


def _only_a_signup(contact: Contact) -> bool:
    """Created by a signup and nothing else ever happened: no consent, purchase, other action."""
    if contact.email_status not in ("none", "pending") or contact.sms_status not in ("none", "pending") \
            or contact.purchase_count:
        return False
    kinds = db.session.execute(sa.select(Action.kind, Action.data).where(Action.contact_id == contact.id)).all()
    created = any(kind == "signup" and (data or {}).get("created") for kind, data in kinds)
    return created and all(kind == "signup" for kind, _ in kinds)


def _anonymise(contact: Contact, now) -> None:
    for field in ("email", "phone", *PERSONAL_FIELDS):
        if field != "lifecycle":
            setattr(contact, field, None)
    contact.tags, contact.attributes = [], {}
    contact.erased_at = now
    db.session.execute(sa.delete(ContactTopic).where(ContactTopic.contact_id == contact.id))
    db.session.execute(sa.update(Action).where(Action.contact_id == contact.id).values(data={}))
    _action(contact.id, "erase", {"method": "expiry"})
