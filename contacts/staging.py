"""The PostgreSQL side of a CSV import: validated rows go through a staging table, merged set-based.

Per chunk: the validation process turns each valid row into a line of COPY text (no Python
objects cross back to the importer); the importer COPYs the lines into a temporary table, and
one statement sorts the rows into three kinds:

- new: neither its email nor its phone is a contact's, no other row of the chunk gives either,
  not erased: inserted with one INSERT ... SELECT, with its consent events and subscriptions;
- unchanged: matches one contact that no other row of the chunk touches, and every value the
  row gives is already stored (statuses and subscriptions included): counted, nothing written;
- anything else (updates, rows colliding with each other, a row matching two contacts, erased
  addresses ...): validated again in the importer and applied by the row-by-row merge of
  `importer._ChunkWriter`, in the same transaction, with all its rules.

These kinds never touch the same contact, so applying them in this order gives what applying
the rows in file order gives. The merge rules themselves are in importer.py's docstring.
"""
from __future__ import annotations

import hmac
import json
from functools import lru_cache
from hashlib import sha256

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from contacts.models import PERSONAL_FIELDS, Contact

# The staging table's value columns, in COPY order after "n" (the row's index in its chunk).
_VALUE_COLUMNS = ("email", "phone", *PERSONAL_FIELDS)
STAGE_COLUMNS = ("n", *_VALUE_COLUMNS, "tags", "attributes", "email_status", "sms_status", "consent_source",
                 "consent_at", "consent_text", "topic_ids", "email_hash", "phone_hash")
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def suppression_key(secret: str, kind: str, value: str) -> str:
    """contacts.services.suppression_hash without the app context (it runs in the validation pool)."""
    return hmac.new(secret.encode(), f"{kind}:{value}".encode(), sha256).hexdigest()


_WIDTH = len(STAGE_COLUMNS)


@lru_cache(maxsize=4096)
def _tags_json(tags: tuple) -> str:
    """A row's tags as JSON; the same few tag lists repeat across a file's rows."""
    return _dumps(list(tags))


def copy_line(n: int, clean: dict, topic_ids: list[int] | None, secret: str | None) -> str:
    """One validated row as a line of COPY text for the staging table (COPY ... NULL '': an empty
    field is NULL, which the merge reads as "the row leaves this alone", as the importer does)."""
    get = clean.get
    values = [str(n), *map(get, _VALUE_COLUMNS)]
    born, headcount = get("birth_date"), get("headcount")
    if born is not None:
        values[_BIRTH] = born.isoformat()
    if headcount is not None:
        values[_HEADCOUNT] = str(headcount)
    tags, attrs = get("tags"), get("attributes")
    values.append(None if tags is None else _tags_json(tuple(tags)))
    values.append(None if attrs is None else _dumps({k: v for k, v in attrs.items() if v is not None}))
    values.append(get("email_status"))
    values.append(get("sms_status"))
    consent = get("consent")
    if consent is None:
        values += (None, None, None)
    else:
        values += (consent["source"], consent["at"].isoformat(), consent["text"])
    values.append("{" + ",".join(map(str, topic_ids)) + "}" if topic_ids else None)
    email, phone = get("email"), get("phone")
    values.append(suppression_key(secret, "email", email) if secret and email else None)
    values.append(suppression_key(secret, "phone", phone) if secret and phone else None)
    line = "\t".join([v or "" for v in values])
    # Cleaned values rarely hold a tab, a line break or a backslash: escape only when one does.
    if "\\" in line or "\n" in line or "\r" in line or line.count("\t") != _WIDTH - 1:
        line = "\t".join([(v or "").translate(_ESCAPES) for v in values])
    return line + "\n"


_BIRTH = 1 + _VALUE_COLUMNS.index("birth_date")
_HEADCOUNT = 1 + _VALUE_COLUMNS.index("headcount")


@lru_cache(maxsize=1)
def _staging_ddl() -> str:
    dialect = postgresql.dialect()
    table = Contact.__table__
    cols = ["n integer"]
    cols += [f"{name} {table.c[name].type.compile(dialect)}" for name in _VALUE_COLUMNS]
    cols += ["tags jsonb", "attributes jsonb", "email_status varchar(16)", "sms_status varchar(16)",
             "consent_source varchar(300)", "consent_at timestamptz", "consent_text text", "topic_ids bigint[]",
             "email_hash varchar(64)", "phone_hash varchar(64)"]
    return f"CREATE TEMPORARY TABLE import_staging ({', '.join(cols)}) ON COMMIT DROP"


def _same(name: str) -> str:
    return f"(s.{name} IS NULL OR s.{name} = c.{name})"


# Per staging row: the contact its email and its phone belong to, whether another row of the chunk
# gives the same email or phone, whether it is erased; then its kind (A new, B unchanged, C the rest).
# The contacts are probed row by row on their unique indexes (LIMIT 1 keeps each probe a nested loop):
# a hash join would read the whole table for every chunk. `python` sends every row to C when someone
# was erased after the lines were made without the hashes to check (an InitPlan, read once).
_SORTED = f"""
m AS (
    SELECT s.n, e.id AS e_id, p.id AS p_id, coalesce(e.id, p.id) AS cid,
           (s.email IS NOT NULL AND count(*) OVER (PARTITION BY s.email COLLATE "C") > 1)
           OR (s.phone IS NOT NULL AND count(*) OVER (PARTITION BY s.phone COLLATE "C") > 1) AS dup,
           (s.email_hash IS NOT NULL OR s.phone_hash IS NOT NULL) AND EXISTS (
               SELECT 1 FROM suppressions x WHERE x.value_hash IN (s.email_hash, s.phone_hash)) AS blocked
    FROM import_staging s
    LEFT JOIN LATERAL (SELECT id FROM contacts WHERE email = s.email LIMIT 1) e ON true
    LEFT JOIN LATERAL (SELECT id FROM contacts WHERE phone = s.phone LIMIT 1) p ON true
), k AS (
    SELECT m.*, count(*) OVER (PARTITION BY m.cid) AS sharing FROM m
), r AS MATERIALIZED (
    SELECT s.*,
           CASE WHEN (%(python)s AND EXISTS (SELECT 1 FROM suppressions)) OR k.blocked OR k.dup OR k.e_id <> k.p_id
                THEN 'C'
                WHEN k.cid IS NULL THEN 'A'
                WHEN k.sharing > 1 THEN 'C'
                WHEN {' AND '.join(_same(name) for name in (*_VALUE_COLUMNS, 'tags', 'email_status', 'sms_status'))}
                     AND (s.attributes IS NULL OR c.attributes @> s.attributes)
                     AND (s.topic_ids IS NULL OR NOT EXISTS (
                         SELECT 1 FROM unnest(s.topic_ids) t(id) WHERE NOT EXISTS (
                             SELECT 1 FROM contact_topics ct
                             WHERE ct.contact_id = c.id AND ct.topic_id = t.id AND ct.subscribed)))
                THEN 'B'
                ELSE 'C' END AS kind
    FROM k JOIN import_staging s ON s.n = k.n
    LEFT JOIN LATERAL (SELECT * FROM contacts WHERE id = k.cid LIMIT 1) c ON true
)"""

# The contacts' id sequence, looked up once per statement (an InitPlan): pg_get_serial_sequence
# called per row searched the catalogs for every new contact (~3 µs a row).
CONTACT_IDS = "(SELECT pg_get_serial_sequence('contacts', 'id'))::regclass"

# The new rows get their ids in file order (the volatile nextval is computed after the sort).
_NEW = f"""
new AS MATERIALIZED (
    SELECT nextval({CONTACT_IDS}) AS cid, r.* FROM r WHERE r.kind = 'A' ORDER BY r.n
)"""

_PLAIN = ("email", "phone", *(f for f in PERSONAL_FIELDS if f != "lifecycle"))
_INSERT_CONTACTS = f"""
ins_contacts AS (
    INSERT INTO contacts (id, {', '.join(_PLAIN)}, lifecycle, tags, attributes, email_status, sms_status,
                          email_status_at, sms_status_at, created_at, updated_at)
    SELECT cid, {', '.join(_PLAIN)}, coalesce(lifecycle, 'prospect'), coalesce(tags, '[]'),
           coalesce(attributes, '{{}}'), coalesce(email_status, 'none'), coalesce(sms_status, 'none'),
           CASE WHEN email_status IS NOT NULL THEN %(now)s::timestamptz END,
           CASE WHEN sms_status IS NOT NULL THEN %(now)s::timestamptz END, %(now)s, %(now)s
    FROM new ORDER BY n
)"""

# The events the row-by-row merge records for a new contact, in its order: email status, SMS status,
# then one per topic.
_STATUS_EVENT = """
        SELECT n, {order} AS ord, cid, '{channel}' AS channel, NULL::bigint AS topic_id,
               CASE {channel}_status WHEN 'confirmed' THEN 'granted' ELSE 'withdrawn' END AS kind,
               consent_source, consent_text, consent_at, %(author_data)s::jsonb AS data
        FROM new WHERE {channel}_status IN ('confirmed', 'unsubscribed')"""
_INSERT_EVENTS = f"""
ins_events AS (
    INSERT INTO consent_events (contact_id, channel, topic_id, kind, method, source, text, consented_at,
                                recorded_at, data)
    SELECT cid, channel, topic_id, kind, %(method)s, coalesce(consent_source, %(method)s), consent_text,
           coalesce(consent_at, %(now)s), %(now)s, data
    FROM ({_STATUS_EVENT.format(order=0, channel='email')}
          UNION ALL {_STATUS_EVENT.format(order=1, channel='sms')}
          UNION ALL
          SELECT n, 1 + t.ord, cid, 'email', t.id, 'granted', consent_source, consent_text, consent_at, '{{}}'::jsonb
          FROM new CROSS JOIN LATERAL unnest(topic_ids) WITH ORDINALITY t(id, ord)) e
    ORDER BY n, ord
)"""
_INSERT_LINKS = """
ins_links AS (
    INSERT INTO contact_topics (contact_id, topic_id, subscribed, updated_at)
    SELECT cid, t.id, true, %(now)s FROM new CROSS JOIN LATERAL unnest(topic_ids) t(id)
)"""

# One statement per chunk: sort the rows, insert the new ones with their events and subscriptions,
# count the kinds. The inserts are data-modifying CTEs, run to completion whatever reads them; the
# consent events' foreign-key checks run at the end of the statement and see the new contacts. Two
# temporary tables and two round trips fewer than a statement per step (~4 µs a row).
_MERGE = f"""
WITH {_SORTED}, {_NEW}, {_INSERT_CONTACTS}, {_INSERT_EVENTS}, {_INSERT_LINKS}
SELECT kind, count(*), array_agg(n ORDER BY n) FILTER (WHERE kind = 'C') FROM r GROUP BY kind
"""


def merge_staged(cur, text: str, *, now, method: str, author_id: int | None, python: bool) -> tuple[int, int, list[int]]:
    """COPY a chunk's lines into the staging table, insert the new contacts, count the unchanged ones.

    `cur` is a psycopg cursor inside the chunk's transaction. Returns (created, unchanged, the
    indexes of the rows left to the row-by-row merge). `python`: the lines carry no hashes to check
    the suppression list with (nobody was erased when the import began); should someone have been
    erased since, every row goes to the row-by-row merge, which checks."""
    # The chunk's commit need not wait for its WAL to reach the disk: a database crash can lose only the
    # last chunks, which importing the file again (idempotent) writes back. An import job's progress
    # commit, synchronous, flushes them anyway.
    cur.execute(f"SET LOCAL synchronous_commit = off; {_staging_ddl()}")  # one round trip
    with cur.copy(f"COPY import_staging ({', '.join(STAGE_COLUMNS)}) FROM STDIN (NULL '')") as copy:
        copy.write(text)
    params = {"now": now, "method": method, "python": python,
              "author_data": _dumps({"author_id": author_id} if author_id else {})}
    kinds = {kind: (count, ns) for kind, count, ns in cur.execute(_MERGE, params).fetchall()}
    return kinds.get("A", (0, None))[0], kinds.get("B", (0, None))[0], kinds.get("C", (0, []))[1] or []


def any_suppressed(session) -> bool:
    from contacts.models import Suppression

    return session.scalar(sa.select(Suppression.id).limit(1)) is not None
