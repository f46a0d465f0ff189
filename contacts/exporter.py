"""CSV export of contacts, in the import's columns, streamed in keyset pages (flat memory).

Importing an export into an empty database recreates the same contacts: statuses Envoi sets
itself (none, pending) are written as empty cells, and a confirmed status carries the consent
columns of its latest consent event so the import accepts it.
"""
from __future__ import annotations

import csv
import io
import json

import sqlalchemy as sa

from contacts.importer import COLUMNS
from contacts.models import PERSONAL_FIELDS, AttributeDefinition, ConsentEvent, Contact, ContactTopic, Topic
from contacts.services import contact_filters
from envoi.extensions import db

PAGE = 2000
# What an import may set; others are written empty.
_IMPORTABLE = {"email_status": {"confirmed", "unsubscribed", "bounced", "complained"},
               "sms_status": {"confirmed", "unsubscribed", "invalid"}}


def export_csv(out, filters: dict | None = None, *, delimiter: str = ",", page: int = PAGE) -> int:
    """Write the non-erased contacts matching `filters` (the API's list filters) to the text stream `out`.

    Returns the number of contacts written.
    """
    total = 0
    for text, count in csv_pages(filters, delimiter=delimiter, page=page):
        out.write(text)
        total += count
    return total


def csv_pages(filters: dict | None = None, *, delimiter: str = ",", page: int = PAGE):
    """Yield (CSV text, contacts in it): the header, then one chunk per keyset page.

    The filters are checked before the first yield, so a caller can answer 4xx before streaming.
    """
    conds = contact_filters(filters or {})
    attrs = db.session.scalars(sa.select(AttributeDefinition.key).order_by(AttributeDefinition.key)).all()
    topics = dict(db.session.execute(sa.select(Topic.id, Topic.slug)).all())
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")

    def drain() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow([*COLUMNS, *(f"attributes.{k}" for k in attrs)])
    yield drain(), 0
    t = Contact.__table__
    cols = [t.c.id, t.c.email, t.c.phone, *(t.c[f] for f in PERSONAL_FIELDS), t.c.tags, t.c.attributes,
            t.c.email_status, t.c.sms_status]
    last = 0
    while True:
        rows = db.session.execute(sa.select(*cols).where(*conds, t.c.id > last).order_by(t.c.id).limit(page)).mappings().all()
        if not rows:
            break
        ids = [r["id"] for r in rows]
        subs = _topics(ids, topics)
        consents = _consents([r["id"] for r in rows if "confirmed" in (r["email_status"], r["sms_status"])])
        for r in rows:
            cells = [_cell(r["email"]), _cell(r["phone"]), *(_cell(r[f]) for f in PERSONAL_FIELDS),
                     "|".join(r["tags"] or []), "|".join(subs.get(r["id"], ()))]
            for key in ("email_status", "sms_status"):
                cells.append(r[key] if r[key] in _IMPORTABLE[key] else "")
            consent = consents.get(r["id"])
            cells += [consent.source or "", consent.consented_at.isoformat(), consent.text or ""] if consent else ["", "", ""]
            values = r["attributes"] or {}
            cells += [_attr(values.get(k)) for k in attrs]
            writer.writerow(cells)
        last = ids[-1]
        db.session.rollback()  # end the page's snapshot; nothing is held between pages
        yield drain(), len(rows)


def _cell(value) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _attr(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _topics(ids, slugs: dict[int, str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    ct = ContactTopic.__table__
    for cid, tid in db.session.execute(sa.select(ct.c.contact_id, ct.c.topic_id)
                                       .where(ct.c.contact_id.in_(ids), ct.c.subscribed.is_(True))):
        out.setdefault(cid, []).append(slugs[tid])
    for value in out.values():
        value.sort()
    return out


def _consents(ids) -> dict[int, object]:
    """The latest channel consent granted per contact: what a confirmed status rests on."""
    if not ids:
        return {}
    ce = ConsentEvent.__table__
    rows = db.session.execute(sa.select(ce.c.contact_id, ce.c.source, ce.c.text, ce.c.consented_at)
                              .where(ce.c.contact_id.in_(ids), ce.c.kind == "granted", ce.c.topic_id.is_(None))
                              .order_by(ce.c.id))
    return {row.contact_id: row for row in rows}
