"""Portable SQL building blocks over contacts (used by the list filters and by segments)."""
from __future__ import annotations

import sqlalchemy as sa

from contacts.models import Contact
from envoi.extensions import db


def dialect() -> str:
    return db.session.get_bind().dialect.name


def json_list_contains(column, value):
    """`value` is an element of the JSON list in `column` (JSONB @> on PostgreSQL)."""
    if dialect() == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        # The column is a JSON/JSONB variant; coerce so the JSONB @> operator is used.
        return sa.type_coerce(column, JSONB).contains([value])
    each = sa.func.json_each(column).table_valued("value")
    return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == value))


def has_tag(tag: str):
    return json_list_contains(Contact.tags, tag)
