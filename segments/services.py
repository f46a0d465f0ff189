"""Segment services: saved rules, live counts, previews and the member query campaigns use."""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from contacts.models import Contact
from contacts.services import contact_to_dict, contact_topics, decode_cursor, encode_cursor
from envoi import MAX_ID
from envoi.errors import Conflict, NotFound, ValidationError
from envoi.extensions import db
from envoi.types import utcnow
from segments.models import Segment
from segments.rules import compile_rules, parse

PREVIEW_SAMPLE = 10


def segment_to_dict(segment: Segment) -> dict:
    return {"id": segment.id, "name": segment.name, "rules": segment.rules,
            "created_at": segment.created_at.isoformat(), "updated_at": segment.updated_at.isoformat()}


def segment_query(rules, *, now=None) -> sa.Select:
    """SELECT contacts.id of the segment's members right now (never erased contacts)."""
    return sa.select(Contact.id).where(Contact.erased_at.is_(None), compile_rules(rules, now=now))


def _clean_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("invalid segment", {"name": "required"})
    name = " ".join(name.split())
    if len(name) > 200:
        raise ValidationError("invalid segment", {"name": "at most 200 characters"})
    return name


def get_segment(segment_id: int) -> Segment:
    segment = db.session.get(Segment, segment_id) if 0 < segment_id <= MAX_ID else None
    if segment is None:
        raise NotFound(f"no segment {segment_id}")
    return segment


def list_segments(cursor: str | None, limit: int) -> tuple[list[dict], str | None]:
    """One page of segments in id order."""
    after = decode_cursor(cursor)
    query = sa.select(Segment).order_by(Segment.id).limit(limit + 1)
    if after is not None:
        if not after.isdigit() or int(after) > MAX_ID:
            raise ValidationError("invalid cursor", {"cursor": "not a cursor returned by this API"})
        query = query.where(Segment.id > int(after))
    rows = db.session.scalars(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [segment_to_dict(s) for s in rows], (encode_cursor(rows[-1].id) if more else None)


def create_segment(name, rules) -> Segment:
    """Save a named rule after validating it (422 with the path of each problem)."""
    name = _clean_name(name)
    parse(rules)
    segment = Segment(name=name, rules=rules)
    db.session.add(segment)
    _commit_unique_name()
    return segment


def update_segment(segment_id: int, data: dict) -> Segment:
    """Rename and/or replace the rules."""
    segment = get_segment(segment_id)
    if "rules" in data:
        parse(data["rules"])  # before the rename: its catalog query would autoflush a taken name
    if "name" in data:
        segment.name = _clean_name(data["name"])
    if "rules" in data:
        segment.rules = data["rules"]
    segment.updated_at = utcnow()
    _commit_unique_name()
    return segment


def _commit_unique_name() -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict("segment name taken", {"name": "another segment has this name"}) from None


def delete_segment(segment_id: int) -> None:
    db.session.delete(get_segment(segment_id))
    db.session.commit()


def count_rules(rules) -> int:
    """How many contacts match now (live: no cached membership)."""
    members = segment_query(rules).subquery()
    return db.session.scalar(sa.select(sa.func.count()).select_from(members))


def count_segment(segment_id: int) -> int:
    return count_rules(get_segment(segment_id).rules)


def preview(rules, sample: int = PREVIEW_SAMPLE) -> dict:
    """Count and the first few members (id order) of an unsaved rule."""
    query = segment_query(rules)
    total = db.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
    ids = db.session.scalars(query.order_by(Contact.id).limit(sample)).all()
    contacts = db.session.scalars(sa.select(Contact).where(Contact.id.in_(ids)).order_by(Contact.id)).all()
    topics = contact_topics(ids) if ids else {}
    return {"count": total, "sample": [contact_to_dict(c, topics.get(c.id, [])) for c in contacts]}


def iter_members(rules, page: int = 1000):
    """Members in id order, by keyset pages (a bounded memory export of any size).

    The rules are compiled (and validated) now; the pages are read as the result is consumed.
    """
    return _member_pages(segment_query(rules), page)


def _member_pages(query, page: int):
    last = 0
    while True:
        ids = db.session.scalars(query.where(Contact.id > last).order_by(Contact.id).limit(page)).all()
        if not ids:
            return
        contacts = db.session.scalars(sa.select(Contact).where(Contact.id.in_(ids)).order_by(Contact.id)).all()
        topics = contact_topics(ids)
        for contact in contacts:
            yield contact, topics.get(contact.id, [])
        db.session.expunge_all()
        last = ids[-1]
