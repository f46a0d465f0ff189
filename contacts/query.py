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


# --- the admin's quick search ---------------------------------------------------------------------

# The highest code point: every string that starts with q sorts before q + TOP (UTF-8 bytes, and
# SQLite's BINARY collation, compare code point by code point).
TOP = "\U0010FFFF"
_PHONE_SEPARATORS = str.maketrans("", "", " .-()/\t")


def _starts_with(expr, prefix: str):
    """`expr` starts with `prefix`, as a range an index answers: on PostgreSQL with the byte-wise
    text_pattern_ops operators (the *_prefix indexes of migration 0009, whatever the database's
    collation), on SQLite with its BINARY collation. No LIKE: `%` and `_` are plain characters."""
    if dialect() == "postgresql":
        return sa.and_(expr.bool_op("~>=~")(prefix), expr.bool_op("~<~")(prefix + TOP))
    return sa.and_(expr >= prefix, expr < prefix + TOP)


def phone_prefix(q: str, region: str) -> str | None:
    """The E.164 start of a typed phone number: "+33 6 12" -> "+33612", "06 12" -> "+33612" in
    France, "0033 6" -> "+336"; None when `q` is not the start of a phone number."""
    import phonenumbers

    digits = q.translate(_PHONE_SEPARATORS)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if digits.startswith("+") and digits[1:].isdigit() and len(digits) > 2:
        return digits
    code = phonenumbers.country_code_for_region(region) if region else 0
    if digits.startswith("0") and digits.isdigit() and len(digits) > 1 and code:
        return f"+{code}{digits[1:]}"
    return None


def quick_search(q: str, region: str):
    """What the admin's search box matches: the start of the email address, of the last name
    (case-insensitive) or of the phone number (typed as the region's national number or with
    its +country code). Each is one index range (contacts_*_prefix on PostgreSQL)."""
    q = q.strip().lower()
    conds = [_starts_with(Contact.email, q), _starts_with(sa.func.lower(Contact.last_name), q)]
    phone = phone_prefix(q, region)
    if phone:
        conds.append(_starts_with(Contact.phone, phone))
    return sa.or_(*conds)
