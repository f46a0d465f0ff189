"""CSV of a segment's members: the contact keys of the JSON shape, tags and topics joined by |,
one `attributes.<key>` column per declared attribute (the import format, so a file round-trips)."""
from __future__ import annotations

import csv
import io

import sqlalchemy as sa

from contacts.models import AttributeDefinition
from contacts.services import contact_to_dict
from envoi.extensions import db
from segments.services import iter_members

COLUMNS = ("id", "email", "phone", "salutation", "first_name", "last_name", "birth_date", "gender", "address",
           "postal_code", "city", "country", "language", "timezone", "company_name", "sector", "headcount",
           "lifecycle", "source", "tags", "topics", "email_status", "sms_status", "created_at", "updated_at")


def csv_lines(rules):
    """Compile the rules now; return a generator of CSV text chunks (header first)."""
    members = iter_members(rules)
    keys = db.session.scalars(sa.select(AttributeDefinition.key).order_by(AttributeDefinition.key)).all()
    return _lines(members, keys)


def _lines(members, keys):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*COLUMNS, *(f"attributes.{k}" for k in keys)])
    for n, (contact, topics) in enumerate(members, 1):
        row = contact_to_dict(contact, topics)
        writer.writerow([*("|".join(row[c]) if c in ("tags", "topics") else _cell(row[c]) for c in COLUMNS),
                         *(_cell(row["attributes"].get(k)) for k in keys)])
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
